"""Index values (``V``, ``{"ev":"V","val":5012.3,"T":"I:SPX","t":...}``): the day stats of an index.

An index has no trades: its value is its price. A group's values are folded per (symbol, trading day)
into one ``SymbolValues`` record, which the merge takes into the day stats as trades without size: the
newest value is ``last`` (and the change), the day's earliest its ``open`` (unless a bar's ``op`` says
otherwise), the extremes widen ``high`` and ``low``; ``volume`` and ``trades`` stay 0. No last-trade
document nor ``trades.SYM`` update: the stats document (``stats.SYM``) is an index's live value.
"""

from __future__ import annotations

from typing import Any

from mdc.tradingday import TradingDay

from . import events as ev
from .fold import Folded


class SymbolValues:
    """One symbol's values of a group, on one trading day."""

    __slots__ = ("day", "first", "hi", "hi_t", "lo", "lo_t", "newest", "sym", "t_max", "t_min")

    def __init__(self, sym: str, day: str, t: int, val: float) -> None:
        self.sym, self.day = sym, day
        self.newest = (t, val)  # the newest value (t, val): a later one wins a tie
        self.first = (t, val)  # the earliest (t, val): the day's open
        self.hi = self.lo = val
        self.hi_t = self.lo_t = self.t_min = self.t_max = t


class ValuesFold:
    kind = "values"

    def __init__(self, day: TradingDay) -> None:
        self.day = day

    def fold(self, events: list[dict[str, Any]]) -> Folded:
        out = Folded(self.kind)
        accs: dict[tuple[str, str], SymbolValues] = {}
        known, t_min, t_max, p_max = ev.KNOWN_SYMBOLS, ev.T_MIN, ev.T_MAX, ev.PRICE_MAX
        for event in events:
            get = event.get
            sym, t, val = get("T"), get("t"), get("val")
            tv = type(val)
            if not (
                type(sym) is str and sym in known and type(t) is int and t_min <= t < t_max
                and (tv is float or tv is int) and 0 <= val < p_max
            ):  # fmt: skip
                try:
                    sym = ev.symbol(event)
                    t = ev.time_ms(event)
                    val = ev.price(event, "val")
                except ev.Invalid as exc:
                    out.invalid.append((event, str(exc)))
                    continue
            out.events += 1
            day = self.day(t)
            acc = accs.get((sym, day))
            if acc is None:
                accs[(sym, day)] = SymbolValues(sym, day, t, val)
                continue
            if t >= acc.newest[0]:
                acc.newest = (t, val)
                if t > acc.t_max:
                    acc.t_max = t
            if t < acc.first[0]:
                acc.first = (t, val)
                acc.t_min = t
            if val > acc.hi:
                acc.hi, acc.hi_t = val, t
            elif val < acc.lo:
                acc.lo, acc.lo_t = val, t
        out.records = list(accs.values())
        return out
