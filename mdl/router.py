"""Routing one Massive frame into per-queue groups (sans-I/O).

A frame is a JSON array of events of any types. Each event goes to the queue of its class (and shard)
by the MDQ table, in frame order, as its own JSON text; ``status`` events are taken out for the
listener to handle, never forwarded. An object the table does not know (an unknown or missing ``ev``)
goes to ``other`` unchanged, so no event is lost; an element that is not an object is not an event,
and is counted and left out. A frame that is not a JSON array raises FrameError; the listener counts
it.

Two paths, one result. The vendor (and the emulator) write compact arrays of flat objects whose first
key is ``ev``; for those the frame is cut at its ``},{`` seams and each event keeps its exact text, with
no parsing and no re-encoding (parsing every event into a dict and writing it again costs several
times more than everything else the listener does). The cut is exact when every brace of the frame sits at a
seam and no backslash appears, which is checked; anything else (whitespace, nesting, escapes,
another key order, a status event) takes the full path: parsed once with orjson, each element written
back compactly. The fast path checks structure, not every value: a body that still fails to parse is
rejected and counted by the consumer.
"""

from __future__ import annotations

import re
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
    #: queue -> (class, each event's JSON text without its outer braces, in frame order)
    groups: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    #: event type (or UNKNOWN) -> events, for metrics
    counts: dict[str, int] = field(default_factory=dict)
    #: array elements that are not JSON objects: not events, counted and left out
    invalid: int = 0


_SHARD_CACHE = 100_000  # symbols whose shard is remembered


class Router:
    def __init__(self, market: str, exchange: str, shards: int = 1) -> None:
        self.shards = shards
        self.classes = topology.EVENT_CLASSES.get(market, {})
        self._queues = {cls: topology.class_queues(exchange, cls, shards) for cls in topology.CLASSES}
        self._class_of_queue = {q: cls for cls, queues in self._queues.items() for q in queues}
        # Event type -> its queue, when one shard makes the symbol irrelevant.
        self._direct = {ev: self._queues[cls][0] for ev, cls in self.classes.items()}
        self._other = self._queues[topology.OTHER]
        self._needles = {ev: f'"ev":"{ev}"' for ev in self.classes}
        self._shard_of: dict[str, int] = {}

    def route(self, frame: str | bytes) -> Routed:
        if isinstance(frame, bytes | bytearray):
            try:
                frame = bytes(frame).decode()
            except UnicodeDecodeError:
                raise FrameError("not UTF-8") from None
        parts = _cut(frame)
        if parts is None:
            return self._route_parsed(frame)
        by_queue: dict[str, list[str]] = {}
        if self.shards == 1:
            queue_of, other = self._direct.get, self._other[0]
            for part in parts:
                queue = queue_of(part[6 : part.find('"', 6)], other)
                if queue in by_queue:
                    by_queue[queue].append(part)
                else:
                    by_queue[queue] = [part]
        else:
            for part in parts:
                end = part.find('"', 6)
                queue = self._sharded_queue(part, part[6:end], end)
                if queue in by_queue:
                    by_queue[queue].append(part)
                else:
                    by_queue[queue] = [part]
        class_of = self._class_of_queue
        routed = Routed({queue: (class_of[queue], events) for queue, events in by_queue.items()})
        # Counted in C over the whole frame: in a checked frame "ev":"T" occurs once per T event.
        counts, known = routed.counts, 0
        for ev, needle in self._needles.items():
            n = frame.count(needle)
            if n:
                counts[ev] = n
                known += n
        if known < len(parts):
            counts[UNKNOWN] = len(parts) - known
        return routed

    def _sharded_queue(self, part: str, ev: str, end: int) -> str:
        cls = self.classes.get(ev, topology.OTHER)
        if part.startswith(',"sym":"', end + 1):  # the usual order: "ev" then "sym"
            start = end + 9
            symbol: str | None = part[start : part.find('"', start)]
        else:
            symbol = _text_symbol(part)
        shard = self._shard_of.get(symbol) if symbol is not None else 0
        if shard is None:
            shard = topology.shard_of(symbol, self.shards)
            if len(self._shard_of) < _SHARD_CACHE:
                self._shard_of[symbol] = shard  # type: ignore[index]
        return self._queues[cls][shard]

    def _route_parsed(self, frame: str) -> Routed:
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
            if type(event) is not dict:
                routed.invalid += 1
                continue
            ev = event.get("ev")
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
            group[1].append(orjson.dumps(event).decode()[1:-1])
        return routed


_EV = '"ev":"'
_SYMBOL_PATTERNS = tuple(re.compile(rf'"{field}"\s*:\s*"([^"]*)"') for field in massive.SYMBOL_FIELDS)


def _cut(frame: str) -> list[str] | None:
    """The events of a compact frame of flat objects, each without its braces; None if not such a frame.

    Checked over the whole frame in C, not event by event: every brace must sit at a seam (so no object
    is nested and no string holds a brace, and no seam lies inside a string), every object must begin
    with its ``ev`` key, and no backslash may appear (no escapes to misread).
    """
    if not (frame.startswith('[{"ev":"') and frame.endswith("}]")) or "\\" in frame or '"status"' in frame:
        return None
    objects = frame.count("{")
    if not objects == frame.count("}") == frame.count("},{") + 1 == frame.count('{"ev":"'):
        return None
    return frame[2:-2].split("},{")


def _text_symbol(part: str) -> str | None:
    """``massive.event_symbol`` on an event's text: the first string among the symbol fields.

    A regular expression, not a plain search, so ``"sym": "AAPL"`` (spaces are valid JSON) is found too.
    """
    for pattern in _SYMBOL_PATTERNS:
        found = pattern.search(part)
        if found is not None:
            return found.group(1)
    return None
