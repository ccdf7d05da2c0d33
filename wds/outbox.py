"""One client's outbound queue, sans I/O: control events in order, updates conflated per channel.

A client that reads slower than updates arrive must never slow the others or grow memory without
bound. So its queue keeps every control event (replies, snapshots) in order, but at most ONE update
per channel: a newer update of a channel that is still waiting replaces it in place, marked
``conflated``, and the client converges to the latest state as soon as it reads again. The queue's
bytes are counted; past ``max_bytes`` the caller closes the client (a queue can only pass it with many
channels of large updates, or a flood of replies the client does not read).
"""

from __future__ import annotations

from collections import OrderedDict

from .protocol import Update


class Outbox:
    __slots__ = ("_control", "_items", "bytes", "conflated", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # key: a channel (its waiting update) or an int (a control event); value: (frame, event time ms)
        self._items: OrderedDict[str | int, tuple[bytes, int]] = OrderedDict()
        self._control = 0
        self.bytes = 0
        self.conflated = 0  # updates replaced before they were sent

    def __len__(self) -> int:
        return len(self._items)

    @property
    def over(self) -> bool:
        return self.bytes > self.max_bytes

    def control(self, frame: bytes) -> None:
        self._control += 1
        self._items[self._control] = (frame, 0)
        self.bytes += len(frame)

    def update(self, update: Update, conflated: bool = False) -> bool:
        """Queue ``update``; True when it replaced one still waiting."""
        old = self._items.get(update.channel)
        if old is not None:
            self.bytes -= len(old[0])
            self.conflated += 1
            conflated = True
        frame = update.conflated_frame if conflated else update.frame
        self._items[update.channel] = (frame, update.ts)  # replacing keeps the place in the queue
        self.bytes += len(frame)
        return old is not None

    def forget(self, channel: str) -> None:
        """Drop the channel's waiting update (unsubscribed, or a snapshot supersedes it)."""
        old = self._items.pop(channel, None)
        if old is not None:
            self.bytes -= len(old[0])

    def take(self, max_bytes: int) -> tuple[list[bytes], int, int]:
        """The next events, oldest first, up to ``max_bytes`` (at least one), how many of them are
        updates, and the event time of the oldest of those (0 if none)."""
        items = self._items
        if self.bytes <= max_bytes:  # the usual case: everything fits in one message
            frames = [frame for frame, _ in items.values()]
            stamps = [ts for _, ts in items.values() if ts]
            items.clear()
            self.bytes = 0
            return frames, len(stamps), min(stamps, default=0)
        frames = []
        size, oldest, updates = 0, 0, 0
        while items:
            key = next(iter(items))
            frame, ts = items[key]
            if frames and size + len(frame) > max_bytes:
                break
            del items[key]
            frames.append(frame)
            size += len(frame)
            if ts:
                updates += 1
                if not oldest or ts < oldest:
                    oldest = ts
        self.bytes -= size
        return frames, updates, oldest
