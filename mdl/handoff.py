"""The bounded hand-off between the read loop and the publisher (sans-I/O).

The read loop must never wait: ``put`` always succeeds at once, and when the hand-off holds more than
``max_frames`` frames or ``max_bytes`` bytes it drops the oldest frames and returns them for counting.
Real-time data loses value with age (the queues' TTL says how fast), so the newest frames are the ones
worth keeping.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple


class Received(NamedTuple):
    recv_ns: int  # wall clock when the frame was read, ns since the epoch
    frame: str | bytes


class Handoff:
    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.bytes = 0
        self._frames: deque[Received] = deque()

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, item: Received) -> list[Received]:
        """Add ``item``; return the frames dropped to stay within bounds (oldest first, maybe ``item``)."""
        self._frames.append(item)
        self.bytes += len(item.frame)
        dropped: list[Received] = []
        while len(self._frames) > self.max_frames or (self.bytes > self.max_bytes and self._frames):
            old = self._frames.popleft()
            self.bytes -= len(old.frame)
            dropped.append(old)
        return dropped

    def take(self, max_frames: int) -> list[Received]:
        """Remove and return up to ``max_frames`` frames, oldest first."""
        frames = self._frames
        n = min(max_frames, len(frames))
        out = [frames.popleft() for _ in range(n)]
        self.bytes -= sum(len(item.frame) for item in out)
        return out

    def expire(self, before_ns: int) -> list[Received]:
        """Remove and return the frames received before ``before_ns``."""
        frames = self._frames
        out: list[Received] = []
        while frames and frames[0].recv_ns < before_ns:
            out.append(frames.popleft())
        self.bytes -= sum(len(item.frame) for item in out)
        return out
