"""Every market path of the emulator against the real ``massive`` client: crypto, forex, indices, options.

For each market the emulator runs with ``SIM_MARKET=<market>`` and the client, in raw mode as the
listener runs it, subscribes to every type of that market. Each event received must parse with the
client's own parser for that market (nothing dropped as unknown), carry exactly the fields and types
of the vendor's model, and name a symbol in the market's form. Then the hours (crypto open on a
Sunday, forex closed on a Saturday, index values only in the regular session), a replay of a
non-stocks recording, the REST API not breaking, and the pure parts of ``sim.markets`` fuzzed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from massive.websocket.models import (
    CryptoQuote,
    CryptoTrade,
    CurrencyAgg,
    EquityAgg,
    EquityQuote,
    EquityTrade,
    ForexQuote,
    IndexValue,
    parse,
)
from massive.websocket.models.common import Market
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from mdpipe import massive
from mdpipe.settings import parse_start
from sim.markets import EVENT_TYPES, AssetMarket, black_scholes, market_open, option_symbol, third_fridays
from sim.recording import RecordingWriter
from tests.conftest import Collector, client_for, http

FRIDAY = "2026-11-20T15:00:00Z"  # 10:00 New York, a Friday: every market open
SUNDAY = "2026-11-22T15:00:00Z"  # 10:00 New York, a Sunday
SATURDAY = "2026-11-21T15:00:00Z"

INT, NUM, STR = (int,), (int, float), (str,)
INTS = "ints"  # a list of ints
# market -> event type -> (model class, {field: types}): every field the emulator sends, and its type
SHAPES: dict[str, dict[str, tuple[type, dict[str, Any]]]] = {
    "crypto": {
        "XT": (
            CryptoTrade,
            {"pair": STR, "x": INT, "i": STR, "p": NUM, "s": NUM, "c": INTS, "t": INT, "r": INT},
        ),
        "XQ": (
            CryptoQuote,
            {"pair": STR, "bp": NUM, "bs": NUM, "ap": NUM, "as": NUM, "t": INT, "x": INT, "r": INT},
        ),
        "XA": (
            CurrencyAgg,
            {
                "pair": STR,
                "v": NUM,
                "vw": NUM,
                "z": NUM,
                "o": NUM,
                "c": NUM,
                "h": NUM,
                "l": NUM,
                "s": INT,
                "e": INT,
            },
        ),
    },
    "forex": {
        "C": (ForexQuote, {"p": STR, "x": INT, "a": NUM, "b": NUM, "t": INT}),
        "CA": (
            CurrencyAgg,
            {"pair": STR, "o": NUM, "c": NUM, "h": NUM, "l": NUM, "v": NUM, "s": INT, "e": INT},
        ),
    },
    "indices": {
        "V": (IndexValue, {"T": STR, "val": NUM, "t": INT}),
        "A": (EquityAgg, {"sym": STR, "op": NUM, "o": NUM, "c": NUM, "h": NUM, "l": NUM, "s": INT, "e": INT}),
    },
    "options": {
        "T": (EquityTrade, {"sym": STR, "x": INT, "p": NUM, "s": INT, "c": INTS, "t": INT, "q": INT}),
        "Q": (
            EquityQuote,
            {
                "sym": STR,
                "bx": INT,
                "ax": INT,
                "bp": NUM,
                "ap": NUM,
                "bs": INT,
                "as": INT,
                "t": INT,
                "q": INT,
            },
        ),
        "A": (
            EquityAgg,
            {
                "sym": STR,
                "v": INT,
                "av": INT,
                "op": NUM,
                "vw": NUM,
                "o": NUM,
                "c": NUM,
                "h": NUM,
                "l": NUM,
                "a": NUM,
                "z": INT,
                "s": INT,
                "e": INT,
            },
        ),
    },
}
SHAPES["crypto"]["XAS"] = SHAPES["crypto"]["XA"]
SHAPES["forex"]["CAS"] = SHAPES["forex"]["CA"]
SHAPES["indices"]["AM"] = SHAPES["indices"]["A"]
SHAPES["options"]["AM"] = SHAPES["options"]["A"]
SYMBOL = {
    "crypto": re.compile(r"X:[A-Z]+-[A-Z]+"),
    "forex": re.compile(r"C:[A-Z]{3}-[A-Z]{3}"),
    "indices": re.compile(r"I:[A-Z]+"),
    "options": re.compile(r"O:[A-Z]+\d{6}[CP]\d{8}"),
}
SYMBOL_FIELD = {
    "XT": "pair",
    "XQ": "pair",
    "XA": "pair",
    "XAS": "pair",
    "C": "p",
    "CA": "pair",
    "CAS": "pair",
    "V": "T",
}


def types_seen(want: set[str]):
    """A predicate for ``Collector.wait_for``: every type of ``want`` received (frames read once each)."""
    seen: set[str] = set()
    done = [0]

    def predicate(frames: list[Any]) -> bool:
        for frame in frames[done[0] :]:
            seen.update(e["ev"] for e in orjson.loads(frame))
        done[0] = len(frames)
        return want <= seen

    return predicate


def data_events(frames: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for frame in frames:
        out += [e for e in orjson.loads(frame) if e.get("ev") != "status"]
    return out


def check_event(market: str, event: dict[str, Any]) -> None:
    model, fields = SHAPES[market][event["ev"]]
    assert set(event) == {"ev", *fields}, event
    for name, types in fields.items():
        value = event[name]
        if types == INTS:
            assert isinstance(value, list) and all(type(v) is int for v in value), event
        else:
            assert type(value) in types, (name, event)
    symbol = event[SYMBOL_FIELD.get(event["ev"], "sym")]
    assert SYMBOL[market].fullmatch(symbol), event
    assert massive.event_symbol(event) == symbol
    parsed = model.from_dict(event)
    assert all(v is not None for k, v in vars(parsed).items() if k in _mapped(model, fields)), parsed


def _mapped(model: type, fields: dict[str, Any]) -> set[str]:
    """The model's attributes filled from ``fields`` (those a full event sets)."""
    full = model.from_dict({"ev": "x", **{name: 1 for name in fields}})
    return {k for k, v in vars(full).items() if v is not None}


@pytest.mark.parametrize("market", ["crypto", "forex", "indices", "options"])
async def test_each_market_serves_its_events_to_the_real_client(make_emulator, market, caplog):
    emulator = await make_emulator(sim_market=market, sim_start=FRIDAY, sim_rate=200, sim_speed=60)
    assert emulator.market == market
    types = sorted(EVENT_TYPES[market])
    collector = Collector(client_for(emulator, [f"{ev}.*" for ev in types]))
    try:
        await collector.wait_for(types_seen(set(types)), timeout=20)
    finally:
        await collector.close()
    events = data_events(collector.received)
    for event in events:
        check_event(market, event)
    with caplog.at_level(logging.WARNING):
        parsed = parse(events, logging.getLogger("massive-parse"), Market(market))
    assert len(parsed) == len(events)  # nothing dropped as unknown by the client's own parser
    assert not [r for r in caplog.records if r.name == "massive-parse"]


async def test_a_symbol_subscription_filters_a_crypto_pair(make_emulator):
    emulator = await make_emulator(sim_market="crypto", sim_start=SUNDAY, sim_rate=200, sim_speed=60)
    collector = Collector(client_for(emulator, ["XQ.X:ETH-USD", "XT.*"]))
    try:
        await collector.wait_for(types_seen({"XQ", "XT"}), timeout=20)
    finally:
        await collector.close()
    events = data_events(collector.received)
    assert {e["pair"] for e in events if e["ev"] == "XQ"} == {"X:ETH-USD"}
    assert len({e["pair"] for e in events if e["ev"] == "XT"}) > 1


async def test_the_stocks_path_is_refused_by_a_crypto_emulator(make_emulator):
    emulator = await make_emulator(sim_market="crypto")
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(f"ws://{emulator.feed}/stocks", open_timeout=3):
            pass
    assert info.value.response.status_code == 404
    assert "market not served by this emulator: /stocks" in info.value.response.body.decode()


async def test_rest_does_not_break_on_another_market(make_emulator):
    emulator = await make_emulator(sim_market="forex", sim_start=FRIDAY)
    await asyncio.sleep(0.2)
    for target in ("/v2/snapshot/locale/us/markets/stocks/tickers", "/v1/marketstatus/now",
                   "/v2/snapshot/locale/global/markets/forex/tickers"):  # fmt: skip
        status, _, _ = await http(emulator.http.port, "GET", f"{target}?apiKey=test-key")
        assert status < 500, target


# -- hours ------------------------------------------------------------------------------------------


def generated(market: str, start: str, ticks: int = 200) -> list[dict[str, Any]]:
    m = AssetMarket(market, seed=3, symbols=100, rate=2000, tick_ms=50, start_ms=parse_start(start))
    return [e for _ in range(ticks) for e in m.tick()]


def test_crypto_trades_on_a_sunday_and_forex_rests_on_a_saturday():
    assert {"XT", "XQ", "XAS"} <= {e["ev"] for e in generated("crypto", SUNDAY)}
    assert generated("forex", SATURDAY) == []
    assert {"C", "CAS"} <= {e["ev"] for e in generated("forex", "2026-11-22T22:00:00Z")}  # Sunday 17:00 NY
    assert generated("forex", "2026-11-20T22:00:00Z") == []  # Friday 17:00 New York: closed
    assert generated("indices", "2026-11-20T13:00:00Z") == []  # 08:00 New York: before the open
    assert {"V", "A"} <= {e["ev"] for e in generated("indices", FRIDAY)}


async def test_forex_emulator_on_a_saturday_acknowledges_but_sends_no_quotes(make_emulator):
    emulator = await make_emulator(sim_market="forex", sim_start=SATURDAY, sim_rate=200, sim_speed=60)
    collector = Collector(client_for(emulator, ["C.*", "CA.*", "CAS.*"]))
    try:
        await collector.wait_for(lambda got: len(got) >= 1, timeout=10)  # the acks
        await asyncio.sleep(1.0)
    finally:
        await collector.close()
    assert data_events(collector.received) == []


# -- replay of a recording of another market ---------------------------------------------------------


async def test_replay_of_a_crypto_recording_serves_crypto(make_emulator, tmp_path):
    path = tmp_path / "crypto.mdrec"
    events = generated("crypto", SUNDAY, ticks=40)
    writer = RecordingWriter(
        path, {"market": "crypto", "feed": "x", "subscriptions": "XT.*", "started_ns": 1}
    )
    writer.write(1, orjson.dumps([{"ev": "status", "status": "connected", "message": "Connected"}]).decode())
    for i in range(0, len(events), 50):
        writer.write(1_000_000 * (i + 2), orjson.dumps(events[i : i + 50]).decode())
    writer.close()
    emulator = await make_emulator(sim_replay=str(path), sim_replay_speed=0)
    assert emulator.market == "crypto"
    collector = Collector(client_for(emulator, ["XT.*", "XQ.*", "XA.*", "XAS.*"]))
    try:
        await collector.wait_for(lambda got: len(data_events(got)) >= len(events), timeout=10)
    finally:
        await collector.close()
    got = data_events(collector.received)
    assert got[: len(events)] == events
    for event in got:
        check_event("crypto", event)


# -- pure functions --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    spot=st.floats(1.0, 10_000.0),
    moneyness=st.floats(0.5, 2.0),
    years=st.floats(1e-4, 3.0),
    vol=st.floats(0.05, 2.0),
)
def test_black_scholes_is_within_its_bounds_and_keeps_parity(spot, moneyness, years, vol):
    strike = spot * moneyness
    call = black_scholes(spot, strike, years, vol, True)
    put = black_scholes(spot, strike, years, vol, False)
    discount = strike * __import__("math").exp(-0.04 * years)
    tol = 1e-7 * (spot + strike)
    assert max(0.0, spot - discount) - tol <= call <= spot + tol
    assert max(0.0, discount - spot) - tol <= put <= discount + tol
    assert abs((call - put) - (spot - discount)) <= tol


@settings(max_examples=100, deadline=None)
@given(st.dates(min_value=__import__("datetime").date(2000, 1, 1)), st.integers(1, 6))
def test_expiries_are_third_fridays_after_the_date(date, count):
    fridays = third_fridays(date, count)
    assert len(fridays) == count and fridays == sorted(set(fridays))
    assert all(f > date and f.weekday() == 4 and 15 <= f.day <= 21 for f in fridays)
    sym = option_symbol("SPY", fridays[0], False, 650.5)
    assert SYMBOL["options"].fullmatch(sym) and sym.endswith("P00650500")


@settings(max_examples=300, deadline=None)
@given(st.integers(parse_start("2026-01-01T00:00:00Z"), parse_start("2027-12-31T00:00:00Z")))
def test_hours_of_each_market(t):
    import datetime as dt

    from sim.calendar import eastern, session

    local = eastern(t)
    assert market_open("crypto", t) and market_open("options", t)
    assert market_open("indices", t) == (session(t) == "regular")
    weekday, time = local.weekday(), local.time()
    closed = weekday == 5 or (weekday == 6 and time < dt.time(17)) or (weekday == 4 and time >= dt.time(17))
    assert market_open("forex", t) == (not closed)


@settings(max_examples=25, deadline=None)
@given(
    market=st.sampled_from(["crypto", "forex", "indices", "options"]),
    seed=st.integers(0, 2**32),
    symbols=st.integers(1, 700),
    start=st.integers(parse_start("2026-01-01T00:00:00Z"), parse_start("2027-12-31T00:00:00Z")),
)
def test_generated_events_have_the_vendor_shape_and_bars_agree(market, seed, symbols, start):
    m = AssetMarket(market, seed=seed, symbols=symbols, rate=3000, tick_ms=100, start_ms=start)
    events = [e for _ in range(25) for e in m.tick()]
    again = AssetMarket(market, seed=seed, symbols=symbols, rate=3000, tick_ms=100, start_ms=start)
    assert [e for _ in range(25) for e in again.tick()] == events  # deterministic
    for event in events:
        check_event(market, event)
    for event in events:
        if "h" in event:
            assert event["l"] <= min(event["o"], event["c"]) <= max(event["o"], event["c"]) <= event["h"]
            assert event["e"] - event["s"] in (1000, 60_000)
        for bid, ask in (("bp", "ap"), ("b", "a")):
            if bid in event:
                assert 0 < event[bid] < event[ask]
    assert len(parse(events, logging.getLogger("x"), Market(market))) == len(events)
