"""Chart history, the pure parts (``mdc.history``, ``mdc.tradingday``), and the ``bars.SYM`` snapshot that
merges it with the live minute bars (``mdc.reader``, real Redis)."""

from __future__ import annotations

import datetime as dt

import orjson
from hypothesis import given
from hypothesis import strategies as st

from mdc.history import MINUTE_MS, fetch_range, history_members, mdc_bar, merge_minutes
from mdc.names import Names
from mdc.reader import Reader
from mdc.tradingday import TradingDay

from .mdp_support import mdc_settings

NY = TradingDay("America/New_York", "04:00")


def ms(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


def vendor(t: int, c: float = 10.0, v: float = 100, **kw: object) -> dict[str, object]:
    return {"o": c, "h": c + 0.5, "l": c - 0.5, "c": c, "v": v, "vw": c, "n": 3, "t": t, **kw}


def live(t: int, c: float = 20.0) -> dict[str, object]:
    return {"t": t, "e": t + MINUTE_MS, "o": c, "h": c, "l": c, "c": c, "v": 5, "vw": c}


# -- the trading day and the range asked for ------------------------------------------------------------


def test_previous_trading_day_skips_the_weekend():
    assert TradingDay.previous("2026-11-20") == "2026-11-19"  # Friday -> Thursday
    assert TradingDay.previous("2026-11-23") == "2026-11-20"  # Monday -> Friday
    assert TradingDay.previous("2026-11-22") == "2026-11-20"  # Sunday -> Friday
    assert TradingDay.previous("2026-11-21") == "2026-11-20"  # Saturday -> Friday


def test_fetch_range_is_the_previous_days_start_to_the_days_end_in_the_days_own_zone():
    assert fetch_range(NY, "2026-11-20") == (
        ms("2026-11-19T04:00:00-05:00"),
        ms("2026-11-21T04:00:00-05:00") - 1,
    )
    # a Monday asks from Friday's 04:00
    assert fetch_range(NY, "2026-11-23")[0] == ms("2026-11-20T04:00:00-05:00")
    # across the end of daylight saving time (Sunday 2026-11-01): Friday is in EDT, Monday in EST
    start, end = fetch_range(NY, "2026-11-02")
    assert start == ms("2026-10-30T04:00:00-04:00")
    assert end == ms("2026-11-03T04:00:00-05:00") - 1
    london = TradingDay("Europe/London", "08:00")
    assert fetch_range(london, "2026-11-20")[0] == ms("2026-11-19T08:00:00+00:00")


# -- the vendor's bar as an MDC minute bar --------------------------------------------------------------


def test_a_vendor_bar_becomes_the_live_bars_json():
    t = ms("2026-11-20T09:30:00-05:00")
    bar = mdc_bar({"v": 4200.0, "vw": 10.1, "o": 10, "c": 10.2, "h": 10.5, "l": 9.9, "t": t, "n": 17})
    assert bar == {"t": t, "e": t + 60_000, "o": 10, "h": 10.5, "l": 9.9, "c": 10.2, "v": 4200, "vw": 10.1}
    # the same key order and number forms as mdp.aggregates writes (so the JSON is the same bytes)
    assert orjson.dumps(bar).startswith(
        b'{"t":%d,"e":%d,"o":10,"h":10.5,"l":9.9,"c":10.2,"v":4200,' % (t, t + 60_000)
    )
    assert type(bar["v"]) is int
    assert mdc_bar(vendor(t, v=0.5))["v"] == 0.5  # a fractional volume (crypto) stays
    assert mdc_bar({**vendor(t), "vw": None})["vw"] is None
    assert mdc_bar({k: v for k, v in vendor(t).items() if k != "vw"})["vw"] is None


def test_what_is_not_a_bar_is_dropped():
    t = ms("2026-11-20T09:30:00-05:00")
    for bad in (
        None,
        [],
        {**vendor(t), "t": "x"},
        {**vendor(t), "t": 0},
        {**vendor(t), "t": True},
        {**vendor(t), "o": None},
        {**vendor(t), "c": float("nan")},
        {**vendor(t), "h": 1.0},  # high below the close
        {**vendor(t), "l": 11.0},  # low above the open
        {**vendor(t), "v": -1},
        {**vendor(t), "v": "many"},
        {**vendor(t), "o": 0, "l": 0},
    ):
        assert mdc_bar(bad) is None, bad


def test_history_members_keep_the_range_one_bar_per_start_and_the_newest():
    t0 = ms("2026-11-19T04:00:00-05:00")
    bars = [vendor(t0 + i * MINUTE_MS, c=10 + i) for i in range(10)]
    bars.append(vendor(t0 + 3 * MINUTE_MS, c=99))  # the same start again: the later wins
    bars.append(vendor(t0 - MINUTE_MS))  # before the range
    bars.append({"t": t0 + 50 * MINUTE_MS})  # not a bar
    members = history_members(bars, t0, t0 + 8 * MINUTE_MS, keep=5)
    assert [t for t, _ in members] == [t0 + i * MINUTE_MS for i in range(4, 9)]
    assert orjson.loads(members[0][1])["c"] == 14
    members = history_members(bars, t0, t0 + 8 * MINUTE_MS, keep=100)
    assert len(members) == 9 and orjson.loads(dict(members)[t0 + 3 * MINUTE_MS])["c"] == 99
    assert history_members([], t0, t0 + 1, 10) == []


# -- the merge ------------------------------------------------------------------------------------------


def test_merge_live_wins_at_an_equal_start_and_keeps_the_newest():
    history = [live(t, c=1.0) for t in range(0, 10 * MINUTE_MS, MINUTE_MS)]
    now = [live(t, c=2.0) for t in range(8 * MINUTE_MS, 13 * MINUTE_MS, MINUTE_MS)]
    merged = merge_minutes(history, now)
    assert [b["t"] for b in merged] == list(range(0, 13 * MINUTE_MS, MINUTE_MS))
    assert [b["c"] for b in merged] == [1.0] * 8 + [2.0] * 5
    assert merge_minutes(history, now, 4) == merged[-4:]
    assert merge_minutes([], now, 2) == now[-2:]
    assert merge_minutes(history, [], 3) == history[-3:]


@given(
    st.sets(st.integers(0, 3000), max_size=60),
    st.sets(st.integers(0, 3000), max_size=60),
    st.integers(0, 100),
)
def test_merge_is_sorted_unique_and_bounded(history_starts, live_starts, n):
    history = [live(t, c=1.0) for t in sorted(history_starts)]
    now = [live(t, c=2.0) for t in sorted(live_starts)]
    merged = merge_minutes(history, now, n)
    starts = [b["t"] for b in merged]
    everything = sorted(history_starts | live_starts)
    assert starts == (everything[-n:] if n else everything)
    assert all(b["c"] == (2.0 if b["t"] in live_starts else 1.0) for b in merged)


# -- the snapshot ---------------------------------------------------------------------------------------


async def test_bars_snapshot_merges_the_history_with_the_live_bars(redis):
    names = Names(mdc_settings().mdc_prefix)
    reader = Reader(redis, names)
    t0 = ms("2026-11-19T09:30:00-05:00")
    try:
        assert (await reader.snapshot("bars.AAPL")).data is None
        history = [live(t0 + i * MINUTE_MS, c=1.0) for i in range(100)]
        await redis.zadd(names.history("AAPL"), {orjson.dumps(b): b["t"] for b in history})
        snap = await reader.snapshot("bars.AAPL")  # history alone is a snapshot already
        assert snap.data == {"second": None, "minute": history}
        now = [live(t0 + i * MINUTE_MS, c=2.0) for i in range(95, 110)]
        await redis.zadd(names.bars_minute("AAPL"), {orjson.dumps(b): b["t"] for b in now})
        await redis.hset(names.seq_key("bars.AAPL"), "bars.AAPL", 7)
        snap = await reader.snapshot("bars.AAPL", minute_bars=50)
        assert snap.seq == 7
        assert [b["t"] for b in snap.data["minute"]] == [t0 + i * MINUTE_MS for i in range(60, 110)]
        assert [b["c"] for b in snap.data["minute"]] == [1.0] * 35 + [2.0] * 15
        # the other channels of the same read are unaffected
        stats, bars = await reader.snapshots(["stats.AAPL", "bars.AAPL"])
        assert stats.data is None and len(bars.data["minute"]) == 110
    finally:
        await redis.delete(names.history("AAPL"), names.bars_minute("AAPL"), names.seq_key("bars.AAPL"))
