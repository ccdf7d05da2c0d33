"""The synthetic market without I/O: determinism, mix, and coherence between trades, quotes and bars."""

from __future__ import annotations

import asyncio
import collections
import math
import random

import orjson
import pytest

from sim.market import HALT_MS, AliasTable, SyntheticMarket, quote_range, quote_steps
from sim.sources import SyntheticPaced
from sim.universe import FAMILIAR

START_MS = 1_795_185_000_000  # 2026-11-20T14:30:00Z


def run(seconds: int = 65, **kw) -> tuple[SyntheticMarket, list[dict]]:
    params = {"seed": 7, "symbols": 300, "rate": 4000, "tick_ms": 50, "start_ms": START_MS, **kw}
    market = SyntheticMarket(**params)
    events: list[dict] = []
    for _ in range(seconds * 1000 // params["tick_ms"]):
        events += market.tick()
    return market, events


@pytest.fixture(scope="module")
def stream() -> list[dict]:
    return run()[1]


def test_same_seed_same_events():
    assert run(5)[1] == run(5)[1]


def test_other_seed_other_events():
    assert run(5)[1] != run(5, seed=8)[1]


def test_universe_size_and_familiar_head():
    market, _ = run(0, symbols=2000)
    names = [i.sym for i in market.instruments]
    assert len(names) == len(set(names)) == 2000
    assert names[: len(FAMILIAR)] == [f[0] for f in FAMILIAR]


def test_quotes_dominate_and_rate_is_kept(stream):
    counts = collections.Counter(e["ev"] for e in stream)
    trades_quotes = counts["T"] + counts["Q"]
    assert trades_quotes == pytest.approx(4000 * 65, rel=0.05)
    assert 0.75 < counts["Q"] / trades_quotes < 0.95
    assert {"A", "AM", "LULD", "NOI"} <= counts.keys()


def test_events_in_time_order_within_ticks_and_fields_exact(stream):
    fields = {
        "T": {"ev", "sym", "i", "x", "p", "s", "t", "q", "z"},
        "Q": {"ev", "sym", "bx", "bp", "bs", "ax", "ap", "as", "c", "i", "t", "q", "z"},
        "A": {"ev", "sym", "v", "av", "op", "vw", "o", "c", "h", "l", "a", "z", "s", "e"},
        "LULD": {"ev", "T", "h", "l", "i", "z", "t", "q"},
        "NOI": {"ev", "T", "t", "at", "a", "i", "x", "o", "p", "b"},
    }
    fields["AM"] = fields["A"]
    optional = {"T": {"c", "trfi", "trft"}}
    for event in stream:
        required = fields[event["ev"]]
        assert required <= event.keys() <= required | optional.get(event["ev"], set()), event
    last = -1
    for event in stream:
        t = event.get("t", event.get("e"))
        assert t >= last
        last = t


def test_fields_in_the_vendors_order(stream):
    order = {
        "T": ["ev", "sym", "i", "x", "p", "s", "t", "q", "z", "c", "trfi", "trft"],
        "Q": ["ev", "sym", "bx", "bp", "bs", "ax", "ap", "as", "c", "i", "t", "q", "z"],
        "A": ["ev", "sym", "v", "av", "op", "vw", "o", "c", "h", "l", "a", "z", "s", "e"],
        "LULD": ["ev", "T", "h", "l", "i", "z", "t", "q"],
        "NOI": ["ev", "T", "t", "at", "a", "i", "x", "o", "p", "b"],
    }
    order["AM"] = order["A"]
    for event in stream:
        keys = list(event)
        assert keys == [k for k in order[event["ev"]] if k in event], event


def test_tick_is_tick_json_decoded():
    params = {"seed": 3, "symbols": 50, "rate": 2000, "tick_ms": 100, "start_ms": START_MS}
    texts, dicts = SyntheticMarket(**params), SyntheticMarket(**params)
    for _ in range(20):
        assert [orjson.loads(text) for text in texts.tick_json()] == dicts.tick()


def test_quote_range_keeps_the_quote_of_every_mid_in_it():
    """The market skips computing a quote while the mid stays in its range: the range must never hold a mid
    that gives another quote."""
    rng = random.Random(5)
    for _ in range(20_000):
        bps = rng.choice((rng.uniform(0.05, 1.0), rng.uniform(3.0, 40.0)))
        mid = rng.choice((rng.uniform(0.0001, 1.2), rng.uniform(0.99, 1.01), rng.uniform(0.5, 1000)))
        quote = quote_steps(mid, bps)
        low, high = quote_range(*quote, bps)
        assert low <= mid < high or min(abs(mid - low), abs(mid - high)) <= 1e-8 * mid
        for inside in [low, *(rng.uniform(low, high) for _ in range(4))]:
            if low < high:
                assert quote_steps(inside, bps) == quote, (inside, bps)


@pytest.mark.parametrize(("items", "bits"), [(3000, 12), (10, 4), (5, 3), (8, 3), (1, 1)])
def test_alias_table_picks_with_the_weights(items, bits):
    weights = [1 / (rank + 1) ** 1.1 for rank in range(items)]
    table = AliasTable(list(range(items)), weights, bits)
    columns = 1 << bits
    chance = collections.Counter()
    for c in range(columns):
        chance[table.own[c]] += table.odds[c] / columns
        chance[table.alias[c]] += (1 - table.odds[c]) / columns
    assert set(chance) <= set(range(items))
    assert [chance[i] for i in range(items)] == pytest.approx([w / sum(weights) for w in weights], abs=1e-12)


async def test_paced_source_puts_ticks_on_the_tape_when_due():
    """It generates ticks ahead of time; clients must still get each tick at its due time, not before."""
    market = SyntheticMarket(seed=1, symbols=100, rate=20_000, tick_ms=10, start_ms=START_MS)
    source = SyntheticPaced(market, capacity=4096, frame_events=100, send_ts=False)
    await source.start()
    try:
        await asyncio.sleep(0.3)
        sent = source.events
    finally:
        await source.stop()
    assert 0.3 * 20_000 * 0.7 < sent < 0.3 * 20_000 * 1.4
    assert market.now_ms - START_MS >= 500  # generated ahead


def test_trades_print_inside_the_quote_in_force(stream):
    quote: dict[str, tuple[float, float]] = {}
    checked = 0
    for event in stream:
        if event["ev"] == "Q":
            assert event["bp"] < event["ap"]
            quote[event["sym"]] = (event["bp"], event["ap"])
        elif event["ev"] == "T" and event["sym"] in quote:
            bid, ask = quote[event["sym"]]
            assert bid - 1e-9 <= event["p"] <= ask + 1e-9
            checked += 1
    assert checked > 1000


def test_per_symbol_sequence_increases(stream):
    last: dict[str, int] = {}
    for event in stream:
        if "q" in event:
            sym = event.get("sym") or event["T"]
            assert event["q"] > last.get(sym, 0)
            last[sym] = event["q"]


@pytest.mark.parametrize(("kind", "span"), [("A", 1000), ("AM", 60_000)])
def test_bars_agree_with_the_trades_emitted(stream, kind, span):
    bars_checked = 0
    trades: dict[tuple[str, int], list[dict]] = collections.defaultdict(list)
    day: dict[str, list] = {}
    for event in stream:
        if event["ev"] == "T":
            trades[(event["sym"], event["t"] - event["t"] % span)].append(event)
            d = day.setdefault(event["sym"], [event["p"], 0, 0.0])
            d[1] += event["s"]
            d[2] += event["p"] * event["s"]
        elif event["ev"] == kind:
            if event["s"] < START_MS:  # the first minute bar is partial: the market opened mid-minute
                continue
            bar = trades.pop((event["sym"], event["s"]))
            assert event["e"] - event["s"] == span
            assert event["v"] == sum(t["s"] for t in bar)
            assert event["o"] == bar[0]["p"] and event["c"] == bar[-1]["p"]
            assert event["h"] == max(t["p"] for t in bar) and event["l"] == min(t["p"] for t in bar)
            assert event["vw"] == pytest.approx(sum(t["p"] * t["s"] for t in bar) / event["v"], abs=1e-4)
            assert event["z"] == event["v"] // len(bar)
            day_open, day_volume, day_value = day[event["sym"]]
            assert (event["op"], event["av"]) == (day_open, day_volume)
            assert event["a"] == pytest.approx(day_value / day_volume, abs=1e-4)
            bars_checked += 1
    assert bars_checked > (100 if kind == "A" else 20)


def test_luld_bands_bracket_the_price(stream):
    bands: dict[str, tuple[float, float]] = {}
    first_trade_has_band = 0
    for event in stream:
        if event["ev"] == "LULD":
            assert event["l"] < event["h"]
            bands[event["T"]] = (event["l"], event["h"])
        elif event["ev"] == "T":
            low, high = bands[event["sym"]]  # a symbol's first trade publishes its bands
            assert low <= event["p"] <= high
            first_trade_has_band += 1
    assert first_trade_has_band > 1000


def test_prices_stay_positive_and_ticked(stream):
    for event in stream:
        if event["ev"] == "Q":
            for price in (event["bp"], event["ap"]):
                assert price > 0
                digits = 2 if price >= 1 else 4
                assert math.isclose(price, round(price, digits))


def test_tick_must_divide_a_second():
    with pytest.raises(ValueError, match="divide"):
        SyntheticMarket(seed=1, symbols=10, rate=10, tick_ms=7, start_ms=START_MS)


def test_trickle_rate_still_produces_events():
    _, events = run(30, rate=2, symbols=20)
    assert 20 <= sum(e["ev"] in ("T", "Q") for e in events) <= 120


def check_pauses(events: list[dict]) -> list[tuple[str, int, int | None]]:
    """Check the LULD pauses in ``events``; return them as (symbol, paused at, reopened at or None)."""
    bands: dict[str, tuple[float, float]] = {}
    paused: dict[str, int] = {}
    pauses: list[tuple[str, int, int | None]] = []
    reopened: set[str] = set()  # symbols reopened and not quoted since
    last = -1
    for event in events:
        ev = event["ev"]
        assert event.get("t", event.get("e")) >= last  # pauses and reopenings keep the time order
        last = event.get("t", event.get("e"))
        sym = event.get("sym") or event["T"]
        if ev == "LULD":
            if event["i"] == [15]:
                assert sym not in paused
                assert (event["l"], event["h"]) == bands[sym]  # the bands in force, unchanged
                paused[sym] = event["t"]
            elif event["i"] == [16]:
                assert event["t"] == paused.pop(sym) + HALT_MS
                pauses.append((sym, event["t"] - HALT_MS, event["t"]))
                reopened.add(sym)
            else:
                assert event["i"] == [] and sym not in paused
            bands[sym] = (event["l"], event["h"])
        elif sym in paused:
            # no trades or quotes while paused, so no bars that start during the pause (a bar that
            # started before it and closes during it holds the trades printed before it)
            assert ev not in ("T", "Q"), event
            assert ev not in ("A", "AM") or event["s"] < paused[sym], event
        elif ev == "T":
            low, high = bands[sym]
            assert low <= event["p"] <= high
        elif ev == "Q" and sym in reopened:  # the first quote after a reopening is inside the new bands
            reopened.discard(sym)
            low, high = bands[sym]
            assert low <= event["bp"] < event["ap"] <= high
    return pauses + [(sym, t, None) for sym, t in paused.items()]


def test_a_jump_beyond_the_band_pauses_the_symbol_then_reopens_it():
    market = SyntheticMarket(seed=11, symbols=10, rate=50, tick_ms=100, start_ms=START_MS)
    events: list[dict] = []
    for _ in range(200):  # 20 s: the small names have traded, so they have bands
        events += market.tick()
    inst = next(i for i in market.instruments[2:] if i.luld_ref is not None and i.sym not in market._paused)
    low, high = next((e["l"], e["h"]) for e in reversed(events) if e["ev"] == "LULD" and e["T"] == inst.sym)
    inst.mid = high * 1.5  # far enough that even a 20% jump down leaves it above the band
    paused_at = market.now_ms
    jumped: list[str] = []  # the market writes its events as JSON text
    market._jump(inst, paused_at, jumped)
    events += [orjson.loads(text) for text in jumped]
    halt = events[-1]
    assert [halt[k] for k in ("ev", "T", "i", "t", "h", "l")] == [
        "LULD",
        inst.sym,
        [15],
        paused_at,
        high,
        low,
    ]
    during: list[dict] = []
    for _ in range(HALT_MS // market.tick_ms):
        during += market.tick()
    assert market.now_ms == paused_at + HALT_MS
    assert not [e for e in during if e.get("sym") == inst.sym and e["ev"] in ("T", "Q")]
    # the only bar of the pause can be the one of the minute it started in, which closes during it
    bars = [e["s"] for e in during if e.get("sym") == inst.sym and e["ev"] in ("A", "AM")]
    assert bars in ([], [paused_at - paused_at % 60_000])
    assert sum(e["ev"] == "T" for e in during) > 1000  # the others kept trading
    after: list[dict] = []
    for _ in range(300):
        after += market.tick()
    reopen = after[0]  # first event of the first tick after the pause
    assert [reopen[k] for k in ("ev", "T", "i", "t")] == ["LULD", inst.sym, [16], paused_at + HALT_MS]
    assert reopen["l"] > high  # new bands, around the new price
    trades = [e for e in after if e["ev"] == "T" and e["sym"] == inst.sym]
    assert len(trades) >= 3
    assert reopen["l"] <= trades[0]["p"] <= reopen["h"]
    assert (inst.sym, paused_at, paused_at + HALT_MS) in check_pauses(events + during + after)


def test_pauses_happen_on_their_own_and_are_deterministic():
    def pauses() -> list[tuple[str, int, int | None]]:
        _, events = run(30 * 60, seed=1, symbols=20, rate=20, tick_ms=250)
        return check_pauses(events)

    found = pauses()
    assert [p for p in found if p[2] is not None]  # at least one pause and its reopening
    assert pauses() == found
