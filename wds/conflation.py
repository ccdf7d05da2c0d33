"""What a client's waiting update of a channel becomes when a newer one comes first, sans I/O.

The rules are the subscriber's input conflation (``mdc.subscriber.conflation``), applied to one client's
queue: state channels keep the newest update, marked ``conflated``; a ``trades.SYM`` update carries the
prints of both, oldest first, the newest ``CONFLATED_PRINTS`` (the newer envelope's seq, ts and sent,
marked ``conflated``); ``alerts``, ``halts`` and ``signals.*`` keep both, in order, as one batch of
events, up to ``FEED_WAITING``, beyond which the oldest go and the first left is marked ``conflated``.
Only this path parses JSON (a trades merge), and it runs only for a client that fell behind.
"""

from __future__ import annotations

from mdc.subscriber import FEED, FEED_WAITING, PRINTS, merge_prints

from .protocol import Update


class Batch(Update):
    """Updates of a feed channel waiting in order for one client: their events joined, as in a message."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[Update]) -> None:
        last = parts[-1]
        super().__init__(last.channel, last.seq, parts[0].ts, b",".join(p.frame for p in parts), len(parts))
        self.parts = parts

    @property
    def conflated(self) -> Update:
        first = self.parts[0]
        return self if first.conflated is first else Batch([first.conflated, *self.parts[1:]])


def combine(waiting: Update, newer: Update) -> tuple[Update, bool]:
    """What waits once ``newer`` comes while ``waiting`` (of the same channel) still does, and whether
    anything of ``waiting`` was given up for it (counted as conflated)."""
    if newer.kind is PRINTS:
        return _merged(waiting, newer), True
    if newer.kind is not FEED:
        return newer.conflated, True
    parts = [*(waiting.parts if isinstance(waiting, Batch) else (waiting,)), newer]
    if len(parts) <= FEED_WAITING:
        return Batch(parts), False
    del parts[: len(parts) - FEED_WAITING]
    parts[0] = parts[0].conflated  # a gap before it
    return Batch(parts), True


def _merged(waiting: Update, newer: Update) -> Update:
    # one event, marked conflated; stamped with the older event time, for the delivery latency
    frame = merge_prints(waiting.frame, newer.conflated.frame)
    return Update(newer.channel, newer.seq, min(waiting.ts, newer.ts), frame)
