"""The synthetic market: a deterministic stream of Massive stock events, tick by tick, with no I/O.

Each call to ``tick()`` advances a virtual clock by ``tick_ms`` and returns that slice's events, in time
order, as the vendor's dicts (exact field names). The stream is coherent:

- quotes (Q) follow a per-symbol random walk of the mid, with spreads from the symbol's liquidity;
- trades (T) print at the bid, the ask or the midpoint of the quote in force, so they never leave it;
- second (A) and minute (AM) aggregates are computed from the trades this market emitted: bar OHLC,
  volume and VWAP, day volume (``av``), day open (``op``) and day VWAP (``a``) all agree with the trades;
- LULD bands are published with a symbol's first trade and whenever a trade moves 1% from the band's
  reference (bands are +-5% for tier 1, +-10% for tier 2, +-20% under $3);
- a few closing-auction imbalances (NOI) each minute, and now and then a jump (news) in a small name;
- a jump that takes the mid outside the band in force pauses the symbol, as the SIP's LULD rule does: a
  LULD with indicator 15 (paused, bands unchanged) at the end of the tick of the jump, then ``HALT_MS``
  of market time with no trades and no quotes (so no bars either) for it, then a LULD with indicator 16
  (reopening) and new bands around the new mid at the start of the first tick at or after the
  reopening time. A symbol that has no band yet is not paused. Ordinary band updates keep ``i`` empty.

The same seed, universe size, rate, tick and start always give the same events. Quotes are about 85%
of the trade-and-quote flow, as on the real tape.
"""

from __future__ import annotations

import math
import random
from typing import Any

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
# Where trades print, with weights: 4 is the FINRA trade reporting facility (off-exchange).
VENUES = (4, 12, 10, 11, 8, 15, 19, 21, 1, 7)
VENUE_WEIGHTS = (35, 15, 10, 9, 8, 6, 6, 4, 4, 3)
TRF_IDS = (201, 202, 203)
ODD_LOT = 37  # trade condition: odd lot
QUOTE_CONDITION = 1  # quote condition: regular two-sided


class SyntheticMarket:
    def __init__(self, *, seed: int, symbols: int, rate: int, tick_ms: int, start_ms: int) -> None:
        if tick_ms <= 0 or 1000 % tick_ms:
            raise ValueError("tick_ms must divide 1000")
        self.rng = random.Random(seed)
        self.instruments: list[Instrument] = build_universe(self.rng, symbols)
        self._by_sym = {inst.sym: inst for inst in self.instruments}
        self.tick_ms = tick_ms
        self.rate = rate
        self.now_ms = start_ms - start_ms % 1000
        self._cum_weights: list[float] = []
        acc = 0.0
        for inst in self.instruments:
            acc += inst.weight
            self._cum_weights.append(acc)
        effective = rate or FLATOUT_NOMINAL_RATE
        for inst in self.instruments:
            quotes_per_day = max(1.0, effective * inst.weight * (1 - TRADE_SHARE) * TRADING_DAY_S)
            inst.sigma = inst.daily_vol / math.sqrt(quotes_per_day)
            self._set_quote(inst)
        self._expected_per_tick = effective * tick_ms / 1000
        self._dirty: dict[str, dict[str, Instrument]] = {"A": {}, "AM": {}}  # symbols traded per open bar
        self._traded: list[Instrument] = []
        # symbol -> market time its pause ends; in order of that time, since every pause lasts HALT_MS
        self._paused: dict[str, int] = {}

    # -- the stream -------------------------------------------------------------------------------

    def tick(self) -> list[dict[str, Any]]:
        """The events of the next ``tick_ms`` of market time."""
        rng = self.rng
        t0 = self.now_ms
        t1 = t0 + self.tick_ms
        expected = self._expected_per_tick
        count = (
            max(0, round(rng.gauss(expected, math.sqrt(expected))))
            if expected >= 1
            else int(rng.random() < expected)
        )
        picks = rng.choices(self.instruments, cum_weights=self._cum_weights, k=count)
        offsets = sorted(rng.random() for _ in range(count))
        events: list[dict[str, Any]] = []
        paused = self._paused
        if paused and next(iter(paused.values())) <= t0:
            self._reopen(t0, events)
        for inst, offset in zip(picks, offsets, strict=True):
            if paused and inst.sym in paused:
                continue  # no trades and no quotes during a pause
            t = t0 + int(offset * self.tick_ms)
            if rng.random() < TRADE_SHARE:
                self._trade(inst, t, events)
            else:
                events.append(self._quote(inst, t))
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

    def _quote(self, inst: Instrument, t: int) -> dict[str, Any]:
        rng = self.rng
        inst.mid *= math.exp(rng.gauss(0.0, inst.sigma))
        self._set_quote(inst)
        inst.seq += 1
        return {
            "ev": "Q", "sym": inst.sym,
            "bx": rng.choice(VENUES[1:8]), "bp": inst.bid, "bs": 100 * rng.randint(1, 40),
            "ax": rng.choice(VENUES[1:8]), "ap": inst.ask, "as": 100 * rng.randint(1, 40),
            "c": QUOTE_CONDITION, "i": [], "t": t, "q": inst.seq, "z": inst.tape,
        }  # fmt: skip

    def _trade(self, inst: Instrument, t: int, events: list[dict[str, Any]]) -> None:
        rng = self.rng
        side = rng.random()
        if side < 0.42:
            price = inst.bid
        elif side < 0.84:
            price = inst.ask
        else:
            price = round((inst.bid + inst.ask) / 2, 4)
        size_draw = rng.random()
        if size_draw < 0.35:
            size, conditions = rng.randint(1, 99), [ODD_LOT]
        elif size_draw < 0.97:
            size, conditions = 100 * rng.choice((1, 1, 1, 2, 2, 3, 5, 10)), []
        else:
            size, conditions = 100 * rng.randint(10, 200), []
        venue = rng.choices(VENUES, weights=VENUE_WEIGHTS)[0]
        ref = inst.luld_ref
        if ref is None or abs(price / ref - 1.0) >= LULD_REFERENCE_MOVE:
            # published just ahead of the trade that moves the reference, so no trade prints outside
            # the bands in force
            events.append(self._luld(inst, price, t))
        inst.seq += 1
        inst.trade_id += 1
        trade: dict[str, Any] = {
            "ev": "T", "sym": inst.sym, "i": str(inst.trade_id), "x": venue,
            "p": price, "s": size, "t": t, "q": inst.seq, "z": inst.tape,
        }  # fmt: skip
        if conditions:
            trade["c"] = conditions
        if venue == 4:
            trade["trfi"] = rng.choice(TRF_IDS)
            trade["trft"] = t - rng.randint(0, 3)
        events.append(trade)
        self._account(inst, price, size)

    def _luld(self, inst: Instrument, ref: float, t: int) -> dict[str, Any]:
        inst.luld_ref = ref
        high, low = _band(inst, ref)
        inst.seq += 1
        return {
            "ev": "LULD", "T": inst.sym, "h": high, "l": low, "i": [], "z": inst.tape, "t": t, "q": inst.seq,
        }  # fmt: skip

    def _imbalances(self, t: int, events: list[dict[str, Any]]) -> None:
        rng = self.rng
        for inst in rng.sample(self.instruments, min(NOI_PER_MINUTE, len(self.instruments))):
            paired = 100 * rng.randint(10, 5000)
            inst.seq += 1
            events.append({
                "ev": "NOI", "T": inst.sym, "t": t, "at": 1600, "a": "C", "i": inst.seq,
                "x": inst.listing, "o": 100 * rng.randint(1, 2000), "p": paired,
                "b": round(inst.mid, 2 if inst.mid >= 1 else 4),
            })  # fmt: skip

    def _close_bars(self, kind: str, span_ms: int, end: int, events: list[dict[str, Any]]) -> None:
        dirty = self._dirty[kind]
        for inst in dirty.values():
            o, h, low, c, v, value, n = inst.bars.pop(kind)
            events.append({
                "ev": kind, "sym": inst.sym, "v": v, "av": inst.day_volume, "op": inst.day_open,
                "vw": round(value / v, 4), "o": o, "c": c, "h": h, "l": low,
                "a": round(inst.day_value / inst.day_volume, 4), "z": v // n, "s": end - span_ms, "e": end,
            })  # fmt: skip
        dirty.clear()

    # -- state ------------------------------------------------------------------------------------

    def _account(self, inst: Instrument, price: float, size: int) -> None:
        if inst.day_open is None:
            inst.day_open = price
        inst.day_high = max(inst.day_high, price)
        inst.day_low = min(inst.day_low, price)
        inst.day_volume += size
        inst.day_value += price * size
        for kind in ("A", "AM"):
            bar = inst.bars.get(kind)
            if bar is None:
                inst.bars[kind] = [price, price, price, price, size, price * size, 1]
                self._dirty[kind][inst.sym] = inst
            else:
                bar[1] = max(bar[1], price)
                bar[2] = min(bar[2], price)
                bar[3] = price
                bar[4] += size
                bar[5] += price * size
                bar[6] += 1

    def _set_quote(self, inst: Instrument) -> None:
        step = 0.01 if inst.mid >= 1 else 0.0001
        digits = 2 if step == 0.01 else 4
        half = max(step / 2, inst.mid * inst.half_spread_bps / 10_000)
        bid = math.floor((inst.mid - half) / step) * step
        ticks = max(1, round(2 * half / step))
        inst.bid = max(step, round(bid, digits))
        inst.ask = round(inst.bid + ticks * step, digits)

    def _jump(self, inst: Instrument, t: int, events: list[dict[str, Any]]) -> None:
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
        event = self._luld(inst, ref, t)  # the bands in force, unchanged
        event["i"] = [LULD_PAUSED]
        events.append(event)

    def _reopen(self, t: int, events: list[dict[str, Any]]) -> None:
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
            event = self._luld(inst, round(inst.mid, 2 if inst.mid >= 1 else 4), t)
            event["i"] = [LULD_REOPENING]
            events.append(event)


def _band(inst: Instrument, ref: float) -> tuple[float, float]:
    """The LULD band (upper, lower) around reference price ``ref``, rounded as published."""
    band = 0.20 if ref < 3.0 else (0.05 if inst.tier == 1 else 0.10)
    digits = 2 if ref >= 1 else 4
    return round(ref * (1 + band), digits), round(ref * (1 - band), digits)
