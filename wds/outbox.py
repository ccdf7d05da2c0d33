"""One client's outbound queue, sans I/O: control events in order, updates conflated per channel, taken
out as whole WebSocket frames.

A client that reads slower than updates arrive must never slow the others or grow memory without
bound. So its queue keeps every control event (replies, snapshots) in order, but at most ONE entry per
channel: a newer update of a channel that is still waiting takes its place (``wds.conflation``: state
channels keep the newest, trades carry the prints of both, feeds keep both in order up to a bound), and
the client converges to the latest state as soon as it reads again. The queue holds the updates
themselves, shared with every other client: queueing one makes no object. The queue's bytes are
counted; when it is ``over`` the caller closes the client: past ``max_bytes`` of updates (many channels of
large updates), or past ``CONTROL_FACTOR`` times that in all (a flood of replies and snapshots the client
does not read). Snapshots are what the client asked for: a subscription to several ``bars.SYM`` at once
(some 200 KB each with their history) is not a client falling behind.
"""

from __future__ import annotations

from .conflation import combine
from .frames import message_frame
from .protocol import Update, control

CONTROL_FACTOR = 16


class Outbox:
    __slots__ = ("_control", "_items", "bytes", "conflated", "control_bytes", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # key: a channel (its waiting update) or an int (a control event); a dict keeps the order of
        # insertion, and a replaced value keeps its key's place
        self._items: dict[str | int, Update] = {}
        self._control = 0
        self.bytes = 0  # of the events waiting (not of their frame)
        self.control_bytes = 0  # of the control events among them
        self.conflated = 0  # updates replaced before they were sent

    def __len__(self) -> int:
        return len(self._items)

    @property
    def over(self) -> bool:
        limit = self.max_bytes
        return self.bytes - self.control_bytes > limit or self.bytes > limit * CONTROL_FACTOR

    def control(self, frame: bytes) -> None:
        self._control += 1
        self._items[self._control] = control(frame)
        self.bytes += len(frame)
        self.control_bytes += len(frame)

    def update(self, update: Update, conflated: bool = False) -> bool:
        """Queue ``update`` (``conflated``: marked so); True when it replaced one still waiting."""
        if conflated:
            update = update.conflated
        items = self._items
        old = items.get(update.channel)
        if old is None:
            items[update.channel] = update
            self.bytes += len(update.frame)
            return False
        new, replaced = combine(old, update)
        items[update.channel] = new
        self.bytes += len(new.frame) - len(old.frame)
        self.conflated += replaced
        return replaced

    def forget(self, channel: str) -> None:
        """Drop the channel's waiting update (unsubscribed, or a snapshot supersedes it)."""
        old = self._items.pop(channel, None)
        if old is not None:
            self.bytes -= len(old.frame)

    def take(self, max_bytes: int) -> tuple[bytes, int, int]:
        """The next message's whole WebSocket frame: the events waiting, oldest first, up to ``max_bytes``
        (at least one); how many updates it carries; the event time of the oldest of them (0 if none)."""
        items = self._items
        if len(items) == 1:  # the usual case when keeping up: one update, its frame shared by every client
            (update,) = items.values()
            items.clear()
            self.bytes = self.control_bytes = 0
            return update.alone, update.count, update.ts
        if self.bytes <= max_bytes:  # the usual case when busy: everything in one message
            taken = list(items.values())
            items.clear()
            size, self.bytes, self.control_bytes = self.bytes, 0, 0
        else:
            taken, size = self._first(max_bytes)
        updates = oldest = 0
        for update in taken:
            if update.count:
                updates += update.count
                if not oldest or update.ts < oldest:
                    oldest = update.ts
        return message_frame([u.frame for u in taken], size), updates, oldest

    def _first(self, max_bytes: int) -> tuple[list[Update], int]:
        """Take the oldest events that fit in ``max_bytes`` (at least one), and their bytes."""
        entries = list(self._items.items())
        n = size = 0
        for _, update in entries:
            if n and size + len(update.frame) > max_bytes:
                break
            n += 1
            size += len(update.frame)
        self._items = dict(entries[n:])
        self.bytes -= size
        taken = [update for _, update in entries[:n]]
        self.control_bytes -= sum(len(update.frame) for update in taken if not update.count)
        return taken, size

    def clear(self) -> int:
        """Drop everything waiting (the client is gone); how many updates that was."""
        dropped = sum(update.count for update in self._items.values())
        self._items.clear()
        self.bytes = self.control_bytes = 0
        return dropped
