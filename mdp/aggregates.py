"""Aggregates: the newest second bar, the minute-bar history, and the bars' part of the day stats.

Second bars are ``A`` (stocks, options, indices, futures), ``XAS`` (crypto) and ``CAS`` (forex); minute
bars are ``AM``, ``XA`` and ``CA``. The vendor's day fields, when present, feed the day stats: ``op``
(day open, which wins over the first trade), ``av`` (day volume: the stats take the larger of it and the
sum of trades seen) and ``a`` (day VWAP). A bar's high and low widen the day's; its close is a last price.
"""

from __future__ import annotations

from typing import Any

import orjson

from . import events as ev
from .fold import Folded
from .session import TradingDay

SECOND_BARS = frozenset({"A", "XAS", "CAS"})
MINUTE_BARS = frozenset({"AM", "XA", "CA"})


class _Acc:
    __slots__ = ("av", "day", "hi", "hi_t", "lo", "lo_t", "minutes", "newest", "op", "second", "sym", "vwap")

    def __init__(self, sym: str, day: str) -> None:
        self.sym, self.day = sym, day
        self.second: tuple[int, str] | None = None  # newest second bar (start, JSON)
        self.minutes: dict[int, tuple[str, float]] = {}  # start -> (JSON, volume); a repeat replaces
        self.newest: dict[str, Any] | None = None  # the bar with the latest end
        self.hi = self.lo = None
        self.hi_t = self.lo_t = 0
        # the day fields, from whichever bars carry them (second bars often do not)
        self.op: float | bool = False  # day open, from the newest bar with one
        self.av: float | bool = False  # day volume, the largest seen
        self.vwap: tuple[int, float] | None = None  # day VWAP, from the newest bar with one: (end, value)


class AggregatesFold:
    script = "aggregates"

    def __init__(self, day: TradingDay) -> None:
        self.day = day

    def fold(self, events: list[dict[str, Any]]) -> Folded:
        out = Folded(self.script)
        accs: dict[tuple[str, str], _Acc] = {}
        for event in events:
            try:
                sym = ev.symbol(event)
                s = ev.time_ms(event, "s")
                e = ev.time_ms(event, "e")
                if e < s:
                    raise ev.Invalid("e must not be before s")
                o, h, low, c = (ev.price(event, f) for f in ("o", "h", "l", "c"))
                if not low <= min(o, c) <= max(o, c) <= h:
                    raise ev.Invalid("o, h, l, c must satisfy l <= o, c <= h")
                v = ev.size(event, "v")
                for f in ("op", "a", "vw"):
                    if f in event:
                        ev.price(event, f)
                if "av" in event:
                    ev.size(event, "av")
            except ev.Invalid as exc:
                out.invalid.append((event, str(exc)))
                continue
            out.events += 1
            day = self.day(s)
            acc = accs.get((sym, day))
            if acc is None:
                acc = accs[(sym, day)] = _Acc(sym, day)
            bar = {"t": s, "e": e, "o": o, "h": h, "l": low, "c": c, "v": v, "vw": event.get("vw")}
            if event["ev"] in MINUTE_BARS:
                acc.minutes[s] = (orjson.dumps(bar).decode(), v)
            elif acc.second is None or s >= acc.second[0]:
                acc.second = (s, orjson.dumps(bar).decode())
            if acc.newest is None or e >= acc.newest["e"]:
                acc.newest = event
            if "op" in event:
                acc.op = event["op"]
            if "av" in event and (acc.av is False or event["av"] > acc.av):
                acc.av = event["av"]
            if "a" in event and (acc.vwap is None or e >= acc.vwap[0]):
                acc.vwap = (e, event["a"])
            if acc.hi is None or h > acc.hi:
                acc.hi, acc.hi_t = h, e
            if acc.lo is None or low < acc.lo:
                acc.lo, acc.lo_t = low, e
        out.records = [self._record(acc) for acc in accs.values()]
        return out

    @staticmethod
    def _record(acc: _Acc) -> list[Any]:
        n = acc.newest
        assert n is not None
        vwap_t, vwap = acc.vwap or (0, False)
        stats = [n["e"], acc.op, acc.av, vwap, n["c"], acc.hi, acc.hi_t, acc.lo, acc.lo_t, vwap_t]
        minutes = [[start, json, v] for start, (json, v) in sorted(acc.minutes.items())]
        second = acc.second
        return [acc.sym, acc.day, second[1] if second else False, second[0] if second else 0, minutes, stats]
