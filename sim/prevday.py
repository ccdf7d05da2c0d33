"""The previous trading day of a symbol, made up deterministically, with no I/O.

The vendor's snapshots and grouped daily bars carry the previous day (``prevDay``); the emulator has no
history, so it makes one up per symbol from a random stream seeded by ``SIM_SEED`` and the symbol
alone: the same whatever the start time, and the same in every emulator with that seed.

- The close sits near the symbol's reference price (the synthetic market's starting mid, or the first
  price a replayed recording shows for it), so today's open gaps from it realistically: a fraction of
  the symbol's daily volatility for most symbols, 3-15% for one in twenty.
- Open, high and low follow from the daily volatility; high and low lie strictly outside open and close.
- Volume and trade count scale with the symbol's share of the flow, so today's volume compares with it.
- ``bars()``: the regular session's 390 minute bars (09:30-16:00 New York time), made on demand (about
  a millisecond; never kept): a walk through anchors at the open, the high, the low and the close, so
  the bars' first open, last close, highest high, lowest low, total volume and trade count are the
  day's exactly. Each bar's VWAP lies inside the bar; their volume-weighted mean is close to the day's
  ``vw`` but not equal to it (the day's is fixed before the walk).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
from array import array
from dataclasses import dataclass

from .calendar import CLOSE, OPEN, REGULAR_MINUTES, eastern_ms

MEAN_TRADE_SIZE = 526  # shares: the synthetic market's mix of odd lots, round lots and blocks
BIG_GAP_SHARE = 0.05  # symbols whose open gaps 3-15% from the previous close
REPLAY_DAILY_VOL = 0.02
REPLAY_TRADES = 3900


@dataclass(frozen=True, slots=True)
class Reference:
    """What a symbol's previous day is made from: a price near its close, its daily volatility and its
    usual number of trades in a day."""

    price: float
    daily_vol: float = REPLAY_DAILY_VOL
    trades: float = REPLAY_TRADES


Bar = tuple[int, float, float, float, float, int, float, int]  # t (start ms), o, h, l, c, v, vw, n
BAR_NUMBERS = 8  # a bar's numbers, in that order, as a ledger keeps them in an array('d')


@dataclass(slots=True)
class PreviousDay:
    """One symbol's previous trading day: the day's figures, ``t`` its 16:00 close in ms (as the vendor
    stamps a daily bar in the grouped and previous-close answers), and its minute bars."""

    sym: str
    date: dt.date
    o: float
    h: float
    l: float  # noqa: E741 - the vendor's name
    c: float
    v: int
    vw: float
    n: int
    t: int
    seed: int = 0
    daily_vol: float = 0.0
    anchors: tuple[tuple[int, float], ...] = ()  # (minute, price) the walk goes through, in order
    recorded: array | None = None  # the bars of a day that was played, as the tape showed them

    def bars(self) -> list[Bar]:
        return bars_of(self.recorded) if self.recorded is not None else _walk(self)


def bars_of(numbers: array | None) -> list[Bar]:
    """The bars held in an array of ``BAR_NUMBERS`` numbers each."""
    if not numbers:
        return []
    it = iter(numbers)
    return [
        (int(t), o, h, low, c, int(v), vw, int(n))
        for t, o, h, low, c, v, vw, n in zip(*[it] * BAR_NUMBERS, strict=True)
    ]


def previous_day(seed: int, sym: str, date: dt.date, ref: Reference) -> PreviousDay:
    rng = random.Random(f"mdpipe-sim-prev:{seed}:{sym}")
    vol = ref.daily_vol
    if rng.random() < BIG_GAP_SHARE:
        gap = rng.uniform(0.03, 0.15) * rng.choice((-1, 1))
    else:
        gap = max(-3.0, min(3.0, rng.gauss(0.0, 1.0))) * 0.35 * vol
    c = tick_round(ref.price * math.exp(-gap))
    o = tick_round(c * math.exp(-rng.gauss(0.0, vol)))
    top, bottom = max(o, c), min(o, c)
    h = tick_round(max(top * math.exp(abs(rng.gauss(0.0, 0.4 * vol)) + 0.002), top + step(top)))
    low = tick_round(min(bottom * math.exp(-abs(rng.gauss(0.0, 0.4 * vol)) - 0.002), bottom - step(bottom)))
    low = max(low, step(low))
    n = max(2 * REGULAR_MINUTES, round(ref.trades * rng.uniform(0.6, 1.4)))
    v = round(n * MEAN_TRADE_SIZE * rng.uniform(0.7, 1.3))
    # the walk goes through the high and the low at two distinct minutes; the day's VWAP is that of the
    # straight lines between the anchors under the volume profile (the walk's noise averages out)
    at_high, at_low = rng.sample(range(1, REGULAR_MINUTES), 2)
    anchors = tuple(sorted([(0, o), (at_high, h), (at_low, low), (REGULAR_MINUTES, c)]))
    vw = round(_mean_line(anchors), 4)
    return PreviousDay(sym, date, o, h, low, c, v, vw, n, eastern_ms(date, CLOSE), seed, vol, anchors)


def _profile(minute: float) -> float:
    """Relative volume through the regular session: U-shaped, three and a half times at the ends."""
    half = REGULAR_MINUTES / 2
    return 1 + 2.5 * ((minute - half) / half) ** 2


_SAMPLES = [(k, _profile(k)) for k in range(0, REGULAR_MINUTES + 1, 15)]
_SAMPLES_WEIGHT = math.fsum(w for _, w in _SAMPLES)


def _mean_line(anchors: tuple[tuple[int, float], ...]) -> float:
    """The mean of the straight lines between the anchors, weighted by the volume profile (sampled every
    quarter of an hour)."""
    segments = itertools.pairwise(anchors)
    (i, a), (j, b) = next(segments)
    total = 0.0
    for k, w in _SAMPLES:
        while k > j:
            (i, a), (j, b) = next(segments)
        total += w * (a + (b - a) * (k - i) / (j - i))
    return total / _SAMPLES_WEIGHT


def step(price: float) -> float:
    """The price grid: cents, 0.01 cent under $1."""
    return 0.01 if price >= 1 else 0.0001


def tick_round(price: float) -> float:
    digits = 2 if price >= 1 else 4
    return round(max(price, 0.0001), digits)


def _walk(day: PreviousDay) -> list[Bar]:
    rng = random.Random(f"mdpipe-sim-prev-bars:{day.seed}:{day.sym}")
    minutes = REGULAR_MINUTES
    # anchors: the open at 0, the close at 390, the high and the low at two distinct minutes between
    anchors = day.anchors
    sigma = day.c * max(day.daily_vol, 0.001) / math.sqrt(minutes)
    points = [day.o]
    for (i, a), (j, b) in itertools.pairwise(anchors):
        walk, total = [], 0.0
        for _ in range(j - i):
            total += rng.gauss(0.0, sigma)
            walk.append(total)
        for k in range(1, j - i + 1):  # a Brownian bridge from a to b, kept within the day's range
            x = a + (b - a) * k / (j - i) + walk[k - 1] - total * k / (j - i)
            points.append(tick_round(min(day.h, max(day.l, x))))
        points[j] = b  # exactly, whatever the rounding
    # volume and trades: a U-shaped profile with noise; every bar has at least one trade and one share
    weights = [_profile(k + 0.5) * rng.uniform(0.5, 1.5) for k in range(minutes)]
    trades = [1 + extra for extra in _split(day.n - minutes, weights)]
    volumes = [n + extra for n, extra in zip(trades, _split(day.v - day.n, weights), strict=True)]
    bars: list[tuple] = []
    for k in range(minutes):
        o, c = points[k], points[k + 1]
        h = min(day.h, tick_round(max(o, c) + abs(rng.gauss(0.0, sigma / 2))))
        low = max(day.l, tick_round(min(o, c) - abs(rng.gauss(0.0, sigma / 2))))
        bars.append([o, h, low, c, volumes[k], (o + h + low + c) / 4, trades[k]])
    # shift the bars' VWAPs towards the day's, each kept inside its bar
    shift = day.vw - sum(b[5] * b[4] for b in bars) / day.v
    start = eastern_ms(day.date, OPEN)
    return [
        (start + k * 60_000, o, h, low, c, v, round(min(h, max(low, vw + shift)), 4), n)
        for k, (o, h, low, c, v, vw, n) in enumerate(bars)
    ]


def _split(total: int, weights: list[float]) -> list[int]:
    """``total`` split in proportion to ``weights``, in whole parts that add up to it exactly."""
    scale = total / math.fsum(weights)
    parts, done, running = [], 0, 0.0
    for w in weights:
        running += w * scale
        upto = min(total, round(running))
        parts.append(upto - done)
        done = upto
    parts[-1] += total - done
    return parts
