"""Trades: the newest trade, recent trades, and the trades' part of the day stats, per symbol.

A group's trades are folded per (symbol, trading day) into one ``SymbolTrades`` record: count and
volume (every trade), high, low, last and first price (only trades whose conditions may set them: not
odd lots, average-price, out-of-sequence... ``MDP_TRADE_EXCLUDE_CONDITIONS``), and the trades
themselves, sorted, each encoded once: the merge takes the newest as the last trade, the newest
``MDC_RECENT_TRADES`` for the recent-trades set, and all of them for the ``trades.SYM`` update.
"""

from __future__ import annotations

from typing import Any

import orjson

from mdc.tradingday import TradingDay

from . import events as ev
from .fold import Folded

#: Most trades of one symbol in one record and ``trades.SYM`` update (the newest); at least the largest
#: ``MDC_RECENT_TRADES``.
TRADES_PER_UPDATE = 1000


class SymbolTrades:
    """One symbol's trades of a group, on one trading day."""

    __slots__ = (
        "day",
        "encoded",
        "first",
        "hi",
        "hi_t",
        "lo",
        "lo_t",
        "n",
        "newest",
        "sym",
        "t_max",
        "t_min",
        "trades",
        "v",
    )

    def __init__(self, sym: str, day: str, t: int) -> None:
        self.sym, self.day = sym, day
        self.n, self.v = 0, 0
        self.hi = self.lo = None
        self.hi_t = self.lo_t = 0
        self.newest: tuple[int, int, float] | None = None  # newest eligible (t, q, p)
        self.first: tuple[int, int, float] | None = None  # earliest eligible (t, q, p): the day's open
        self.trades: list[dict[str, Any]] = []  # sorted by (t, q) once folded, the newest TRADES_PER_UPDATE
        self.encoded: list[bytes] = []  # the trades' JSON, in the same order
        self.t_max = self.t_min = t


class TradesFold:
    kind = "trades"

    def __init__(self, day: TradingDay, exclude_conditions: frozenset[int]) -> None:
        self.day, self.exclude = day, exclude_conditions

    def fold(self, events: list[dict[str, Any]]) -> Folded:
        out = Folded(self.kind)
        accs: dict[tuple[str, str], SymbolTrades] = {}
        exclude = self.exclude
        known, t_min, t_max, p_max, s_max = ev.KNOWN_SYMBOLS, ev.T_MIN, ev.T_MAX, ev.PRICE_MAX, ev.SIZE_MAX
        for event in events:
            # The fast path checks what the slow one does, inline, for the usual trade: no conditions
            # or a short list of them, an integer exchange and a string id. Crypto (``XT``) names its
            # symbol ``pair``, has no ``q`` (0) and fractional sizes (volumes are then floats).
            get = event.get
            sym, t, q, p, s, c, x, i = (
                get("sym") or get("pair"),
                get("t"),
                get("q", 0),
                get("p"),
                get("s"),
                get("c"),
                get("x"),
                get("i"),
            )
            tp, ts = type(p), type(s)
            if not (
                type(sym) is str and sym in known and type(t) is int and t_min <= t < t_max
                and type(q) is int and q >= 0 and (tp is float or tp is int) and 0 <= p < p_max
                and (ts is int or ts is float) and 0 <= s < s_max
                and (c is None or (type(c) is list and len(c) <= 8 and all(type(k) is int for k in c)))
                and (type(x) is int or x is None) and (type(i) is str or i is None)
            ):  # fmt: skip
                try:
                    sym = ev.symbol(event)
                    t = ev.time_ms(event)
                    q = ev.sequence(event)
                    p = ev.price(event, "p")
                    s = ev.size(event, "s")
                    c = ev.int_list(event, "c")
                    x = ev.small_int(event, "x")
                    if i is not None and type(i) is not str and type(i) is not int:
                        raise ev.Invalid("i must be a trade id")
                except ev.Invalid as exc:
                    out.invalid.append((event, str(exc)))
                    continue
            if c is None:
                c = []
            day = self.day(t)
            acc = accs.get((sym, day))
            if acc is None:
                acc = accs[(sym, day)] = SymbolTrades(sym, day, t)
            acc.n += 1
            acc.v += s
            if t > acc.t_max:
                acc.t_max = t
            elif t < acc.t_min:
                acc.t_min = t
            trade = {"t": t, "q": q, "p": p, "s": s, "x": x, "c": c, "i": i}
            ev.carry_send_stamp(event, trade)
            acc.trades.append(trade)
            if c and not exclude.isdisjoint(c):
                continue
            if acc.hi is None or p > acc.hi:
                acc.hi, acc.hi_t = p, t
            if acc.lo is None or p < acc.lo:
                acc.lo, acc.lo_t = p, t
            newest = acc.newest
            if newest is None or t > newest[0] or (t == newest[0] and q > newest[1]):
                acc.newest = (t, q, p)
            first = acc.first
            if first is None or t < first[0] or (t == first[0] and q < first[1]):
                acc.first = (t, q, p)
        out.events = sum(acc.n for acc in accs.values())
        out.records = [self._record(acc) for acc in accs.values()]
        return out

    @staticmethod
    def _record(acc: SymbolTrades) -> SymbolTrades:
        trades = acc.trades
        trades.sort(key=_time_seq)
        del trades[:-TRADES_PER_UPDATE]
        dumps = orjson.dumps
        acc.encoded = [dumps(tr) for tr in trades]
        return acc


def _time_seq(trade: dict[str, Any]) -> tuple[int, int]:
    return trade["t"], trade["q"]
