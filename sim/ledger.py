"""The day so far as the tape has shown it: what the emulator's REST answers are made of. No I/O.

A paced source feeds the ledger when it puts a tick or a frame on the tape, never before: the
synthetic market generates ticks ahead of time, so its own state is ahead of what clients have seen,
and a REST answer must agree with the stream a client read from the first event. Per symbol:

- the day: open (first trade), high, low, close (newest trade), volume, sum of price * size (VWAP) and
  trade count, from every trade released, odd lots included;
- the newest trade and the newest quote released, as their events;
- the newest closed minute bar and the day's minute bars (the ``AM`` events released, with their trade
  counts), at most ``BARS_PER_SYMBOL`` a symbol and day (the oldest dropped), 64 bytes each;
- the previous trading day: made up by ``prevday`` (the weekday before the day of the market clock),
  or, once the clock has crossed 04:00 New York time into the next day, the day that was played.

Two ways in, the same result (a test checks it):

- ``apply(TickSummary)``: the synthetic market's own account of a tick (``SyntheticMarket.summary``):
  a few dictionary updates per tick, so the ledger adds little to the cost of generating events;
- ``feed(Frame)``: any frame (a replayed recording), parsed; events that are not well-formed stock
  trades, quotes or minute bars are skipped. The first event's time sets the day and the clock. The
  newest trade or quote is the newest by (``t``, ``q``), the day's open the oldest; a bar's trade count
  is the number of trades released since the symbol's previous bar (the synthetic market's bars carry
  their own).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from array import array
from typing import Any

import orjson

from .calendar import CLOSE, day_bounds, eastern_ms, previous_trading_day, trading_day
from .frames import Frame
from .market import TickSummary
from .prevday import BAR_NUMBERS, Bar, PreviousDay, Reference, bars_of, previous_day

BARS_PER_SYMBOL = 1000  # minute bars kept per symbol and day (04:00-20:00 is 960)

DayAgg = tuple  # (o, h, l, c, v, sum of price * size, n, newest trade: its JSON or its dict)


class Ledger:
    def __init__(self, *, start_ms: int, seed: int, references: dict[str, Reference] | None = None) -> None:
        """``references``: every symbol's reference for its previous day (the synthetic universe's);
        None for a replay, where a symbol's first price seen is its reference."""
        self.seed = seed
        self.references: dict[str, Reference] = dict(references or {})
        self._learn = references is None
        self._untimed = True  # feed(): no event yet; the first one sets the day and the clock
        self.clock_ms = start_ms  # market time released so far
        self._played: dict[str, PreviousDay] | None = None
        day = trading_day(start_ms)
        self._start(day, previous_trading_day(day))

    def _start(self, day: dt.date, prev_date: dt.date) -> None:
        self.day, self.prev_date = day, prev_date
        self._day_end = day_bounds(day)[1]
        self.trades: dict[str, DayAgg] = {}
        self.quotes: dict[str, str | dict] = {}  # "" for a symbol not quoted today
        self.minutes: dict[str, tuple] = {}  # newest closed bar: t, o, h, l, c, v, vw, n, day volume
        self._bars: dict[str, array] = {}
        self._generated: dict[str, PreviousDay] = {}
        self._keys: dict[str, tuple] = {}  # feed(): (oldest, newest) (t, q) of a symbol's trades
        self._marks: dict[str, int] = {}  # feed(): trade count at the symbol's previous bar

    # -- in ---------------------------------------------------------------------------------------

    def apply(self, tick: TickSummary) -> None:
        if tick.start_ms >= self._day_end:
            self._next_day(tick.start_ms)
        self.quotes.update(tick.quotes)
        self.trades.update(tick.trades)
        for bar in tick.bars:
            self._bar(*bar)
        self.clock_ms = tick.end_ms

    def feed(self, frame: Frame) -> None:
        try:
            events = orjson.loads(frame.full)
        except orjson.JSONDecodeError:
            return
        if isinstance(events, list):
            for event in events:
                if isinstance(event, dict):
                    # not a well-formed stock event: skipped (a recording may hold anything)
                    with contextlib.suppress(KeyError, TypeError, ValueError):
                        self._event(event)

    def _event(self, e: dict[str, Any]) -> None:
        ev = e.get("ev")
        if ev not in ("T", "Q", "AM"):
            return
        sym = e["sym"]
        t = e["e" if ev == "AM" else "t"]
        if not isinstance(sym, str) or type(t) is not int:
            return
        if self._untimed:
            # a recording's start (its header) may be another day than its events (a replay of the
            # emulator's fixed clock): the first event's time is the one that counts
            self._untimed, self.clock_ms, day = False, t, trading_day(t)
            if day != self.day:
                self._start(day, previous_trading_day(day))
        if t >= self._day_end:
            self._next_day(t)
        if t > self.clock_ms:
            self.clock_ms = t
        if ev == "T":
            self._trade(sym, e, (t, _int(e.get("q", 0))))
        elif ev == "Q":
            mid, key = (_number(e["bp"]) + _number(e["ap"])) / 2, (t, _int(e.get("q", 0)))
            old = self.quotes.get(sym)
            if not isinstance(old, dict) or key >= (old["t"], old.get("q", 0)):
                self.quotes[sym] = e
            self._reference(sym, mid)
        else:
            n = self.trades[sym][6] if sym in self.trades else 0
            bar = (sym, _int(e["s"]), *(_number(e[k]) for k in "ohlc"), _int(e["v"]), _number(e["vw"]))
            self._bar(*bar, n - self._marks.get(sym, 0), _int(e.get("av", 0)))
            self._marks[sym] = n
            self._reference(sym, bar[2])

    def _trade(self, sym: str, e: dict[str, Any], key: tuple) -> None:
        p, s = _number(e["p"]), _int(e["s"])
        agg = self.trades.get(sym)
        if agg is None:
            self.trades[sym] = (p, p, p, p, s, p * s, 1, e)
            self._keys[sym] = (key, key)
            self._reference(sym, p)
            return
        o, h, low, c, v, value, n, last = agg
        oldest, newest = self._keys[sym]
        if key < oldest:
            o, oldest = p, key
        if key >= newest:
            c, last, newest = p, e, key
        self.trades[sym] = (o, max(h, p), min(low, p), c, v + s, value + p * s, n + 1, last)
        self._keys[sym] = (oldest, newest)

    def _reference(self, sym: str, price: float) -> None:
        if self._learn and sym not in self.references and price > 0:
            self.references[sym] = Reference(price)

    def _bar(self, sym: str, t: int, o: float, h: float, low: float, c: float, v: int, vw: float, n: int,
             av: int) -> None:  # fmt: skip
        self.minutes[sym] = (t, o, h, low, c, v, vw, n, av)
        bars = self._bars.get(sym)
        if bars is None:
            bars = self._bars[sym] = array("d")
        elif len(bars) >= BARS_PER_SYMBOL * BAR_NUMBERS:
            del bars[:BAR_NUMBERS]
        bars.extend((t, o, h, low, c, v, vw, n))

    def _next_day(self, t: int) -> None:
        """The clock crossed into a new trading day: the day played becomes the previous day (for the
        symbols that traded in it), and the new one starts empty, as the vendor clears its snapshot."""
        close = eastern_ms(self.day, CLOSE)
        bars = self._bars
        self._played = {
            sym: PreviousDay(sym, self.day, *agg[:5], round(agg[5] / agg[4], 4), agg[6], close,
                             recorded=bars.get(sym, array("d")))
            for sym, agg in self.trades.items()
            if agg[4] > 0
        }  # fmt: skip
        self._start(trading_day(t), self.day)

    # -- out --------------------------------------------------------------------------------------

    def symbols(self) -> list[str]:
        """Every symbol that has a previous day or an event today, the universe's in its order."""
        known = dict.fromkeys(self._played if self._played is not None else self.references)
        known.update(dict.fromkeys(self.trades))
        known.update(dict.fromkeys(sym for sym, quote in self.quotes.items() if quote))
        return list(known)

    def previous(self, sym: str) -> PreviousDay | None:
        if self._played is not None:
            return self._played.get(sym)
        day = self._generated.get(sym)
        if day is None:
            ref = self.references.get(sym)
            if ref is None:
                return None
            day = self._generated[sym] = previous_day(self.seed, sym, self.prev_date, ref)
        return day

    def make_previous(self, count: int) -> bool:
        """Make up to ``count`` previous days not made yet (about 60 us each); True when every one is
        made. An answer about every symbol lets the event loop run between such steps."""
        if self._played is not None:
            return True
        todo = [sym for sym in self.references if sym not in self._generated][:count]
        for sym in todo:
            self.previous(sym)
        return len(todo) < count

    def last_trade(self, sym: str) -> dict[str, Any] | None:
        agg = self.trades.get(sym)
        return None if agg is None else _event(agg[7])

    def last_quote(self, sym: str) -> dict[str, Any] | None:
        quote = self.quotes.get(sym)
        return _event(quote) if quote else None

    def day_bars(self, sym: str) -> list[Bar]:
        return bars_of(self._bars.get(sym))


def _event(value: str | dict) -> dict[str, Any]:
    return orjson.loads(value) if isinstance(value, str) else value


def _number(value: Any) -> float:
    if type(value) not in (int, float):
        raise TypeError("not a number")
    return float(value)


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError("not an integer")
    return value
