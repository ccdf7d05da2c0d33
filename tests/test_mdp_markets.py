"""Every market's events through the processors: the planner, the merge, and one service run per market
with a feed unlike stocks' (crypto, forex). The events are shaped as the ``massive`` client's models
read them (massive/websocket/models/models.py): crypto ``XT`` (pair, p, s, t, c, i, x, r), ``XQ`` (pair,
bp, bs, ap, as, t, x, r), ``XA``/``XAS`` (pair, o, c, h, l, v, vw, s, e, z); forex ``C`` (p, x, a, b, t),
``CA``/``CAS`` (pair, o, c, h, l, v, s, e); indices ``V`` (T, val, t) and ``A``/``AM`` (sym); options
``T``/``Q``/``AM`` (sym ``O:...``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest

from mdc.names import Names
from mdc.reader import Reader
from mdp.plan import ROUTES, STATEFUL, Planner
from mdp.service import STATS_CLASSES
from mdpipe.settings import MdpSettings, TradingDaySettings
from mdq import topology
from mdq.message import Batch

from .conftest import eventually
from .mdp_support import T0, mdc_settings, mdp_settings, running, send
from .test_mdp_merge import Processor, published

BTC, EUR, SPX, OPT = "BTC-USD", "EUR/USD", "I:SPX", "O:SPY251219C00650000"


def market_processor(market: str) -> Processor:
    p = Processor()
    p.planner = Planner(MdpSettings(massive_market=market, mdp_plugins=""))
    return p


def ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp() * 1000)


def xt(p: float, s: float, t: int, c: list[int] | None = None, i: str = "1") -> dict[str, Any]:
    return {"ev": "XT", "pair": BTC, "p": p, "s": s, "t": t, "c": c or [], "i": i, "x": 1, "r": t + 3}


def xq(bp: float, ap: float, t: int) -> dict[str, Any]:
    return {"ev": "XQ", "pair": BTC, "bp": bp, "bs": 0.5, "ap": ap, "as": 1.25, "t": t, "x": 1, "r": t + 3}


def cur_bar(ev: str, pair: str, s: int, o: float, h: float, low: float, c: float, v: float) -> dict[str, Any]:
    span = 60_000 if ev in ("XA", "CA", "AM") else 1000
    bar = {"ev": ev, "pair": pair, "o": o, "c": c, "h": h, "l": low, "v": v, "s": s, "e": s + span}
    if ev.startswith("X"):
        bar |= {"vw": round((o + c) / 2, 4), "z": 0}
    return bar


def fx(b: float, a: float, t: int, pair: str = EUR) -> dict[str, Any]:
    return {"ev": "C", "p": pair, "x": 48, "a": a, "b": b, "t": t}


def value(val: float, t: int, sym: str = SPX) -> dict[str, Any]:
    return {"ev": "V", "val": val, "T": sym, "t": t}


def updates(cmds: list[list[bytes]]) -> dict[str, Any]:
    """The data of each published update, by channel (the last one of a channel)."""
    return {u.channel: u.data for u in published(cmds)}


def set_value(cmds: list[list[bytes]], key: str) -> Any:
    (doc,) = [orjson.loads(c[2]) for c in cmds if c[0] == b"SET" and c[1] == key.encode()]
    return doc


NAMES = Names("md")


# -- the routing ------------------------------------------------------------------------------------------


def test_every_market_event_type_has_a_fold_and_a_class_whose_consumer_owns_it():
    stats_feeding = {"trades", "crypto_trades", "aggregates", "values"}
    for market, table in topology.EVENT_CLASSES.items():
        for ev, cls in table.items():
            fold = ROUTES.get(ev, "raw")
            if fold in stats_feeding:  # a symbol's day stats: one owner, the consumer of both classes
                assert cls in STATS_CLASSES, (market, ev, cls)
            assert (fold in STATEFUL) == (ev not in ("NOI", "FMV", "LV", "XL2")), (market, ev)
    assert topology.EVENT_CLASSES["indices"]["V"] == topology.TRADES


@pytest.mark.parametrize(
    ("market", "zone", "start"),
    [
        ("stocks", "America/New_York", "04:00"),
        ("options", "America/New_York", "04:00"),
        ("indices", "America/New_York", "04:00"),
        ("crypto", "UTC", "00:00"),
        ("forex", "America/New_York", "17:00"),
    ],
)
def test_the_trading_day_follows_the_market_unless_set(market, zone, start, monkeypatch):
    monkeypatch.setenv("MASSIVE_MARKET", market)
    day = TradingDaySettings()
    assert (day.mdp_timezone, day.mdp_day_start) == (zone, start)
    monkeypatch.setenv("MDP_DAY_START", "02:30")
    assert MdpSettings().mdp_day_start == "02:30" and MdpSettings().mdp_timezone == zone


# -- crypto -----------------------------------------------------------------------------------------------


def test_crypto_trades_quotes_and_bars_fold_as_stocks_do_with_fractional_sizes():
    p = market_processor("crypto")
    t = ms("2025-11-20T15:00:00+00:00")
    _, cmds = p.group(
        [
            xt(50_000.5, 0.1, t, c=[1], i="a1"),
            xt(50_010.0, 0.2, t + 5, c=[2], i="a2"),  # buy side (2): a last price all the same
            xq(50_009.5, 50_010.5, t + 6),
            cur_bar("XAS", BTC, t, 50_000.5, 50_010.0, 50_000.5, 50_010.0, 0.3),
            cur_bar("XA", BTC, t - 60_000, 49_990.0, 50_001.0, 49_980.0, 50_000.0, 12.75),
        ]
    )
    stats = p.book.symbols[BTC].stats
    assert stats["day"] == "2025-11-20"
    assert (stats["trades"], stats["trade_volume"], stats["agg_volume"]) == (
        2,
        0.3,
        0,
    )  # not 0.30000000000000004
    assert (stats["last"], stats["high"], stats["low"], stats["open"]) == (
        50_010.0,
        50_010.0,
        49_980.0,
        50_000.5,
    )
    data = updates(cmds)
    assert [tr["s"] for tr in data[f"trades.{BTC}"]] == [0.1, 0.2]
    assert data[f"quotes.{BTC}"] == {
        "t": t + 6, "q": 0, "bp": 50_009.5, "bs": 0.5, "bx": None, "ap": 50_010.5, "as": 1.25, "ax": None,
        "spread": 1.0, "mid": 50_010.0,
    }  # fmt: skip
    assert data[f"bars.{BTC}"]["v"] == 12.75  # the minute bar, published after the second bar
    assert set_value(cmds, NAMES.bar_second(BTC))["v"] == 0.3
    assert set_value(cmds, NAMES.trade(BTC)) == {
        "t": t + 5,
        "q": 0,
        "p": 50_010.0,
        "s": 0.2,
        "x": 1,
        "c": [2],
        "i": "a2",
    }
    assert data[f"stats.{BTC}"]["volume"] == 0.3
    # JSON as every client parses it: no NaN, no Infinity
    for c in cmds:
        if c[0] == b"SET" and c[1].startswith((b"md:stats:", b"md:trade:", b"md:quote:")):
            orjson.loads(c[2])
    _, cmds = p.group([xt(50_020.0, 0.1, t + 10, i="a3"), xt(50_021.0, 0.2, t + 11, i="a4")])
    assert p.book.symbols[BTC].stats["trade_volume"] == 0.6


def test_the_crypto_day_turns_at_utc_midnight():
    p = market_processor("crypto")
    before, after = ms("2025-11-20T23:59:59+00:00"), ms("2025-11-21T00:00:01+00:00")
    p.group([xt(100.0, 1.5, before)])
    assert p.book.symbols[BTC].stats["day"] == "2025-11-20"
    p.group([xt(101.0, 0.5, after)])
    stats = p.book.symbols[BTC].stats
    assert (stats["day"], stats["trade_volume"], stats["prev_close"], stats["open"]) == (
        "2025-11-21",
        0.5,
        100.0,
        101.0,
    )


# -- forex ------------------------------------------------------------------------------------------------


def test_forex_quotes_become_the_quote_document_without_sizes():
    p = market_processor("forex")
    t = ms("2025-11-20T12:00:00+00:00")
    _, cmds = p.group([fx(1.0850, 1.0852, t), fx(1.0851, 1.0853, t + 10), fx(1.0, 2.0, t - 5)])
    doc = {"t": t + 10, "q": 0, "bp": 1.0851, "bs": None, "bx": 48, "ap": 1.0853, "as": None, "ax": 48,
           "spread": 0.0002, "mid": 1.0852}  # fmt: skip
    assert set_value(cmds, NAMES.quote(EUR)) == doc
    assert updates(cmds) == {f"quotes.{EUR}": doc}
    _, cmds = p.group([fx(1.0, 2.0, t + 9)])  # older: nothing
    assert published(cmds) == []
    bad = {"ev": "C", "p": 1.5, "a": 1.0, "b": 1.0, "t": t}  # a number where the pair goes
    plan = p.planner.plan(Batch([fx(1.0, 2.0, t), bad], "quotes", 0, "mdl-1", 1, "mdq.quotes"))
    assert [reason for _, reason in plan.invalid] == ["symbol missing or not made of [A-Za-z0-9.:/_^-]{1,64}"]


def test_forex_bars_feed_the_stats_and_the_day_turns_at_17_new_york():
    p = market_processor("forex")
    before, after = ms("2025-11-20T16:58:00-05:00"), ms("2025-11-20T17:00:00-05:00")
    _, cmds = p.group([cur_bar("CA", EUR, before, 1.08, 1.09, 1.07, 1.085, 1200)])
    stats = p.book.symbols[EUR].stats
    assert (stats["day"], stats["last"], stats["high"], stats["low"]) == ("2025-11-19", 1.085, 1.09, 1.07)
    assert updates(cmds)[f"bars.{EUR}"]["c"] == 1.085
    p.group([cur_bar("CAS", EUR, after, 1.086, 1.087, 1.085, 1.0865, 3)])
    stats = p.book.symbols[EUR].stats
    assert (stats["day"], stats["prev_close"], stats["last"]) == ("2025-11-20", 1.085, 1.0865)


# -- indices ----------------------------------------------------------------------------------------------


def test_index_values_make_the_day_stats_like_trades_without_size():
    p = market_processor("indices")
    t = ms("2025-11-20T10:00:00-05:00")
    _, cmds = p.group(
        [value(5000.0, t), value(5010.0, t + 1000), value(4990.0, t + 2000), value(5005.0, t + 3000)]
    )
    stats = p.book.symbols[SPX].stats
    assert (stats["day"], stats["last"], stats["open"], stats["high"], stats["low"]) == (
        "2025-11-20",
        5005.0,
        5000.0,
        5010.0,
        4990.0,
    )
    assert (stats["volume"], stats["trades"], stats["change"], stats["change_from"]) == (0, 0, 5.0, "open")
    assert set(updates(cmds)) == {f"stats.{SPX}"}  # no trade document, no trades update: the stats hold it
    _, cmds = p.group([value(4000.0, t + 500)])  # an older value: the low, not the last
    stats = p.book.symbols[SPX].stats
    assert (stats["last"], stats["low"]) == (5005.0, 4000.0)
    # a bar of the index (``sym``) and its values merge into the same stats
    p.group([{"ev": "AM", "sym": SPX, "o": 5000.0, "c": 5020.0, "h": 5030.0, "l": 4999.0, "v": 0, "s": t,
              "e": t + 60_000}])  # fmt: skip
    stats = p.book.symbols[SPX].stats
    assert (stats["last"], stats["high"], stats["volume"]) == (5020.0, 5030.0, 0)
    plan = p.planner.plan(Batch([value(-1.0, t), {"ev": "V", "val": 1.0, "t": t}], "trades", 0, "m", 9, "q"))
    assert len(plan.invalid) == 2 and plan.events == {"values": 0}


# -- options ----------------------------------------------------------------------------------------------


def test_option_trades_quotes_and_bars_use_the_stock_folds():
    p = market_processor("options")
    t = T0
    _, cmds = p.group(
        [
            {"ev": "T", "sym": OPT, "x": 65, "i": "", "p": 12.5, "s": 3, "c": [209], "t": t, "q": 7},
            {"ev": "Q", "sym": OPT, "bx": 65, "ax": 65, "bp": 12.4, "ap": 12.6, "bs": 10, "as": 20,
             "t": t + 1, "q": 8},
            {"ev": "AM", "sym": OPT, "v": 3, "av": 40, "op": 12.0, "vw": 12.5, "o": 12.5, "c": 12.5,
             "h": 12.5, "l": 12.5, "a": 12.2, "z": 3, "s": t - 60_000, "e": t},
        ]
    )  # fmt: skip
    stats = p.book.symbols[OPT].stats
    assert (stats["last"], stats["volume"], stats["open"], stats["vwap"]) == (12.5, 40, 12.0, 12.2)
    assert set(updates(cmds)) == {f"trades.{OPT}", f"quotes.{OPT}", f"bars.{OPT}", f"stats.{OPT}"}


# -- through the service ----------------------------------------------------------------------------------


async def test_a_crypto_processor_against_rabbitmq_and_redis(mdq, redis):
    mdc, mdp = mdc_settings(), mdp_settings(massive_market="crypto")
    names = Names(mdc.mdc_prefix)
    t = ms("2025-11-20T23:59:00+00:00")
    async with running(mdq, mdc, mdp) as service:
        await send(mdq, "trades", [xt(50_000.0, 0.25, t), xt(50_100.0, 0.5, t + 10, c=[2])])
        await send(mdq, "quotes", [xq(50_090.0, 50_110.0, t + 11)])
        await send(mdq, "aggregates", [cur_bar("XA", BTC, t, 50_000.0, 50_200.0, 49_900.0, 50_100.0, 0.75)])
        await send(mdq, "trades", [xt(50_300.0, 0.125, t + 61_000)])  # 00:00:01 UTC: a new day
        await eventually(lambda: service.events >= 5)
        reader = Reader(redis, names)
        stats = await reader.stats(BTC)
        assert (stats["day"], stats["last"], stats["volume"], stats["prev_close"]) == (
            "2025-11-21",
            50_300.0,
            0.125,
            50_100.0,
        )
        assert (await reader.quote(BTC))["mid"] == 50_100.0
        snap = await reader.snapshot(f"trades.{BTC}")
        assert snap.data["last"]["s"] == 0.125
        assert [b["v"] for b in (await reader.snapshot(f"bars.{BTC}")).data["minute"]] == [0.75]


async def test_a_forex_processor_against_rabbitmq_and_redis(mdq, redis):
    mdc, mdp = mdc_settings(), mdp_settings(massive_market="forex")
    names = Names(mdc.mdc_prefix)
    t = ms("2025-11-20T16:59:00-05:00")
    async with running(mdq, mdc, mdp) as service:
        await send(mdq, "quotes", [fx(1.0850, 1.0852, t), fx(1.0849, 1.0851, t + 5)])
        await send(mdq, "aggregates", [cur_bar("CA", EUR, t, 1.085, 1.0855, 1.0848, 1.0851, 250)])
        await eventually(lambda: service.events >= 3)
        reader = Reader(redis, names)
        quote = await reader.quote(EUR)
        assert (quote["bp"], quote["ap"], quote["bs"], quote["mid"]) == (1.0849, 1.0851, None, 1.085)
        stats = await reader.stats(EUR)
        # 16:59 New York: the forex day that started at 17:00 the day before (named by its start)
        assert (stats["day"], stats["last"], stats["high"], stats["agg_volume"]) == (
            "2025-11-19",
            1.0851,
            1.0855,
            0,
        )
