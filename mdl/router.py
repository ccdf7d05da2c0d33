"""Routing one Massive frame into per-queue groups (sans-I/O).

A frame is a JSON array of events of any types. It is parsed once; each event goes to the queue of its
class (and shard) by the MDQ table, in frame order; ``status`` events are taken out for the listener to
handle, never forwarded. Whatever the table does not know (an unknown ``ev``, an element that is not an
object) goes to ``other`` unchanged, so nothing is lost. A frame that is not a JSON array raises
FrameError; the listener counts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from mdpipe import massive
from mdq import topology

UNKNOWN = "unknown"  # metrics label for event types outside the market's table


class FrameError(ValueError):
    """The frame is not a JSON array; the message is safe to log."""


@dataclass(slots=True)
class Routed:
    #: queue -> (class, events in frame order)
    groups: dict[str, tuple[str, list[Any]]] = field(default_factory=dict)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    #: event type (or UNKNOWN) -> events, for metrics
    counts: dict[str, int] = field(default_factory=dict)


class Router:
    def __init__(self, market: str, exchange: str, shards: int = 1) -> None:
        self.shards = shards
        self.classes = topology.EVENT_CLASSES.get(market, {})
        self._queues = {cls: topology.class_queues(exchange, cls, shards) for cls in topology.CLASSES}
        # Event type -> its queue, when one shard makes the symbol irrelevant.
        self._direct = {ev: self._queues[cls][0] for ev, cls in self.classes.items()}
        self._other = self._queues[topology.OTHER]

    def route(self, frame: str | bytes) -> Routed:
        try:
            events = orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            raise FrameError(f"not JSON ({exc})") from None
        if not isinstance(events, list):
            raise FrameError(f"not a JSON array but a JSON {type(events).__name__}")
        routed = Routed()
        groups, counts = routed.groups, routed.counts
        classes, direct, shards = self.classes, self._direct, self.shards
        other = self._other
        for event in events:
            ev = event.get("ev") if type(event) is dict else None
            if type(ev) is not str:
                ev = None
            elif ev == massive.STATUS:
                routed.statuses.append(event)
                continue
            cls = classes.get(ev, topology.OTHER)
            label = UNKNOWN if cls == topology.OTHER else ev
            counts[label] = counts.get(label, 0) + 1
            if shards == 1:
                queue = direct.get(ev, other[0])
            else:
                symbol = massive.event_symbol(event) if ev is not None else None
                queue = self._queues[cls][topology.shard_of(symbol, shards)]
            group = groups.get(queue)
            if group is None:
                groups[queue] = group = (cls, [])
            group[1].append(event)
        return routed
