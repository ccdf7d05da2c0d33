"""One client's session of the Massive protocol, as the server sees it, with no I/O.

The server adapter feeds every client frame (text or binary) to ``Session.receive`` and sends what it
returns. The session answers the way the vendor does (see docs/massive-protocol.md):

- ``connected`` on open; ``{"action":"auth","params":KEY}`` gives ``auth_success``, or
  ``auth_failed`` and a close; the key is compared in constant time;
- ``subscribe``/``unsubscribe`` with comma-separated ``EV.SYMBOL`` params, one ``success`` status per
  subscription (``subscribed to: T.*``);
- anything else gets an ``error`` status and the session stays open: malformed JSON, an unknown action,
  a subscription before auth, an event type the market does not have. Where the vendor's behaviour is
  not published these answers are the emulator's own and are documented as such.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from mdpipe import massive
from mdpipe.massive import status_event

from .frames import Subscriptions, status_frame

MAX_SUBSCRIPTIONS = 100_000  # per session; bounds memory whatever a client sends
MAX_ERRORS = 100  # invalid subscriptions named one by one in a reply
CLOSE_POLICY = 1008  # auth failed or timed out, max_connections, slow_consumer


class State(Enum):
    AWAITING_AUTH = "awaiting_auth"
    AUTHENTICATED = "authenticated"
    CLOSED = "closed"


@dataclass
class Reply:
    frames: list[bytes] = field(default_factory=list)
    close: tuple[int, str] | None = None
    authenticated: bool = False  # this frame completed authentication
    error: str | None = None  # what was wrong with the client's frame, for the metrics


class Session:
    def __init__(self, market: str, api_key: str) -> None:
        self.market = market
        self.types = massive.EVENT_TYPES[market]
        self._key = api_key.encode()
        self.state = State.AWAITING_AUTH
        self.subs = Subscriptions(self.types)

    @staticmethod
    def greeting() -> bytes:
        return status_frame(status_event(massive.CONNECTED, "Connected Successfully"))

    def timed_out(self) -> Reply:
        self.state = State.CLOSED
        return Reply(
            [status_frame(status_event(massive.AUTH_TIMEOUT, "authentication timed out"))],
            close=(CLOSE_POLICY, "auth timeout"),
        )

    def receive(self, data: str | bytes) -> Reply:
        if self.state is State.CLOSED:
            return Reply()
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            return _error("invalid json", "bad_json")
        if not isinstance(message, dict):
            return _error("message must be a JSON object", "bad_message")
        action, params = message.get("action"), message.get("params")
        if action == "auth":
            return self._auth(params)
        if action in ("subscribe", "unsubscribe"):
            if self.state is not State.AUTHENTICATED:
                return _error("not authorized", "unauthenticated")
            if not isinstance(params, str):
                return _error("params must be a string", "bad_params")
            return self._subscribe(params) if action == "subscribe" else self._unsubscribe(params)
        return _error(f"unknown action: {_short(action)}", "unknown_action")

    def _auth(self, params: Any) -> Reply:
        given = params.encode() if isinstance(params, str) else b""
        if hmac.compare_digest(given, self._key):
            first = self.state is State.AWAITING_AUTH
            self.state = State.AUTHENTICATED
            return Reply(
                [status_frame(status_event(massive.AUTH_SUCCESS, "authenticated"))], authenticated=first
            )
        self.state = State.CLOSED
        return Reply(
            [status_frame(status_event(massive.AUTH_FAILED, "authentication failed"))],
            close=(CLOSE_POLICY, "authentication failed"),
            error="auth_failed",
        )

    def _subscribe(self, params: str) -> Reply:
        valid, invalid = massive.parse_subscriptions(params, self.market)
        events = []
        for ev, sym in valid:
            if len(self.subs) >= MAX_SUBSCRIPTIONS:
                events.append(status_event(massive.ERROR, f"too many subscriptions: {ev}.{sym}"))
                continue
            self.subs.add(ev, sym)
            events.append(status_event(massive.SUCCESS, f"subscribed to: {ev}.{sym}"))
        return self._reply(events, invalid)

    def _unsubscribe(self, params: str) -> Reply:
        valid, invalid = massive.parse_subscriptions(params, self.market)
        events = []
        for ev, sym in valid:
            self.subs.remove(ev, sym)
            events.append(status_event(massive.SUCCESS, f"unsubscribed to: {ev}.{sym}"))
        return self._reply(events, invalid)

    @staticmethod
    def _reply(events: list[dict[str, str]], invalid: list[str]) -> Reply:
        if not events and not invalid:
            return _error("params name no subscription", "bad_params")
        events += [
            status_event(massive.ERROR, f"invalid subscription: {_short(p)}") for p in invalid[:MAX_ERRORS]
        ]
        if len(invalid) > MAX_ERRORS:
            events.append(
                status_event(massive.ERROR, f"{len(invalid) - MAX_ERRORS} more invalid subscriptions")
            )
        return Reply([status_frame(*events)] if events else [], error="bad_subscription" if invalid else None)


def _error(message: str, reason: str) -> Reply:
    return Reply([status_frame(status_event(massive.ERROR, message))], error=reason)


def _short(value: Any, limit: int = 64) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
