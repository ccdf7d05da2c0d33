"""Publishing from outside the pipeline: a service's signals on ``signals.NAME``, as MDP publishes.

A signal monitor, a bot reporting what it does, a model scoring symbols: each computes in its own loop
and publishes documents that WDS relays to browsers like any other channel::

    async with Publisher("redis://mdpipe-crosses:PASSWORD@redis:6379/0", "crosses") as pub:
        pub.publish({"sym": "AAPL", "side": "up"}, suffix="AAPL", type="cross")  # signals.crosses.AAPL

- **The envelope and ``seq``**: every update is ``mdc.envelope``'s envelope with the channel's own
  ``seq``, taken in Redis by the one script that publishes (``lua/signal.lua``, also run by the
  processors' plug-ins): it never goes back, however many publishers share a channel, and WDS clients
  stitch snapshot and stream as on every channel.
- **The snapshot**: the newest ``recent`` updates of each channel (``Names.signal_recent``, kept
  ``ttl_s`` after the newest) are what a subscriber's snapshot holds, so a browser opening later sees
  the newest signals first.
- **Validation, at the call**: the name (``[a-z0-9_]{1,40}``) is the service's, fixed when built; the
  suffix a symbol-like name, the type ``[a-z0-9_.-]{1,40}``, the document JSON (orjson: no NaN, str keys)
  of at most ``max_bytes``. ``ValueError`` says what is wrong; nothing is queued.
- **Bounded, never blocking the caller**: ``publish`` queues and returns; a background task sends the
  queue in batches (one script call, one round trip, per batch of up to ``BATCH``). At most
  ``max_pending`` wait; beyond, the oldest are dropped and counted (``stats["dropped"]``).
- **Reconnect**: while Redis is away the queue waits (bounded) and the batch is retried with capped,
  jittered backoff; ``connected`` says how it is. A batch whose reply was lost with the connection is
  sent again: at least once, a repeat with a new ``seq``.
- **Its heartbeat**: ``<prefix>:hb:signals.NAME:<instance>`` (``mdpipe inspect heartbeats``, the control
  plane's status) with the figures below, which are also Prometheus metrics of the process's default
  registry (``mdpipe_signals_*``, label ``signal``): a service serving ``/metrics`` shows them.

``BlockingPublisher`` is the same for code without asyncio (a thread runs the loop). Who may publish
what is Redis's job: give each service the user ``mdc.acl`` declares.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from mdpipe.backoff import Backoff
from mdpipe.settings import MdcSettings

from .connect import Target
from .heartbeat import Heartbeat
from .names import Names, signal_channel, signal_owner

log = logging.getLogger(__name__)

BATCH = 200  # updates per script call: one round trip; the script runs a few µs per update
MAX_BYTES = 64 * 1024  # a document's JSON; WDS relays it whole to every subscriber
MAX_PENDING = 10_000
TYPE_RE = re.compile(r"[a-z0-9_.-]{1,40}")
#: The snapshot's bounds unless told: MDC_SIGNAL_RECENT, MDC_SIGNAL_TTL_S's defaults.
SIGNAL_RECENT = MdcSettings.model_fields["mdc_signal_recent"].default
SIGNAL_TTL_S = MdcSettings.model_fields["mdc_signal_ttl_s"].default

PUBLISHED = Counter("mdpipe_signals_published_total", "Signal updates Redis took", ["signal"])
DROPPED = Counter("mdpipe_signals_dropped_total", "Signal updates lost to a full queue", ["signal"])
SEND_ERRORS = Counter(
    "mdpipe_signals_send_errors_total", "Failed sends of a batch (each retried)", ["signal"]
)
PENDING = Gauge("mdpipe_signals_pending", "Signal updates waiting to be sent", ["signal"])

SIGNAL_LUA = (resources.files(__package__) / "lua" / "signal.lua").read_text()
#: KEYS: per update its seq counter and recent list (all market-wide names: one slot on a cluster).
#: ARGV: the publish verb, sent (ms), src (JSON), recent, TTL, then per update: channel, its Redis name,
#: type, ts (ms), data (JSON). Returns the seqs.
_SCRIPT = (
    SIGNAL_LUA
    + """
local verb, sent, src, recent, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local seqs, touched = {}, {}
for i = 1, #KEYS / 2 do
  local a = 5 + 5 * (i - 1)
  seqs[i] = publish_signal(verb, KEYS[2 * i - 1], KEYS[2 * i], ARGV[a + 2], ARGV[a + 1], ARGV[a + 3],
    ARGV[a + 4], sent, src, ARGV[a + 5])
  touched[KEYS[2 * i]] = true
end
keep_recent(touched, recent, ttl)
return seqs
"""
)


@dataclass(frozen=True, slots=True)
class Signal:
    """One validated update, waiting to be sent."""

    channel: str
    type: str
    ts: int  # event time, ms
    data: bytes  # JSON


def prepare(
    name: str, data: Any, *, suffix: str | None = None, type: str = "signal", ts: int | None = None,
    max_bytes: int = MAX_BYTES,
) -> Signal:  # fmt: skip
    """``data`` as an update of ``signals.NAME[.suffix]``; ValueError for anything that may not go."""
    channel = signal_channel(name, suffix)
    if not isinstance(type, str) or not TYPE_RE.fullmatch(type):
        raise ValueError("type must match [a-z0-9_.-]{1,40}")
    if ts is None:
        ts = time.time_ns() // 1_000_000
    elif not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts < 2**63:
        raise ValueError("ts must be a non-negative integer, ms since the epoch")
    try:
        raw = orjson.dumps(data)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise ValueError(f"data is not JSON: {exc}") from None
    if len(raw) > max_bytes:
        raise ValueError(f"data is {len(raw)} bytes of JSON, more than {max_bytes}")
    return Signal(channel, type, ts, raw)


class Pending:
    """The updates waiting to be sent, oldest first, at most ``limit``: beyond, the oldest go."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("max_pending must be at least 1")
        self.limit = limit
        self.items: deque[Signal] = deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.items)

    def add(self, signal: Signal) -> bool:
        """Queue ``signal``; True when the oldest had to go to make room."""
        full = len(self.items) >= self.limit
        if full:
            self.items.popleft()
            self.dropped += 1
        self.items.append(signal)
        return full

    def batch(self, n: int) -> list[Signal]:
        """The oldest ``n`` (they stay queued until ``sent``)."""
        return [self.items[i] for i in range(min(n, len(self.items)))]

    def sent(self, batch: list[Signal]) -> None:
        """``batch`` went out: remove what is still queued of it (the oldest may have been dropped)."""
        for signal in batch:
            if self.items and self.items[0] is signal:
                self.items.popleft()


def script_call(
    names: Names,
    batch: list[Signal],
    sent_ms: int,
    src: bytes,
    recent: int,
    ttl_s: int,
    verb: str = "PUBLISH",
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the publishing script for ``batch`` (``verb``: SPUBLISH on a cluster)."""
    keys: list[str] = []
    args: list[Any] = [verb, sent_ms, src, recent, ttl_s]
    for s in batch:
        keys += (names.signal_seq(s.channel), names.signal_recent(s.channel))
        args += (s.channel, names.redis_channel(s.channel), s.type, s.ts, s.data)
    return keys, args


class Publisher:
    """Publishes a service's signals; see the module docstring. Use ``async with`` or ``start``/``close``.

    ``stats``: ``published`` (updates Redis took), ``dropped`` (lost to a full queue), ``errors``
    (failed sends, each retried), ``batches``; ``last_seq``: channel -> the ``seq`` of its newest update
    sent from here.
    """

    def __init__(
        self,
        redis_url: str | Target,
        name: str,
        *,
        prefix: str = "md",
        instance: str | None = None,
        recent: int = SIGNAL_RECENT,
        ttl_s: int = SIGNAL_TTL_S,
        max_pending: int = MAX_PENDING,
        max_bytes: int = MAX_BYTES,
        backoff: Backoff | None = None,
        heartbeat: bool = True,
    ) -> None:
        signal_channel(name)  # validates the name
        if not 1 <= recent <= 1000 or not 1 <= ttl_s <= 30 * 86_400:
            raise ValueError("recent must be 1-1000 and ttl_s 1 s to 30 days")
        self.name, self.names = name, Names(prefix)
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self.recent, self.ttl_s, self.max_bytes = recent, ttl_s, max_bytes
        target = redis_url if isinstance(redis_url, Target) else Target(redis_url)
        self.verb = target.publish_command
        self.redis = target.client(
            socket_timeout=5, socket_connect_timeout=5, client_name=f"mdpipe-signals-{name}"
        )
        self.backoff = backoff or Backoff(0.2, 10.0, 30.0)
        self.pending = Pending(max_pending)
        self._published, self._dropped, self._send_errors = (
            m.labels(name) for m in (PUBLISHED, DROPPED, SEND_ERRORS)
        )
        PENDING.labels(name).set_function(lambda: len(self.pending))
        self.connected = False
        self.stats = {"published": 0, "errors": 0, "batches": 0}
        self.last_seq: dict[str, int] = {}
        self._src = orjson.dumps(self.instance)
        self._script = self.redis.register_script(_SCRIPT)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        component = f"signals.{name}"
        self._heartbeat = (
            Heartbeat(self.redis, self.names, component, self.instance, self.figures) if heartbeat else None
        )

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._run(), name=f"publisher-{self.name}"))
        if self._heartbeat:
            self._tasks.append(asyncio.create_task(self._heartbeat.run(self._stop)))

    def publish(
        self, data: Any, *, suffix: str | None = None, type: str = "signal", ts: int | None = None
    ) -> None:
        """Queue ``data`` for ``signals.NAME`` (or ``signals.NAME.suffix``); ValueError when it may not
        go. Returns at once; ``await flush()`` waits until Redis has it."""
        self.put(prepare(self.name, data, suffix=suffix, type=type, ts=ts, max_bytes=self.max_bytes))

    def put(self, signal: Signal) -> None:
        """Queue an update already made by ``prepare`` (for this publisher's name)."""
        if signal_owner(signal.channel) != self.name:
            raise ValueError(f"{signal.channel} is not under signals.{self.name}")
        if self.pending.add(signal):
            self._dropped.inc()
        self._idle.clear()
        self._wake.set()

    async def flush(self) -> None:
        """Wait until every update queued so far was sent (bound it with ``asyncio.timeout``)."""
        await self._idle.wait()

    async def close(self, grace_s: float = 5.0) -> None:
        """Send what waits (for at most ``grace_s`` seconds), stop, and delete the heartbeat."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self.flush()
        self._stop.set()
        self._wake.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        PENDING.labels(self.name).set_function(lambda: 0)  # let this publisher go
        await self.redis.aclose()

    def figures(self) -> dict[str, Any]:
        return {
            "ready": self.connected,
            "channels": len(self.last_seq),
            "pending": len(self.pending),
            "dropped": self.pending.dropped,
            **self.stats,
        }

    @property
    def dropped(self) -> int:
        return self.pending.dropped

    async def _run(self) -> None:
        while not self._stop.is_set():
            if not self.pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self.pending.batch(BATCH)
            try:
                await self._send(batch)
            except (RedisError, OSError) as exc:
                self.stats["errors"] += 1
                self._send_errors.inc()
                if self.connected:
                    log.warning("signals not sent: retrying", extra={"error": repr(exc), "signal": self.name})
                    self.backoff.down()
                self.connected = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.backoff.next_delay())
                continue
            self.pending.sent(batch)
            if not self.connected:
                self.connected = True
                self.backoff.up()
                self.backoff.reset()

    async def _send(self, batch: list[Signal]) -> None:
        keys, args = script_call(
            self.names, batch, time.time_ns() // 1_000_000, self._src, self.recent, self.ttl_s, self.verb
        )
        seqs = await self._script(keys=keys, args=args)
        for signal, seq in zip(batch, seqs, strict=True):
            self.last_seq[signal.channel] = int(seq)
        self.stats["published"] += len(batch)
        self.stats["batches"] += 1
        self._published.inc(len(batch))


class BlockingPublisher:
    """``Publisher`` for code without asyncio: a daemon thread runs it. ``publish`` validates in the
    caller's thread (ValueError there) and never blocks; ``flush(timeout)`` waits; ``close()`` stops.
    Use ``with BlockingPublisher(url, "name") as pub:``."""

    def __init__(self, redis_url: str | Target, name: str, **kwargs: Any) -> None:
        signal_channel(name)
        self.name = name
        self._max_bytes = kwargs.get("max_bytes", MAX_BYTES)
        self._args = (redis_url, name, kwargs)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._publisher: Publisher | None = None
        self._done: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"publisher-{name}", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BlockingPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def publisher(self) -> Publisher:
        assert self._publisher is not None
        return self._publisher

    def publish(
        self, data: Any, *, suffix: str | None = None, type: str = "signal", ts: int | None = None
    ) -> None:
        signal = prepare(self.name, data, suffix=suffix, type=type, ts=ts, max_bytes=self._max_bytes)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.publisher.put, signal)

    def flush(self, timeout: float | None = None) -> None:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self.publisher.flush(), self._loop)
        try:
            future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self, timeout: float = 5.0) -> None:
        if self._loop is None or not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(timeout), self._loop).result(timeout + 5.0)
        self._thread.join(timeout + 5.0)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        url, name, kwargs = self._args
        try:
            self._publisher = Publisher(url, name, **kwargs)
            await self._publisher.start()
        except BaseException as exc:  # handed to the constructor's caller
            self._error = exc
            self._ready.set()
            return
        self._loop, self._done = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self._done.wait()

    async def _stop(self, grace_s: float) -> None:
        await self.publisher.close(grace_s)
        assert self._done is not None
        self._done.set()
