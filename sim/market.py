"""The synthetic market: a deterministic stream of Massive stock events, tick by tick, with no I/O.

Each call to ``tick_json()`` advances a virtual clock by ``tick_ms`` and returns that slice's events, in
time order, each as its JSON text with the vendor's field names and key order: what goes on the wire.
``tick()`` does the same and decodes them into the vendor's dicts. The stream is coherent:

- quotes (Q) follow a per-symbol random walk of the mid, with spreads from the symbol's liquidity;
- trades (T) print at the bid, the ask or the midpoint of the quote in force, so they never leave it;
- second (A) and minute (AM) aggregates are computed from the trades this market emitted: bar OHLC,
  volume and VWAP, day volume (``av``), day open (``op``) and day VWAP (``a``) all agree with the trades;
- LULD bands are published with a symbol's first trade and whenever a trade moves 1% from the band's
  reference (bands are +-5% for tier 1, +-10% for tier 2, +-20% under $3);
- a few closing-auction imbalances (NOI) each minute, and now and then a jump (news) in a small name;
- a new trading day starts at 04:00 New York time (``sim.calendar``, the processors' rule): the day's
  figures (``av``, ``op``, ``a``) start again;
- a jump that takes the mid outside the band in force pauses the symbol, as the SIP's LULD rule does: a
  LULD with indicator 15 (paused, bands unchanged) at the end of the tick of the jump, then ``HALT_MS``
  of market time with no trades and no quotes (so no bars either) for it, then a LULD with indicator 16
  (reopening) and new bands around the new mid at the start of the first tick at or after the
  reopening time. A symbol that has no band yet is not paused. Ordinary band updates keep ``i`` empty.

The same seed, universe size, rate, tick and start always give the same events. Quotes are about 85%
of the trade-and-quote flow, as on the real tape. ``summary()`` tells what the last tick did (newest
quotes, the day of the symbols that traded, minute bars closed), for the REST ledger (``sim.ledger``).

Why it is written as it is: a paced emulator generates every event live, on one core shared with the
pipeline it feeds, so the cost per event is the emulator's cost. Hence:

- events are written as their JSON text directly, by an f-string in the vendor's key order, never as a
  dict to encode; ``tick()`` decodes them for callers that want dicts. Every event is a flat JSON object
  (no nested object, no brace in a string), which ``frames`` relies on;
- a symbol's bid and ask are kept as JSON, rendered again only when they change, and with them the
  range of mids that gives the same quote (``quote_range``): most quotes (a busy name's mid moves a tiny
  step per quote) only check that the mid is still in it;
- draws are cheap: weighted symbol picks by an alias table (``AliasTable``), uniform choices as
  ``table[int(draw() * len(table))]`` or ``getrandbits`` rather than ``rng.choice``/``rng.randint``, and
  the mid's normal step from a table of normal quantiles (``NORMAL``) rather than ``rng.gauss``. Those
  give the distributions of the calls they replace (the normal one to 1/16384 of probability, tails cut
  at 4 sigma), not the same numbers for a seed.
"""

from __future__ import annotations

import math
import random
import statistics
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import repeat, starmap
from math import exp
from typing import Any

import orjson

from .calendar import day_bounds, trading_day
from .universe import Instrument, build_universe

TRADE_SHARE = 0.15
FLATOUT_NOMINAL_RATE = 50_000  # events/s used to size ticks when the rate is "flat-out" (0)
TRADING_DAY_S = 23_400  # 6.5 hours
LULD_REFERENCE_MOVE = 0.01
NOI_PER_MINUTE = 3
JUMP_EVERY_MS = 30_000  # a news jump in a small name about this often
HALT_MS = 300_000  # a LULD trading pause lasts 5 minutes of market time
LULD_PAUSED = 15  # SIP price-band indicator: suspended during trading halt or trading pause
LULD_REOPENING = 16  # SIP price-band indicator: re-opening update
# Where trades print, with weights in percent: 4 is the FINRA trade reporting facility (off-exchange).
VENUES = (4, 12, 10, 11, 8, 15, 19, 21, 1, 7)
VENUE_WEIGHTS = (35, 15, 10, 9, 8, 6, 6, 4, 4, 3)
OFF_EXCHANGE = 4
TRF_IDS = (201, 202, 203)
ROUND_LOTS = (1, 1, 1, 2, 2, 3, 5, 10)  # a round-lot trade's size in lots of 100, weighted by repetition
assert len(ROUND_LOTS) == 1 << 3  # drawn with getrandbits(3)
ODD_LOT = 37  # trade condition: odd lot
QUOTE_CONDITION = 1  # quote condition: regular two-sided
EVENT_TYPES = frozenset({"T", "Q", "A", "AM", "LULD", "NOI"})  # every type this market emits

# A trade's venue by percentile: one uniform draw picks it with VENUE_WEIGHTS.
TRADE_VENUES = tuple(v for v, w in zip(VENUES, VENUE_WEIGHTS, strict=True) for _ in range(w))
assert len(TRADE_VENUES) == 100
# One side of a quote, bid or ask: a lit venue and a size of 1-40 round lots, as JSON, all equally likely.
QUOTE_SIDES = tuple((str(venue), str(100 * lots)) for venue in VENUES[1:8] for lots in range(1, 41))
QUOTE_SIDE_CHOICES = len(QUOTE_SIDES)
QUOTE_TAIL = f'"c":{QUOTE_CONDITION},"i":[],"t":'  # a quote's JSON from the condition to the time


def _normal_quantiles(n: int) -> tuple[float, ...]:
    """Standard normal quantiles at the middles of ``n`` equal slices of probability, scaled to a variance
    of exactly 1: an element drawn uniformly is a normal draw to 1/``n`` resolution (tails cut beyond
    about 4 sigma), for the cost of one ``random()`` instead of ``gauss()``."""
    normal = statistics.NormalDist()
    quantiles = [normal.inv_cdf((i + 0.5) / n) for i in range(n)]
    scale = math.sqrt(n / math.fsum(q * q for q in quantiles))
    return tuple(q * scale for q in quantiles)


NORMAL_BITS = 14
NORMAL = _normal_quantiles(1 << NORMAL_BITS)  # drawn with getrandbits(NORMAL_BITS)


class AliasTable:
    """Walker's alias method over ``2 ** bits`` columns: a weighted pick is a uniform column (from
    ``getrandbits``) that gives its own item with probability ``odds[column]``, else its alias. One
    comparison per pick, against a dozen for the bisection of ``random.choices`` over thousands of
    cumulative weights, which was a tenth of the market's time. Columns past the items have no weight:
    they always give their alias."""

    def __init__(self, items: list[Any], weights: list[float], bits: int) -> None:
        columns = 1 << bits
        if len(items) > columns:
            raise ValueError("more items than columns")
        total = math.fsum(weights)
        scaled = [w * columns / total for w in weights] + [0.0] * (columns - len(items))
        self.odds = [1.0] * columns
        alias = list(range(columns))
        small = [c for c, p in enumerate(scaled) if p < 1.0]
        large = [c for c, p in enumerate(scaled) if p >= 1.0]
        while small and large:
            lo, hi = small.pop(), large[-1]
            self.odds[lo], alias[lo] = scaled[lo], hi
            scaled[hi] -= 1.0 - scaled[lo]
            if scaled[hi] < 1.0:
                small.append(large.pop())
        # what is left has odds 1 up to rounding; a column past the items gives the last item then
        self.own = [items[min(c, len(items) - 1)] for c in range(columns)]
        self.alias = [self.own[a] for a in alias]

    def draw(self, uniform: Callable[[], float], columns: Iterable[int]) -> list[Any]:
        """One item per column drawn; ``uniform`` draws in [0, 1)."""
        own, odds, alias = self.own, self.odds, self.alias
        return [own[c] if uniform() < odds[c] else alias[c] for c in columns]


@dataclass(slots=True)
class TickSummary:
    """One tick's effect on the day (see ``SyntheticMarket.summary``).

    ``quotes``: symbol -> JSON of its newest quote ("" when none today); ``trades``: symbol -> (open,
    high, low, close, volume, sum of price * size, trade count, JSON of its newest trade) for the day as
    of the tick's end, for the symbols that traded in it; ``bars``: the minute bars the tick closed, as
    (symbol, start ms, o, h, l, c, v, vw, trade count, day volume)."""

    start_ms: int
    end_ms: int
    quotes: dict[str, str]
    trades: dict[str, tuple]
    bars: list[tuple]


class SyntheticMarket:
    event_types = EVENT_TYPES  # every type this market emits, for the frames (as sim.markets.AssetMarket)

    def __init__(self, *, seed: int, symbols: int, rate: int, tick_ms: int, start_ms: int) -> None:
        if tick_ms <= 0 or 1000 % tick_ms:
            raise ValueError("tick_ms must divide 1000")
        self.rng = random.Random(seed)
        self._draw, self._bits = self.rng.random, self.rng.getrandbits  # the hot paths' draws
        self.instruments: list[Instrument] = build_universe(self.rng, symbols)
        self._by_sym = {inst.sym: inst for inst in self.instruments}
        self.tick_ms = tick_ms
        self.rate = rate
        self.now_ms = start_ms - start_ms % 1000
        self._alias_bits = max(1, (len(self.instruments) - 1).bit_length())
        self._alias = AliasTable(
            self.instruments, [inst.weight for inst in self.instruments], self._alias_bits
        )
        effective = self.effective_rate = rate or FLATOUT_NOMINAL_RATE
        for inst in self.instruments:
            quotes_per_day = max(1.0, effective * inst.weight * (1 - TRADE_SHARE) * TRADING_DAY_S)
            inst.sigma = inst.daily_vol / math.sqrt(quotes_per_day)
            inst.quote_head = f'{{"ev":"Q","sym":"{inst.sym}","bx":'  # a quote's JSON up to its first draw
            inst.quote_end = f',"z":{inst.tape}}}'
            self._set_quote(inst)
        self._expected_per_tick = effective * tick_ms / 1000
        self._dirty: dict[str, dict[str, Instrument]] = {"A": {}, "AM": {}}  # symbols traded per open bar
        self._traded: list[Instrument] = []
        # symbol -> market time its pause ends; in order of that time, since every pause lasts HALT_MS
        self._paused: dict[str, int] = {}
        self._day_end = day_bounds(trading_day(self.now_ms))[1]
        # what the last tick did, for summary(): each symbol's last quote, the symbols that traded, the
        # minute bars closed
        self._tick_quotes: dict[str, str] = {}
        self._tick_traded: dict[str, Instrument] = {}
        self._tick_bars: list[tuple] = []

    # -- the stream -------------------------------------------------------------------------------

    def tick(self) -> list[dict[str, Any]]:
        """The events of the next ``tick_ms`` of market time, as the vendor's dicts."""
        return [orjson.loads(text) for text in self.tick_json()]

    def tick_json(self) -> list[str]:
        """The events of the next ``tick_ms`` of market time, each as its JSON text."""
        rng = self.rng
        t0 = self.now_ms
        t1 = t0 + self.tick_ms
        if t0 >= self._day_end:
            self._new_day(t0)
        self._tick_traded = {}
        self._tick_bars = []
        expected = self._expected_per_tick
        count = (
            max(0, round(rng.gauss(expected, math.sqrt(expected))))
            if expected >= 1
            else int(rng.random() < expected)
        )
        draw = self._draw
        picks = self._alias.draw(draw, map(self._bits, repeat(self._alias_bits, count)))
        offsets = sorted(starmap(draw, repeat((), count)))  # where in the tick each pick falls, in [0, 1)
        events: list[str] = []
        paused = self._paused
        if paused and next(iter(paused.values())) <= t0:
            self._reopen(t0, events)
        # the hot loop, millisecond by millisecond (its picks share a time), with the lookups hoisted
        tick_ms, append, quote, trade = self.tick_ms, events.append, self._quote, self._trade
        quotes = self._tick_quotes = {}  # a symbol's last quote in the tick: one store, for the ledger
        start = 0
        for ms in range(tick_ms):
            end = bisect_left(offsets, (ms + 1) / tick_ms, start)
            if end == start:
                continue
            t = t0 + ms
            t_json = str(t)
            for inst in picks[start:end]:
                if paused and inst.sym in paused:
                    continue  # no trades and no quotes during a pause
                if draw() < TRADE_SHARE:
                    trade(inst, t, events)
                else:
                    quotes[inst.sym] = text = quote(inst, t_json)
                    append(text)
            start = end
        if rng.random() < self.tick_ms / JUMP_EVERY_MS:
            inst = rng.choice(self.instruments[len(self.instruments) // 10 :] or self.instruments)
            self._jump(inst, t1, events)
        self.now_ms = t1
        if t1 % 1000 == 0:
            self._close_bars("A", 1000, t1, events)
        if t1 % 60_000 == 0:
            self._close_bars("AM", 60_000, t1, events)
            self._imbalances(t1, events)
        return events

    # -- events -----------------------------------------------------------------------------------

    def _quote(self, inst: Instrument, t: str) -> str:
        """A quote at ``t`` (JSON): {"ev":"Q","sym","bx","bp","bs","ax","ap","as","c","i","t","q","z"}."""
        draw = self._draw
        mid = inst.mid = inst.mid * exp(inst.sigma * NORMAL[self._bits(NORMAL_BITS)])
        if not inst.quote_low <= mid < inst.quote_high:
            self._set_quote(inst)
        inst.seq += 1
        bid_side, ask_side = divmod(int(draw() * QUOTE_SIDE_CHOICES**2), QUOTE_SIDE_CHOICES)  # in one draw
        bx, bs = QUOTE_SIDES[bid_side]
        ax, as_ = QUOTE_SIDES[ask_side]
        return (
            f'{inst.quote_head}{bx},"bp":{inst.bid_json},"bs":{bs},"ax":{ax},"ap":{inst.ask_json},"as":{as_},'
            f'{QUOTE_TAIL}{t},"q":{inst.seq}{inst.quote_end}'
        )

    def _trade(self, inst: Instrument, t: int, events: list[str]) -> None:
        """A trade at time ``t``, after the LULD bands it moves if it does; then it counts in the bars."""
        draw = self._draw
        side = draw()
        if side < 0.42:
            price, price_json = inst.bid, inst.bid_json
        elif side < 0.84:
            price, price_json = inst.ask, inst.ask_json
        else:
            price = round((inst.bid + inst.ask) / 2, 4)
            price_json = repr(price)
        size_draw = draw()
        if size_draw < 0.35:
            size = 1 + int(draw() * 99)  # an odd lot, 1-99
        elif size_draw < 0.97:
            size = 100 * ROUND_LOTS[self._bits(3)]
        else:
            size = 100 * (10 + int(draw() * 191))  # a block, 10-200 lots
        venue = TRADE_VENUES[int(draw() * 100)]
        ref = inst.luld_ref
        if ref is None or abs(price / ref - 1.0) >= LULD_REFERENCE_MOVE:
            # published just ahead of the trade that moves the reference, so no trade prints outside
            # the bands in force
            events.append(self._luld(inst, price, t))
        inst.seq += 1
        inst.trade_id += 1
        text = (
            f'{{"ev":"T","sym":"{inst.sym}","i":"{inst.trade_id}","x":{venue},"p":{price_json},'
            f'"s":{size},"t":{t},"q":{inst.seq},"z":{inst.tape}'
        )
        if size < 100:
            text += f',"c":[{ODD_LOT}]'
        if venue == OFF_EXCHANGE:
            text += f',"trfi":{TRF_IDS[int(draw() * len(TRF_IDS))]},"trft":{t - self._bits(2)}'
        inst.last_trade = text = text + "}"
        events.append(text)
        self._account(inst, price, size)

    def _luld(self, inst: Instrument, ref: float, t: int, indicator: int | None = None) -> str:
        """Bands around ``ref``, which becomes the reference; ``indicator``: a pause or a reopening."""
        inst.luld_ref = ref
        high, low = _band(inst, ref)
        inst.seq += 1
        indicators = "" if indicator is None else indicator
        return (
            f'{{"ev":"LULD","T":"{inst.sym}","h":{high},"l":{low},"i":[{indicators}],"z":{inst.tape},'
            f'"t":{t},"q":{inst.seq}}}'
        )

    def _imbalances(self, t: int, events: list[str]) -> None:
        rng = self.rng
        for inst in rng.sample(self.instruments, min(NOI_PER_MINUTE, len(self.instruments))):
            paired = 100 * rng.randint(10, 5000)
            inst.seq += 1
            imbalance = 100 * rng.randint(1, 2000)
            price = round(inst.mid, 2 if inst.mid >= 1 else 4)
            events.append(
                f'{{"ev":"NOI","T":"{inst.sym}","t":{t},"at":1600,"a":"C","i":{inst.seq},'
                f'"x":{inst.listing},"o":{imbalance},"p":{paired},"b":{price}}}'
            )

    def _close_bars(self, kind: str, span_ms: int, end: int, events: list[str]) -> None:
        dirty = self._dirty[kind]
        minute = kind == "AM"
        for inst in dirty.values():
            o, h, low, c, v, value, n = inst.bars.pop(kind)
            vwap, day_vwap = round(value / v, 4), round(inst.day_value / inst.day_volume, 4)
            events.append(
                f'{{"ev":"{kind}","sym":"{inst.sym}","v":{v},"av":{inst.day_volume},"op":{inst.day_open},'
                f'"vw":{vwap},"o":{o},"c":{c},"h":{h},"l":{low},"a":{day_vwap},"z":{v // n},'
                f'"s":{end - span_ms},"e":{end}}}'
            )
            if minute:
                self._tick_bars.append((inst.sym, end - span_ms, o, h, low, c, v, vwap, n, inst.day_volume))
        dirty.clear()

    def _new_day(self, t: int) -> None:
        """A new trading day starts at ``t`` (04:00 New York, as the processors count days): the day's
        figures start again, as the vendor's day volume and open do. Bars are all closed here, since the
        day starts on a whole minute."""
        for inst in self.instruments:
            inst.day_open, inst.day_high, inst.day_low = None, 0.0, math.inf
            inst.day_volume, inst.day_value, inst.day_trades = 0, 0.0, 0
            inst.last_trade = ""
        self._day_end = day_bounds(trading_day(t))[1]

    def summary(self) -> TickSummary:
        """What the last tick's events did, for a ledger that applies it when the tick is released (the
        market itself runs ahead of the tape). Kept while the tick is made (a symbol's last quote, the
        symbols that traded): a tenth of the cost of finding them again in the frames' JSON."""
        tick = self.now_ms - self.tick_ms
        traded = {
            sym: (i.day_open, i.day_high, i.day_low, i.day_close, i.day_volume, i.day_value, i.day_trades,
                  i.last_trade)
            for sym, i in self._tick_traded.items()
        }  # fmt: skip
        return TickSummary(tick, self.now_ms, self._tick_quotes, traded, self._tick_bars)

    # -- state ------------------------------------------------------------------------------------

    def _account(self, inst: Instrument, price: float, size: int) -> None:
        if inst.day_open is None:
            inst.day_open = price
        if price > inst.day_high:
            inst.day_high = price
        if price < inst.day_low:
            inst.day_low = price
        inst.day_volume += size
        inst.day_value += price * size
        inst.day_trades += 1
        inst.day_close = price
        self._tick_traded[inst.sym] = inst
        for kind, dirty in self._dirty.items():
            bar = inst.bars.get(kind)
            if bar is None:
                inst.bars[kind] = [price, price, price, price, size, price * size, 1]
                dirty[inst.sym] = inst
                continue
            if price > bar[1]:
                bar[1] = price
            elif price < bar[2]:
                bar[2] = price
            bar[3] = price
            bar[4] += size
            bar[5] += price * size
            bar[6] += 1

    def _set_quote(self, inst: Instrument) -> None:
        """Set the quote around the mid, render bid and ask as JSON if they changed, and keep the range of
        mids that give the same quote: the next quotes skip all this while the mid stays in it, as most
        do (a busy name's mid moves a tiny step per quote)."""
        grid, low, ticks = quote_steps(inst.mid, inst.half_spread_bps)
        bid, ask = low / grid, (low + ticks) / grid  # k / grid is the double nearest the decimal price
        if bid != inst.bid:
            inst.bid, inst.bid_json = bid, repr(bid)
        if ask != inst.ask:
            inst.ask, inst.ask_json = ask, repr(ask)
        inst.quote_low, inst.quote_high = quote_range(grid, low, ticks, inst.half_spread_bps)

    def _jump(self, inst: Instrument, t: int, events: list[str]) -> None:
        """News: move ``inst``'s mid 3-20%; pause the symbol at ``t`` if that leaves its band."""
        move = self.rng.uniform(0.03, 0.20) * self.rng.choice((-1, 1))
        inst.mid = max(0.05, inst.mid * (1 + move))
        ref = inst.luld_ref
        if ref is None or inst.sym in self._paused:
            return  # no band to leave yet, or already paused (it reopens at the newest mid)
        high, low = _band(inst, ref)
        if low <= inst.mid <= high:
            return
        self._paused[inst.sym] = t + HALT_MS
        events.append(self._luld(inst, ref, t, LULD_PAUSED))  # the bands in force, unchanged

    def _reopen(self, t: int, events: list[str]) -> None:
        """Reopen, at ``t``, every symbol whose pause has ended, with bands around its new mid."""
        paused = self._paused
        due = []
        for sym, resume in paused.items():
            if resume > t:
                break  # the dict is in order of resumption
            due.append(sym)
        for sym in due:
            del paused[sym]
            inst = self._by_sym[sym]
            self._set_quote(inst)  # the quote in force becomes the one around the reopening price
            events.append(self._luld(inst, round(inst.mid, 2 if inst.mid >= 1 else 4), t, LULD_REOPENING))


def quote_steps(mid: float, half_spread_bps: float) -> tuple[int, int, int]:
    """The quote around ``mid`` on the price grid (``grid`` steps per dollar: cents, 0.01 cent under $1)
    as (grid, bid in steps, spread in steps). The half spread is the symbol's, in basis points of the
    mid, and half a step at least. (Here and in ``quote_range``, comparisons rather than ``min()`` and
    ``max()``, which cost ~100 ns a call: these run for one quote in eight.)"""
    grid = 100 if mid >= 1 else 10_000
    x = mid * grid  # the mid, in steps
    half = x * half_spread_bps / 10_000
    if half < 0.5:
        half = 0.5
    low = math.floor(x - half)
    return grid, low if low > 1 else 1, round(2 * half)


def quote_range(grid: int, low: int, ticks: int, half_spread_bps: float) -> tuple[float, float]:
    """The mids [low, high) for which ``quote_steps`` gives this quote, narrowed by a relative 1e-9 so
    that float rounding can only make the market compute a quote again, never keep a stale one.

    In steps, with x = mid * grid: the half spread is h(x) = max(0.5, x * f) (f: the half spread as a
    fraction); the bid is floor(x - h(x)), with x - h(x) increasing, so it holds for x between the
    solutions of x - h(x) = low and = low + 1 (down to 0 for the lowest bid, one step); the spread is
    round(2 h(x)), which is 1 up to x = 0.75 / f and else holds for 2 x f between ticks -+ 0.5."""
    f = half_spread_bps / 10_000
    knee = 0.5 / f - 0.5  # x - h(x) = y has the solution y + 0.5 up to the knee, y / (1 - f) past it
    lo = 0.0 if low == 1 else low + 0.5 if low <= knee else low / (1 - f)
    hi = low + 1.5 if low + 1 <= knee else (low + 1) / (1 - f)
    if ticks == 1:
        bottom, top = 0.0, 0.75 / f
    else:
        bottom, top = (ticks - 0.5) / (2 * f), (ticks + 0.5) / (2 * f)
    if grid == 100:  # the cent grid is for mids of $1 and up
        bottom = bottom if bottom > 100.0 else 100.0
    else:
        top = top if top < 10_000.0 else 10_000.0
    lo = lo if lo > bottom else bottom
    hi = hi if hi < top else top
    return lo / grid * (1 + 1e-9), hi / grid * (1 - 1e-9)


def _band(inst: Instrument, ref: float) -> tuple[float, float]:
    """The LULD band (upper, lower) around reference price ``ref``, rounded as published."""
    band = 0.20 if ref < 3.0 else (0.05 if inst.tier == 1 else 0.10)
    digits = 2 if ref >= 1 else 4
    return round(ref * (1 + band), digits), round(ref * (1 - band), digits)
