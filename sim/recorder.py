"""Record raw frames from a Massive connection (the vendor's or the emulator's) to a recording file.

The ``massive`` client, in raw mode, awaits its processor inline, so a slow processor stalls the socket
and the vendor drops a slow consumer. The processor here only timestamps the frame and hands it to a
writer thread through a bounded queue; when the disk cannot keep up, frames are dropped and counted
rather than the read loop stalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from massive import WebSocketClient

from mdpipe.settings import MassiveSettings

from .recording import RecordingWriter

log = logging.getLogger(__name__)

QUEUE_FRAMES = 100_000  # frames waiting for the writer at most


@dataclass
class RecordResult:
    frames: int = 0
    dropped: int = 0
    seconds: float = 0.0


async def record(
    path: Path,
    settings: MassiveSettings,
    *,
    duration: float | None = None,
    max_frames: int | None = None,
    stop: asyncio.Event | None = None,
) -> RecordResult:
    """Record until ``duration`` seconds, ``max_frames`` frames, ``stop`` is set, or the feed ends."""
    if settings.massive_api_key is None:
        raise ValueError("MASSIVE_API_KEY is not set (the emulator's key is SIM_API_KEY, `sim` by default)")
    stop = stop or asyncio.Event()
    header = {
        "market": settings.massive_market,
        "feed": settings.massive_feed,
        "subscriptions": settings.massive_subscriptions,
        "started_ns": time.time_ns(),
    }
    tap = Tap(path, header)
    result = RecordResult()

    async def processor(frame: str | bytes) -> None:
        if tap.put(time.time_ns(), frame):
            result.frames += 1
        else:
            result.dropped += 1
        if max_frames is not None and result.frames >= max_frames:
            stop.set()

    client = WebSocketClient(
        api_key=settings.massive_api_key.get_secret_value(),
        feed=settings.massive_feed,
        market=settings.massive_market,
        raw=True,
        subscriptions=[s.strip() for s in settings.massive_subscriptions.split(",") if s.strip()],
        secure=settings.secure,
    )
    began = time.monotonic()
    feed = asyncio.create_task(client.connect(processor, max_size=None), name="recorder-feed")
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({feed, stopper}, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
        if not feed.done():
            await client.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(feed), 5)
        if feed.done() and not feed.cancelled() and feed.exception() is not None:
            raise feed.exception()  # type: ignore[misc]
    finally:
        stopper.cancel()
        if not feed.done():
            feed.cancel()
        await tap.close()
        result.seconds = time.monotonic() - began
    log.info(
        "recording done",
        extra={"path": str(path), "frames": tap.written, "dropped": result.dropped,
               "seconds": round(result.seconds, 2)},
    )  # fmt: skip
    return result


class Tap:
    """Writes frames to a recording from a thread, behind a bounded queue: ``put`` never blocks."""

    def __init__(self, path: Path, header: dict) -> None:
        self._writer = RecordingWriter(path, header)
        self._pending: queue.Queue[tuple[int, str | bytes] | None] = queue.Queue(QUEUE_FRAMES)
        self._thread = threading.Thread(target=self._write_all, name="recording-writer", daemon=True)
        self._thread.start()

    @property
    def written(self) -> int:
        return self._writer.frames

    def put(self, recv_ns: int, frame: str | bytes) -> bool:
        """Queue a frame; False when the writer is behind and the frame is dropped."""
        try:
            self._pending.put_nowait((recv_ns, frame))
        except queue.Full:
            return False
        return True

    async def close(self) -> None:
        """Write what is queued and close the file."""
        await asyncio.to_thread(self._pending.put, None)
        await asyncio.to_thread(self._thread.join)

    def _write_all(self) -> None:
        try:
            while (item := self._pending.get()) is not None:
                self._writer.write(*item)
        finally:
            self._writer.close()
