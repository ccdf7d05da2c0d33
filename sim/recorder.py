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
    writer = RecordingWriter(path, header)
    pending: queue.Queue[tuple[int, str | bytes] | None] = queue.Queue(QUEUE_FRAMES)
    thread = threading.Thread(target=_write_all, args=(writer, pending), name="recording-writer", daemon=True)
    thread.start()
    result = RecordResult()

    async def processor(frame: str | bytes) -> None:
        try:
            pending.put_nowait((time.time_ns(), frame))
            result.frames += 1
        except queue.Full:
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
        pending.put(None)
        await asyncio.to_thread(thread.join)
        result.seconds = time.monotonic() - began
    log.info(
        "recording done",
        extra={"path": str(path), "frames": writer.frames, "dropped": result.dropped,
               "seconds": round(result.seconds, 2)},
    )  # fmt: skip
    return result


def _write_all(writer: RecordingWriter, pending: queue.Queue[tuple[int, str | bytes] | None]) -> None:
    try:
        while (item := pending.get()) is not None:
            writer.write(*item)
    finally:
        writer.close()
