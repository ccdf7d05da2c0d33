"""The WDS wire protocol, sans I/O: client frames in, server events out (docs/wds-protocol.md).

``parse(frame)`` validates one client frame into an ``Action`` or raises ``ProtocolError`` with the
machine-readable ``code`` the client gets back. The ``encode_*`` functions build server events as bytes;
``update_frame`` turns an MDC envelope into an ``update`` event by splicing, without parsing it, so one
update is encoded once whatever the number of clients. ``message`` joins events into one WebSocket
message (a JSON array).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from mdc.subscriber import conflation

from .frames import message_frame

ACTIONS = ("auth", "subscribe", "unsubscribe", "ping")
MAX_ID_CHARS = 64
MAX_TOKEN_CHARS = 8192
MAX_HZ = (0.1, 1000.0)

# close codes (documented in docs/wds-protocol.md)
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL = 1011
CLOSE_AUTH = 4001
CLOSE_EXPIRED = 4002
CLOSE_SLOW = 4008
CLOSE_TOO_MANY = 4009
CLOSE_IDLE = 4010

#: The MDC envelope as the processors and ``mdc.envelope.encode`` write it: type, channel, seq, ts first.
_ENVELOPE = re.compile(
    rb'\{"type":"[^"\\]{1,64}","channel":"([^"\\]{1,200})","seq":(\d{1,19}),"ts":(-?\d{1,19}),'
)


class ProtocolError(ValueError):
    """A frame the server answers with an ``error`` event."""

    def __init__(self, code: str, message: str, id: str | int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.id = code, message, id


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    id: str | int | None = None
    token: str = ""
    channels: tuple[str, ...] = ()
    max_hz: float = 0.0  # 0: every update


def parse(frame: str | bytes, max_bytes: int) -> Action:
    """One client frame into an ``Action``; ``ProtocolError`` for anything else."""
    if len(frame) > max_bytes:
        raise ProtocolError("frame_too_large", f"frames are limited to {max_bytes} bytes")
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ProtocolError("bad_json", "the frame is not JSON") from None
    if type(obj) is not dict:
        raise ProtocolError("bad_request", "a frame is one JSON object")
    ident = obj.get("id")
    if ident is not None and not (
        (type(ident) is str and len(ident) <= MAX_ID_CHARS) or (type(ident) is int and abs(ident) < 2**53)
    ):
        raise ProtocolError(
            "bad_request", f"id must be a string of at most {MAX_ID_CHARS} characters or an integer"
        )
    name = obj.get("action")
    if name not in ACTIONS:
        raise ProtocolError("unknown_action", "action must be one of " + ", ".join(ACTIONS), ident)
    if name == "auth":
        token = obj.get("token")
        if type(token) is not str or not token or len(token) > MAX_TOKEN_CHARS:
            raise ProtocolError("bad_request", "auth needs a token (a string)", ident)
        return Action(name, ident, token=token)
    if name == "ping":
        return Action(name, ident)
    channels = obj.get("channels")
    if type(channels) is not list or not channels or not all(type(c) is str for c in channels):
        raise ProtocolError("bad_request", f"{name} needs channels: a non-empty list of strings", ident)
    max_hz = obj.get("max_hz", 0)
    if max_hz is None:
        max_hz = 0
    if type(max_hz) not in (int, float) or (max_hz and not MAX_HZ[0] <= max_hz <= MAX_HZ[1]):
        raise ProtocolError("bad_request", f"max_hz must be a number from {MAX_HZ[0]} to {MAX_HZ[1]}", ident)
    # order kept, duplicates dropped; the length is checked against the client's limit by the session
    return Action(name, ident, channels=tuple(dict.fromkeys(channels)), max_hz=float(max_hz))


# -- server events --------------------------------------------------------------------------------------


def _with_id(event: dict[str, Any], ident: str | int | None) -> dict[str, Any]:
    if ident is not None:
        event["id"] = ident
    return event


def encode_error(
    code: str, message: str, ident: str | int | None = None, channels: list[str] | None = None
) -> bytes:
    event = _with_id({"event": "error", "code": code, "message": message}, ident)
    if channels:
        event["channels"] = channels
    return orjson.dumps(event)


def encode_authenticated(
    subject: str, expires: float, limits: dict[str, Any], ident: str | int | None
) -> bytes:
    return orjson.dumps(
        _with_id({"event": "authenticated", "sub": subject, "expires": int(expires), "limits": limits}, ident)
    )


def encode_channels(event: str, channels: list[str], ident: str | int | None) -> bytes:
    """``subscribed`` or ``unsubscribed``."""
    return orjson.dumps(_with_id({"event": event, "channels": channels}, ident))


def encode_pong(ident: str | int | None, now_ms: int) -> bytes:
    return orjson.dumps(_with_id({"event": "pong", "ts": now_ms}, ident))


def encode_snapshot(channel: str, seq: int, data: Any, resync: bool) -> bytes:
    return orjson.dumps({"event": "snapshot", "channel": channel, "seq": seq, "resync": resync, "data": data})


class Update:
    """One MDC update as WDS forwards it: parsed just enough to route and stitch it, its event encoded
    once for every client. Made once per update from Redis or per control event; per client only when
    a waiting update of a client that fell behind gives way to a newer one (``wds.conflation``)."""

    __slots__ = ("_alone", "_twin", "channel", "count", "frame", "kind", "seq", "ts")

    def __init__(self, channel: str, seq: int, ts: int, frame: bytes, count: int = 1) -> None:
        self.channel = channel
        self.seq = seq
        self.ts = ts  # event time, ms: of the oldest update it carries (0: a control event)
        self.frame = frame  # the event (or events: a batch of a feed), as it goes into a message
        self.count = count  # updates it carries (0: a control event)
        self.kind = conflation(channel)
        self._twin: Update | None = None
        self._alone: bytes | None = None

    @property
    def conflated(self) -> Update:
        """The same update marked ``conflated``, made on first need and shared by every client (itself
        when it is marked already, or a control event)."""
        if self._twin is None:
            frame = self.frame
            if self.count and not frame.startswith(_CONFLATED):
                twin = Update(self.channel, self.seq, self.ts, _CONFLATED + frame[len(_UPDATE) :], self.count)
                self._twin = twin._twin = twin
            else:
                self._twin = self
        return self._twin

    @property
    def alone(self) -> bytes:
        """The whole WebSocket frame of a message holding only this update: built once, written to every
        client it goes to alone."""
        if self._alone is None:
            self._alone = message_frame([self.frame], len(self.frame))
        return self._alone

    def __repr__(self) -> str:
        return f"Update({self.channel!r}, seq={self.seq}, count={self.count})"


def control(frame: bytes) -> Update:
    """A control event (a reply, a snapshot) in a client's queue."""
    return Update("", 0, 0, frame, count=0)


_UPDATE = b'{"event":"update",'
_CONFLATED = b'{"event":"update","conflated":true,'


def update_frame(envelope: bytes) -> Update | None:
    """The ``update`` event of an MDC envelope, or None when it is not one (counted by the caller)."""
    m = _ENVELOPE.match(envelope)
    if m is None or not envelope.endswith(b"}"):
        return None
    return Update(m.group(1).decode(), int(m.group(2)), int(m.group(3)), _UPDATE + envelope[1:])


def message(events: list[bytes]) -> bytes:
    """Events into one WebSocket message: a JSON array."""
    return b"[" + b",".join(events) + b"]"
