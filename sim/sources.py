"""Where the emulator's frames come from, and how each client reads them.

- Paced (synthetic at a rate, or a recording replayed at 1x or Nx): one producer task writes frames to
  a ``Tape``, a ring of ``capacity`` frames shared by every client; each client reads at its own
  cursor. A client that falls ``capacity`` frames behind is a slow consumer (the server closes it, as
  the vendor does). Memory is bounded by the ring whatever the clients do.
- Synthetic flat-out: a pool of pre-encoded frames, generated once at start, that each client cycles
  through as fast as it reads, so the emulator is never the bottleneck of a benchmark. Timestamps repeat
  each cycle (the pool covers a few seconds of market time).
- Replay flat-out: each client streams the recording from the file, once, as fast as it reads.

A paced source feeds its ``ledger`` (the REST answers' data, ``sim.ledger``) with what it puts on the
tape, when it puts it there. It can be paused (``pause()``/``resume()``): nothing is generated or
released meanwhile, and on resuming the market clock goes on from where it stopped, with no burst and
no time skipped. The synthetic paced source plays market time ``speed`` times faster than wall time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

from .frames import Frame, chunk_json
from .ledger import Ledger
from .market import SyntheticMarket, TickSummary
from .markets import AssetMarket
from .recording import RecordingReader

log = logging.getLogger(__name__)

MAX_CATCH_UP_S = 1.0  # a producer further behind than this skips the time instead of bursting
BURST_S = 0.5  # a synthetic paced producer generates this much wall time of ticks in a row
MAX_AHEAD_TICKS = 200  # and never more ticks than this (at a high speed, half a second is many ticks)
YIELD_EVERY = 64  # flat-out readers give the event loop a turn this often


class Lagged(Exception):
    """The client's cursor fell off the end of the tape."""


class Tape:
    """A bounded ring of frames with absolute indices; readers wait for the next one."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ring: list[Frame | None] = [None] * capacity
        self.head = 0  # index of the next frame to be written
        self._more: asyncio.Future[None] | None = None

    def append(self, frame: Frame) -> None:
        self._ring[self.head % self.capacity] = frame
        self.head += 1
        if self._more is not None:
            if not self._more.done():
                self._more.set_result(None)
            self._more = None

    def get(self, index: int) -> Frame:
        if index < self.head - self.capacity:
            raise Lagged(index)
        frame = self._ring[index % self.capacity]
        assert frame is not None
        return frame

    async def wait_for(self, index: int) -> None:
        while self.head <= index:
            if self._more is None:
                self._more = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._more)


class TapeReader:
    def __init__(self, tape: Tape) -> None:
        self.tape = tape
        self.cursor = tape.head  # a new client starts at the live edge

    @property
    def lag(self) -> int:
        return self.tape.head - self.cursor

    def __aiter__(self) -> TapeReader:
        return self

    async def __anext__(self) -> Frame:
        if self.cursor >= self.tape.head:
            await self.tape.wait_for(self.cursor)
        frame = self.tape.get(self.cursor)
        self.cursor += 1
        return frame


async def cycle(frames: list[Frame]) -> AsyncIterator[Frame]:
    i = 0
    while True:
        yield frames[i % len(frames)]
        i += 1
        if i % YIELD_EVERY == 0:
            await asyncio.sleep(0)


async def stream_file(path: Path) -> AsyncIterator[Frame]:
    with RecordingReader(path) as reader:
        for i, record in enumerate(reader):
            frame = Frame.from_raw(record.payload)
            if frame is not None:
                yield frame
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)


class Source:
    """Base of the frame sources: ``start()``, ``reader()`` per client, ``stop()``."""

    mode = ""
    ready = False
    ledger: Ledger | None = None

    async def start(self) -> None:
        self.ready = True

    async def stop(self) -> None:
        pass

    def reader(self) -> AsyncIterator[Frame]:
        raise NotImplementedError


class PacedSource(Source):
    """A producer task writes the tape in time; clients follow it."""

    def __init__(self, capacity: int, *, ledger: Ledger | None = None, paused: bool = False) -> None:
        self.tape = Tape(capacity)
        self.ledger = ledger
        self._task: asyncio.Task[None] | None = None
        self.finished = False
        self._running = asyncio.Event()
        self._paused_at = time.monotonic()  # the event loop's clock
        self._paused_s = 0.0  # wall time spent paused, all pauses
        self._held_s = 0.0  # how much of it the producer's schedule has taken in
        if not paused:
            self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        if self._running.is_set():
            self._running.clear()
            self._paused_at = time.monotonic()

    def resume(self) -> None:
        if not self._running.is_set():
            self._paused_s += time.monotonic() - self._paused_at
            self._running.set()

    async def _hold(self) -> float:
        """Wait while paused; returns the wall time paused since the last call, by which the producer
        moves its schedule (every pause counts, even one that ended while the producer slept)."""
        await self._running.wait()
        held, self._held_s = self._paused_s - self._held_s, self._paused_s
        return held

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"sim-{self.mode}-producer")
        self.ready = True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def reader(self) -> TapeReader:
        return TapeReader(self.tape)

    async def _run(self) -> None:
        try:
            await self._produce()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("frame producer failed", extra={"mode": self.mode})
            raise
        self.finished = True

    async def _produce(self) -> None:
        raise NotImplementedError


class SyntheticPaced(PacedSource):
    mode = "synthetic"

    def __init__(
        self,
        market: SyntheticMarket | AssetMarket,
        *,
        capacity: int,
        frame_events: int,
        send_ts: bool,
        speed: float = 1.0,
        ledger: Ledger | None = None,
        paused: bool = False,
    ) -> None:
        super().__init__(capacity, ledger=ledger, paused=paused)
        self.market = market
        self.frame_events = frame_events
        self.send_ts = send_ts
        self.speed = speed
        self.events = 0  # put on the tape so far (ticks generated ahead are not counted until due)

    async def _produce(self) -> None:
        """Generate ticks ahead of time, in bursts, and put each on the tape when it is due.

        Why bursts: a CPU back from even a few ms of sleep is cold (caches; on a VM, the host's other
        work), and generating one 10 ms tick after each sleep cost nearly twice as much per event as
        generating ticks in a row. So once down to one tick ahead the producer generates ``BURST_S`` of
        ticks in a row, then sleeps from due time to due time. Clients see no difference: a tick still
        reaches the tape at its due time (during a burst, between two ticks generated: at most one
        tick's generation late), and the send stamp is taken at sending."""
        loop = asyncio.get_running_loop()
        tick_s = self.market.tick_ms / 1000 / self.speed  # wall time per tick
        ahead = max(2, min(MAX_AHEAD_TICKS, round(BURST_S / tick_s)))
        pending: deque[tuple[list[Frame], TickSummary | None]] = deque()  # generated, not yet due
        await self._hold()
        due = loop.time()  # when pending[0] is due
        while True:
            while len(pending) < ahead:
                due += await self._hold()  # a pause moves the schedule: no burst, no time skipped
                frames = tick_frames(self.market, self.frame_events, send_ts=self.send_ts)
                pending.append((frames, self.market.summary() if self.ledger is not None else None))
                due = self._release(pending, due, tick_s, loop.time())
                await asyncio.sleep(0)  # clients send what was released
            while len(pending) > 1:
                await asyncio.sleep(max(0.0, due - loop.time()))
                due += await self._hold()
                due = self._release(pending, due, tick_s, loop.time())

    def _release(self, pending: deque, due: float, tick_s: float, now: float) -> float:
        """Put on the tape the pending ticks that are due at ``now``; returns when the next one is due."""
        if now - due > MAX_CATCH_UP_S:
            log.warning("generator behind real time; skipping", extra={"behind_s": round(now - due, 3)})
            due = now
        while pending and due <= now:
            frames, summary = pending.popleft()
            for frame in frames:
                self.events += frame.count
                self.tape.append(frame)
            if summary is not None:
                self.ledger.apply(summary)  # type: ignore[union-attr]
            due += tick_s
        return due


class ReplayPaced(PacedSource):
    """Plays the recording once, in time, from the moment the first client subscribes."""

    mode = "replay"

    def __init__(
        self, path: Path, *, speed: float, capacity: int, ledger: Ledger | None = None, paused: bool = False
    ) -> None:
        super().__init__(capacity, ledger=ledger, paused=paused)
        self.path = path
        self.speed = speed

    async def start(self) -> None:
        self.ready = True

    def reader(self) -> TapeReader:
        reader = TapeReader(self.tape)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sim-replay-producer")
        return reader

    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        with RecordingReader(self.path) as reader:
            first_ns: int | None = None
            await self._hold()  # started paused: the recording's time starts at the resume
            began = loop.time()
            for record in reader:
                if first_ns is None:
                    first_ns = record.recv_ns
                due = began + (record.recv_ns - first_ns) / 1e9 / self.speed
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                began += await self._hold()
                frame = Frame.from_raw(record.payload)
                if frame is not None:
                    self.tape.append(frame)
                    if self.ledger is not None:
                        self.ledger.feed(frame)
            if reader.truncated:
                log.warning("recording ends in a truncated frame", extra={"path": str(self.path)})
        log.info("replay finished", extra={"path": str(self.path), "frames": self.tape.head})


class PoolSource(Source):
    mode = "flat-out"

    def __init__(
        self, market: SyntheticMarket | AssetMarket, *, events: int, frame_events: int, send_ts: bool,
        ledger: Ledger | None = None,
    ) -> None:  # fmt: skip
        self.market = market
        self.target = events
        self.frame_events = frame_events
        self.send_ts = send_ts
        self.ledger = ledger
        self.frames: list[Frame] = []
        self._summaries: list[TickSummary] = []

    async def start(self) -> None:
        began = time.perf_counter()
        self.frames = await asyncio.to_thread(self._build)
        if self.ledger is not None:  # the pool as built, once: what a client reads in its first pass
            for summary in self._summaries:
                self.ledger.apply(summary)
        self._summaries = []
        log.info(
            "flat-out pool ready",
            extra={"frames": len(self.frames), "events": sum(f.count for f in self.frames),
                   "seconds": round(time.perf_counter() - began, 2)},
        )  # fmt: skip
        self.ready = True

    def _build(self) -> list[Frame]:
        frames: list[Frame] = []
        produced = 0
        while produced < self.target:
            tick = tick_frames(self.market, self.frame_events, send_ts=self.send_ts)
            produced += sum(frame.count for frame in tick)
            frames += tick
            if self.ledger is not None:
                self._summaries.append(self.market.summary())
        return frames

    def reader(self) -> AsyncIterator[Frame]:
        return cycle(self.frames)


def tick_frames(market: SyntheticMarket | AssetMarket, frame_events: int, *, send_ts: bool) -> list[Frame]:
    """The market's next tick as frames of at most ``frame_events`` events: encoded by the market, no
    event ever a dict (see sim.market)."""
    return chunk_json(market.tick_json(), frame_events, market.event_types, send_ts=send_ts)


class FileSource(Source):
    mode = "replay-flat-out"

    def __init__(self, path: Path) -> None:
        self.path = path

    def reader(self) -> AsyncIterator[Frame]:
        return stream_file(self.path)
