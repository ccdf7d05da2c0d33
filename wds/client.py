"""The WDS client for bots: one WebSocket connection to the gateway and everything about keeping it.

It owns the set of wanted channels, the connection (auth with the first frame, never the URL), the
subscriptions on it (sent in frames that fit the server's limits, paced under its action rate), and
each channel's state stitched by ``seq`` (docs/wds-protocol.md). On any disconnect it reconnects with
backoff, fetching a fresh token when the token is a callable, and subscribes everything again: the
fresh snapshots replace the state. A gap (a ``seq`` jump not marked ``conflated``) is counted and
repaired by subscribing the channel again. Permanent refusals are surfaced instead of retried: a
refused static token raises ``WdsAuthError``; refused channels go to ``on_error`` and ``errors`` and
leave the wanted set.

Snapshots and updates come out two ways: ``async for item in client`` (a bounded queue, oldest dropped
first) and callbacks (``client.on(channel, callback)``), called in order on the reading task, so a slow
callback slows reading (the server conflates meanwhile, and closes a client that takes nothing for
``WDS_SLOW_CLOSE_S``). Run it with ``await client.run(stop)`` or ``async with client:``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from mdpipe.backoff import Backoff

log = logging.getLogger(__name__)

MAX_CHANNELS = 100_000  # wanted channels
MAX_CHANNEL_CHARS = 200  # as mdc.names.CHANNEL_RE
MAX_MESSAGE_BYTES = 16 * 1_048_576  # one server message; above, websockets closes with 1009
MAX_ERRORS_KEPT = 100
OPEN_TIMEOUT_S = 10.0
AUTH_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
UNAVAILABLE_RETRY_S = 1.0  # the server could not read a snapshot: subscribe again after this
ACTION_OVERHEAD = 100  # bytes of an action besides its channels
DEFAULT_LIMITS: dict[str, Any] = {"frame_bytes": 16_384, "actions_per_s": 20.0}

CLOSE_AUTH, CLOSE_EXPIRED = 4001, 4002
AUTH_CODES = ("auth_failed", "token_expired", "auth_required")
#: Channel refusals that would come again on every connection: the channels are dropped.
DROP_CODES = ("forbidden_channel", "unknown_channel", "too_many_subscriptions")
#: Connection failures worth another try after a backoff delay.
RETRY_ERRORS = (OSError, TimeoutError, ConnectionClosed, InvalidHandshake)

Token = str | Callable[[], str | Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Snapshot:
    channel: str
    seq: int
    data: Any  # None when nothing was published on the channel yet
    resync: bool = False  # replaces the state after WDS lost Redis for a while


@dataclass(frozen=True, slots=True)
class Update:
    channel: str
    seq: int
    data: Any
    type: str
    ts: int  # event time, ms since the epoch
    conflated: bool = False  # older updates were skipped (trades: their prints are in this one)


Item = Snapshot | Update
Callback = Callable[[Item], Any]


@dataclass(frozen=True, slots=True)
class WdsError:
    """An ``error`` event of the server."""

    code: str
    message: str
    channels: tuple[str, ...] = ()
    id: str | int | None = None


class WdsAuthError(Exception):
    """The server refused a static token: trying again cannot help."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class _Refused(Exception):
    """A token from the callable was refused: the next one may do."""


class _Pace:
    """A token bucket kept under the server's (``actions_per_s``, burst of 2 s), so no action is ignored."""

    def __init__(self, rate: float) -> None:
        self.rate = max(rate * 0.9, 0.01)
        self.cap = self.tokens = max(1.0, rate)
        self.at = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.cap, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            await asyncio.sleep((1 - self.tokens) / self.rate)
            self.tokens, self.at = 1.0, time.monotonic()
        self.tokens -= 1


class WdsClient:
    def __init__(
        self,
        url: str,
        token: Token,
        *,
        channels: Iterable[str] = (),
        max_hz: float | None = None,
        backoff: Backoff | None = None,
        max_pending: int = 10_000,
        on_error: Callable[[WdsError], Any] | None = None,
    ) -> None:
        if max_hz is not None and not 0.1 <= max_hz <= 1000:
            raise ValueError("max_hz must be from 0.1 to 1000")
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.url, self.max_hz, self.max_pending = url, max_hz, max_pending
        self.backoff = backoff or Backoff(0.5, 30.0, 60.0)
        self.on_error = on_error
        self.state: dict[str, tuple[int, Any]] = {}  # channel -> (seq, latest data)
        self.stats = dict.fromkeys(
            ("snapshots", "updates", "gaps", "conflated", "stale", "dropped", "errors", "callback_errors"), 0
        )
        self.errors: list[WdsError] = []  # the newest MAX_ERRORS_KEPT
        self.connected = False
        self.reconnects = 0
        self._token = token
        self._where = url.split("?", 1)[0]  # for logs: a query could hold a token
        self._wanted: dict[str, None] = {}  # ordered set
        self._to_subscribe: dict[str, None] = {}  # what the sender sends next, on this connection
        self._to_unsubscribe: dict[str, None] = {}
        self._repairing: set[str] = set()  # a gap was seen: waiting for the fresh snapshot
        self._inflight: dict[int, tuple[str, list[str]]] = {}  # action id -> (action, channels)
        self._next_id = 0
        self._kick = asyncio.Event()  # wakes the sender
        self._callbacks: dict[str | None, list[Callback]] = {}
        self._queue: deque[Item] = deque()
        self._arrived = asyncio.Event()
        self._running = self._done = False
        self._failure: WdsAuthError | None = None
        self._failure_raised = False
        self._refusal: WdsError | None = None
        self._connections = 0
        self._task: asyncio.Task[None] | None = None
        self._task_stop: asyncio.Event | None = None
        self.subscribe(channels)

    # -- what the bot wants ---------------------------------------------------------------------------

    @property
    def channels(self) -> list[str]:
        return list(self._wanted)

    def subscribe(self, channels: Iterable[str]) -> None:
        """Want ``channels`` from now on (sent at once when connected, else at connect)."""
        new = [c for c in dict.fromkeys(channels) if c not in self._wanted]
        for c in new:
            if not isinstance(c, str) or not 0 < len(c) <= MAX_CHANNEL_CHARS:
                raise ValueError(f"not a channel name: {c!r}")
        if len(self._wanted) + len(new) > MAX_CHANNELS:
            raise ValueError(f"at most {MAX_CHANNELS} channels")
        for c in new:
            self._wanted[c] = None
            self._to_unsubscribe.pop(c, None)
            self._to_subscribe[c] = None
        if new:
            self._kick.set()

    def unsubscribe(self, channels: Iterable[str]) -> None:
        """Stop wanting ``channels``; their state is forgotten."""
        for c in list(channels):
            if c in self._wanted:
                self._forget(c)
                self._to_unsubscribe[c] = None
                self._kick.set()

    def on(self, channel: str | None, callback: Callback) -> Callback:
        """Call ``callback(item)`` (sync or async) for each snapshot and update of ``channel`` (None: all)."""
        self._callbacks.setdefault(channel, []).append(callback)
        return callback

    def off(self, channel: str | None, callback: Callback) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._callbacks[channel].remove(callback)

    # -- running --------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe, deliver; reconnect after any disconnect; return when ``stop`` is set.
        Raises ``WdsAuthError`` when the server refuses a static token."""
        if self._running:
            raise RuntimeError("this client is running already")
        self._running, self._done, self._failure, self._failure_raised = True, False, None, False
        try:
            while not stop.is_set():
                try:
                    await self._until_stopped(stop)
                except WdsAuthError as exc:
                    self._failure = exc
                    raise
                except (*RETRY_ERRORS, _Refused) as exc:
                    what = "connection lost" if self.connected else "cannot connect"
                    log.warning(f"wds client: {what}", extra={"url": self._where, "error": repr(exc)})
                finally:
                    self.connected = False
                    self.backoff.down()
                if not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.backoff.next_delay())
        finally:
            self._running, self._done = False, True
            self._arrived.set()

    async def __aenter__(self) -> WdsClient:
        """``async with client:`` runs it in a task until the end of the block."""
        self._task_stop = asyncio.Event()
        self._task = asyncio.create_task(self.run(self._task_stop), name="wds-client")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        if self._task is None or self._task_stop is None:
            return
        self._task_stop.set()
        try:
            await self._task
        except WdsAuthError:
            if exc_type is None and not self._failure_raised:
                raise

    def __aiter__(self) -> WdsClient:
        return self

    async def __anext__(self) -> Item:
        while not self._queue:
            if self._failure is not None:
                self._failure_raised = True
                raise self._failure
            if self._done:
                raise StopAsyncIteration
            self._arrived.clear()
            await self._arrived.wait()
        return self._queue.popleft()

    # -- one connection -------------------------------------------------------------------------------

    async def _until_stopped(self, stop: asyncio.Event) -> None:
        """``_connection`` until it ends, or ``stop``: an open connection is closed by its closer, one
        still opening or authenticating (up to OPEN_TIMEOUT_S + AUTH_TIMEOUT_S) is dropped."""
        conn = asyncio.create_task(self._connection(stop), name="wds-client-connection")
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({conn, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not conn.done():
                await asyncio.wait({conn}, timeout=CLOSE_TIMEOUT_S + 1)
        finally:
            stopped.cancel()
            if not conn.done():
                conn.cancel()
                await asyncio.wait({conn})
        if not conn.cancelled():
            conn.result()  # its error, if any

    async def _connection(self, stop: asyncio.Event) -> None:
        token = await self._fresh_token()
        self._refusal = None
        async with connect(
            self.url,
            max_size=MAX_MESSAGE_BYTES,
            open_timeout=OPEN_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
            compression=None,  # the server declines it anyway
        ) as ws:
            await ws.send(orjson.dumps({"action": "auth", "token": token}).decode())
            try:
                limits = await self._authenticate(ws)
            except ConnectionClosed:
                self._check_refusal(ws)
                raise
            self._up()
            sender = asyncio.create_task(self._send_actions(ws, limits), name="wds-client-sender")
            closer = asyncio.create_task(_close_on(stop, ws), name="wds-client-closer")
            try:
                with contextlib.suppress(ConnectionClosed):
                    async for message in ws:
                        await self._on_message(message)
            finally:
                for task in (sender, closer):
                    task.cancel()
                await asyncio.gather(sender, closer, return_exceptions=True)
            if not stop.is_set():
                self._check_refusal(ws)
                raise ConnectionError(f"closed by the server: {ws.close_code} {ws.close_reason}")

    async def _fresh_token(self) -> str:
        if isinstance(self._token, str):
            return self._token
        value = self._token()
        if inspect.isawaitable(value):
            value = await value
        if not isinstance(value, str) or not value:
            raise TypeError("the token callable must return a non-empty string")
        return value

    async def _authenticate(self, ws: ClientConnection) -> dict[str, Any]:
        """The server's limits once it accepted the token; a refusal raises."""
        async with asyncio.timeout(AUTH_TIMEOUT_S):
            while True:
                for event in _events(await ws.recv()):
                    if event.get("event") == "authenticated":
                        limits = event.get("limits")
                        return {**DEFAULT_LIMITS, **(limits if isinstance(limits, dict) else {})}
                    if event.get("event") == "error":
                        await self._on_error_event(event)
                        self._check_refusal(ws)

    def _check_refusal(self, ws: ClientConnection) -> None:
        refusal = self._refusal
        if refusal is None and ws.close_code in (CLOSE_AUTH, CLOSE_EXPIRED):
            refusal = WdsError("auth_failed", ws.close_reason or "closed by the server", ())
        if refusal is None:
            return
        if isinstance(self._token, str):
            raise WdsAuthError(refusal.code, refusal.message)
        raise _Refused(refusal.code)

    def _up(self) -> None:
        self.backoff.up()
        if self._connections:
            self.reconnects += 1
        self._connections += 1
        self.connected = True
        log.info("wds client connected", extra={"url": self._where, "channels": len(self._wanted)})
        # a new connection has no subscriptions: all of them again, fresh snapshots replace the state
        self._to_subscribe = dict(self._wanted)
        self._to_unsubscribe.clear()
        self._inflight.clear()
        self._repairing.clear()

    async def _send_actions(self, ws: ClientConnection, limits: dict[str, Any]) -> None:
        try:
            await self._send_loop(ws, limits)
        except ConnectionClosed:
            pass  # the reader sees it too
        except Exception:
            log.exception("wds client: sender failed")  # a bug: the connection is useless without it
            await ws.close(1011, "client error")

    async def _send_loop(self, ws: ClientConnection, limits: dict[str, Any]) -> None:
        """Send (un)subscriptions as they are asked, in frames under ``frame_bytes``, paced."""
        pace = _Pace(float(limits["actions_per_s"]))
        room = max(int(limits["frame_bytes"]) - ACTION_OVERHEAD, MAX_CHANNEL_CHARS + 3)
        while True:
            if not (self._to_subscribe or self._to_unsubscribe):
                self._kick.clear()
                await self._kick.wait()
                continue
            # unsubscriptions first: they make room under the server's subscription limit
            name, pending = (
                ("unsubscribe", self._to_unsubscribe)
                if self._to_unsubscribe
                else ("subscribe", self._to_subscribe)
            )
            chunk = _take(pending, room)
            await pace.wait()
            self._next_id += 1
            action: dict[str, Any] = {"action": name, "id": self._next_id, "channels": chunk}
            if name == "subscribe" and self.max_hz:
                action["max_hz"] = self.max_hz
            self._inflight[self._next_id] = (name, chunk)
            await ws.send(orjson.dumps(action).decode())

    # -- events ---------------------------------------------------------------------------------------

    async def _on_message(self, message: str | bytes) -> None:
        for event in _events(message):
            kind = event.get("event")
            if kind == "update":
                await self._on_update(event)
            elif kind == "snapshot":
                await self._on_snapshot(event)
            elif kind in ("subscribed", "unsubscribed"):
                self._replied(event.get("id"))
            elif kind == "error":
                await self._on_error_event(event)

    async def _on_snapshot(self, event: dict[str, Any]) -> None:
        channel, seq = event.get("channel"), event.get("seq")
        if not isinstance(channel, str) or type(seq) is not int or channel not in self._wanted:
            return
        # a snapshot always wins: it is the server's truth, even below the seq seen (Redis restarted)
        self._repairing.discard(channel)
        self.state[channel] = (seq, event.get("data"))
        self.stats["snapshots"] += 1
        await self._deliver(Snapshot(channel, seq, event.get("data"), event.get("resync") is True))

    async def _on_update(self, event: dict[str, Any]) -> None:
        channel, seq = event.get("channel"), event.get("seq")
        if not isinstance(channel, str) or type(seq) is not int or channel not in self._wanted:
            return
        current = self.state.get(channel)
        if current is None:
            return  # the server sends the snapshot first: an update before it is left over from before
        conflated = event.get("conflated") is True
        if seq <= current[0]:
            self.stats["stale"] += 1
            return
        if conflated:
            self.stats["conflated"] += 1
        elif seq > current[0] + 1:
            # lost before WDS: the update is still the newest, but a fresh snapshot repairs the state
            self.stats["gaps"] += 1
            if channel not in self._repairing:
                self._repairing.add(channel)
                self._to_subscribe[channel] = None
                self._kick.set()
        data = event.get("data")
        self.state[channel] = (seq, data)
        self.stats["updates"] += 1
        ts = event.get("ts")
        kind = event.get("type")
        await self._deliver(
            Update(
                channel,
                seq,
                data,
                kind if isinstance(kind, str) else "",
                ts if type(ts) is int else 0,
                conflated,
            )
        )

    async def _on_error_event(self, event: dict[str, Any]) -> None:
        channels = event.get("channels")
        error = WdsError(
            str(event.get("code", "")),
            str(event.get("message", "")),
            tuple(c for c in channels if isinstance(c, str)) if isinstance(channels, list) else (),
            event.get("id"),
        )
        self.stats["errors"] += 1
        self.errors.append(error)
        del self.errors[:-MAX_ERRORS_KEPT]
        self._replied(error.id)
        if error.code in AUTH_CODES:
            self._refusal = error
        elif error.code in DROP_CODES:
            for c in error.channels:
                self._forget(c)
        elif error.code == "unavailable":
            asyncio.get_running_loop().call_later(UNAVAILABLE_RETRY_S, self._again, error.channels)
        log.warning(
            "wds client: server error",
            extra={"code": error.code, "text": error.message, "channels": list(error.channels[:10])},
        )
        if self.on_error is not None:
            await self._call(self.on_error, error)

    def _replied(self, ident: object) -> None:
        """The server answers actions in order: one without an answer before ``ident`` was ignored (rate
        limited), so it is asked again."""
        if type(ident) is not int or ident not in self._inflight:
            return
        for older in [i for i in self._inflight if i < ident]:
            name, chunk = self._inflight.pop(older)
            if name == "subscribe":
                self._again(chunk)
            else:
                self._to_unsubscribe.update((c, None) for c in chunk if c not in self._wanted)
        del self._inflight[ident]

    def _again(self, channels: Iterable[str]) -> None:
        if self.connected:
            self._to_subscribe.update((c, None) for c in channels if c in self._wanted)
            self._kick.set()

    def _forget(self, channel: str) -> None:
        self._wanted.pop(channel, None)
        self._to_subscribe.pop(channel, None)
        self._repairing.discard(channel)
        self.state.pop(channel, None)

    async def _deliver(self, item: Item) -> None:
        if len(self._queue) >= self.max_pending:
            self._queue.popleft()
            self.stats["dropped"] += 1
        self._queue.append(item)
        self._arrived.set()
        for callback in (*self._callbacks.get(item.channel, ()), *self._callbacks.get(None, ())):
            await self._call(callback, item)

    async def _call(self, callback: Callable[[Any], Any], arg: Any) -> None:
        try:
            result = callback(arg)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.stats["callback_errors"] += 1  # a bot's bug must not drop the connection
            log.exception("wds client: callback failed")


async def _close_on(stop: asyncio.Event, ws: ClientConnection) -> None:
    await stop.wait()
    await ws.close()


def _events(message: str | bytes) -> list[dict[str, Any]]:
    """The events of one server message (a JSON array); nothing for anything else."""
    try:
        events = orjson.loads(message)
    except orjson.JSONDecodeError:
        log.warning("wds client: a message that is not JSON")
        return []
    if not isinstance(events, list):
        events = [events]
    return [e for e in events if isinstance(e, dict)]


def _take(pending: dict[str, None], room: int) -> list[str]:
    """Pop channels off the front of ``pending`` while their JSON fits in ``room`` bytes (one at least)."""
    chunk: list[str] = []
    size = 0
    for channel in pending:  # collected first: deleting while iterating is not allowed
        size += len(orjson.dumps(channel)) + 1
        if chunk and size > room:
            break
        chunk.append(channel)
    for channel in chunk:
        del pending[channel]
    return chunk
