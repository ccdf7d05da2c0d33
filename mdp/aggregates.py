"""Aggregates: the newest second bar, the minute-bar history, and the bars' part of the day stats.

Second bars are ``A`` (stocks, options, indices, futures), ``XAS`` (crypto) and ``CAS`` (forex); minute
bars are ``AM``, ``XA`` and ``CA``. The vendor's day fields, when present, feed the day stats: ``op``
(day open, which wins over the first trade), ``av`` (day volume: the stats take the larger of it and the
sum of trades seen) and ``a`` (day VWAP). A bar's high and low widen the day's; its close is a last price.
"""

from __future__ import annotations

from typing import Any

import orjson

from mdc.tradingday import TradingDay

from . import events as ev
from .fold import Folded

SECOND_BARS = frozenset({"A", "XAS", "CAS"})
MINUTE_BARS = frozenset({"AM", "XA", "CA"})


class SymbolBars:
    """One symbol's bars of a group, on one trading day."""

    __slots__ = (
        "_by_start", "av", "close", "day", "end", "hi", "hi_t", "lo", "lo_t", "minutes", "op", "second",
        "sym", "vwap",
    )  # fmt: skip

    def __init__(self, sym: str, day: str) -> None:
        self.sym, self.day = sym, day
        self.second: tuple[int, bytes] | None = None  # newest second bar (start, JSON)
        #: minute bars (start, JSON, volume), oldest first once folded; a repeated start replaces
        self.minutes: list[tuple[int, bytes, float]] = []
        self._by_start: dict[int, tuple[int, bytes, float]] = {}
        self.end = 0  # the newest bar's end ...
        self.close = 0.0  # ... and its close
        self.hi: float | None = None
        self.lo: float | None = None
        self.hi_t = self.lo_t = 0
        # the day fields, from whichever bars carry them (second bars often do not)
        self.op: float | None = None  # day open, from the newest bar with one
        self.av: float | None = None  # day volume, the largest seen
        self.vwap: tuple[int, float] | None = None  # day VWAP, from the newest bar with one: (end, value)


class AggregatesFold:
    kind = "aggregates"

    def __init__(self, day: TradingDay, volume: float | None = None) -> None:
        self.day = day
        #: a bar's ``v`` when it has none (index bars carry no volume), None: ``v`` required
        self.volume = volume

    def fold(self, events: list[dict[str, Any]]) -> Folded:
        out = Folded(self.kind)
        accs: dict[tuple[str, str], SymbolBars] = {}
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
                v = ev.size(event, "v", self.volume)
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
            key = (sym, day)
            acc = accs.get(key)
            if acc is None:
                acc = accs[key] = SymbolBars(sym, day)
            bar = {"t": s, "e": e, "o": o, "h": h, "l": low, "c": c, "v": v, "vw": event.get("vw")}
            if event["ev"] in MINUTE_BARS:
                acc._by_start[s] = (s, orjson.dumps(bar), v)
            elif acc.second is None or s >= acc.second[0]:
                acc.second = (s, orjson.dumps(bar))
            if e >= acc.end:  # 0 until the first bar (times are checked to be positive)
                acc.end, acc.close = e, c
            if "op" in event:
                acc.op = event["op"]
            if "av" in event and (acc.av is None or event["av"] > acc.av):
                acc.av = event["av"]
            if "a" in event and (acc.vwap is None or e >= acc.vwap[0]):
                acc.vwap = (e, event["a"])
            if acc.hi is None or h > acc.hi:
                acc.hi, acc.hi_t = h, e
            if acc.lo is None or low < acc.lo:
                acc.lo, acc.lo_t = low, e
        for acc in accs.values():
            acc.minutes = [acc._by_start[start] for start in sorted(acc._by_start)]
        out.records = list(accs.values())
        return out
