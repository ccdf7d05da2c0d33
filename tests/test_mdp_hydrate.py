"""Hydration's merge without I/O (``mdp.hydrate``): a processor that missed the start of the day, then
merged the vendor's snapshot while the stream went on, holds what one that saw every trade holds."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from mdc import envelope
from mdc.tradingday import TradingDay
from mdp import events as ev
from mdp.book import SymbolState
from mdp.hydrate import Journal, SnapshotMerge, Ticker, parse_ticker, previous_closes
from mdp.writes import Writes

from .test_mdp_merge import Processor, commands, published
from .test_mdp_units import T0, trade

DAY = TradingDay()
TODAY = DAY(T0)


def snapshot_of(trades: list[dict[str, Any]], prev_close: float | None = 99.0) -> dict[str, Any]:
    """The vendor's snapshot object of AAPL after ``trades`` (all of the day so far), times in ns."""
    obj: dict[str, Any] = {"ticker": "AAPL", "updated": T0 * 1_000_000}
    if prev_close is not None:
        obj["prevDay"] = {"o": 98.0, "h": 100.0, "l": 97.0, "c": prev_close, "v": 1000, "vw": 99.0}
    if trades:
        last = trades[-1]
        volume = sum(t["s"] for t in trades)
        obj["day"] = {
            "o": trades[0]["p"], "h": max(t["p"] for t in trades), "l": min(t["p"] for t in trades),
            "c": last["p"], "v": volume, "vw": round(sum(t["p"] * t["s"] for t in trades) / volume, 4),
            "n": len(trades),
        }  # fmt: skip
        obj["lastTrade"] = {"p": last["p"], "s": last["s"], "t": last["t"] * 1_000_000, "q": last["q"],
                            "x": 4, "i": "1"}  # fmt: skip
    return obj


def hydrate(p: Processor, obj: dict[str, Any], journal: Journal) -> list[envelope.Update]:
    tk = parse_ticker(obj)
    p.book.install([SymbolState(sym) for sym in p.book.missing({tk.sym})])
    writes = Writes(p.context, 1_763_649_000_500)
    closes: dict[str, float] = {}
    SnapshotMerge(p.merger, DAY).apply([tk], p.book, writes, journal, today=TODAY, stats_part=True,
                                       quotes_part=True, prev_closes=closes)  # fmt: skip
    journal.close(tk.sym)
    return published(commands(writes.transaction()[0]))


def day_figures(p: Processor) -> dict[str, Any]:
    doc = p.book.symbols["AAPL"].stats
    assert doc is not None
    return {k: doc.get(k) for k in ("trades", "volume", "high", "low", "open", "prev_close", "change_pct")}


def tape(prices: list[float], sizes: list[int]) -> list[dict[str, Any]]:
    return [
        trade(p=p, s=s, t=T0 + 10 * i, q=i + 1) for i, (p, s) in enumerate(zip(prices, sizes, strict=True))
    ]


@settings(max_examples=150, deadline=None)
@given(
    prices=st.lists(st.sampled_from([99.5, 100.0, 100.25, 101.0, 102.5]), min_size=2, max_size=40),
    data=st.data(),
)
def test_a_hydrated_processor_holds_what_an_always_on_one_holds(prices: list[float], data: Any) -> None:
    """Trades [0, s) were never seen; [s, r) merged before the request; the snapshot counts [0, c) with
    c >= r; [r, a) merged while it was in flight; [a, n) after it, in groups, whatever their order
    relative to c (a backlog older than the snapshot included)."""
    n = len(prices)
    sizes = data.draw(st.lists(st.integers(1, 500), min_size=n, max_size=n))
    trades = tape(prices, sizes)
    s = data.draw(st.integers(0, n))
    r = data.draw(st.integers(s, n))
    c = data.draw(st.integers(max(r, 1), n))
    a = data.draw(st.integers(r, n))
    step = data.draw(st.integers(1, 5))

    always = Processor()
    for i in range(0, n, 3):
        always.group(trades[i : i + 3])

    p = Processor()
    if r > s:
        p.group(trades[s:r])
    journal = p.merger.journal = Journal()
    for i in range(r, a, step):
        p.group(trades[i : min(i + step, a)])
    updates = hydrate(p, snapshot_of(trades[:c]), journal)
    p.merger.journal = None
    for i in range(a, n, step):
        p.group(trades[i : i + step])

    got, expected = day_figures(p), day_figures(always)
    assert got["prev_close"] == 99.0
    ignored = {"prev_close": None, "change_pct": None}  # the always-on one had no previous close
    assert got | ignored == expected | ignored
    assert day_figures(p)["trades"] == n and day_figures(p)["volume"] == sum(sizes)
    assert all(u.resync for u in updates) and {u.type for u in updates} <= {"stats", "trades"}


def test_the_snapshot_never_moves_state_back():
    trades = tape([100.0, 101.0, 102.0, 101.5], [100, 200, 300, 400])
    p = Processor()
    p.group(trades)
    before = dict(p.book.symbols["AAPL"].stats)  # type: ignore[arg-type]
    # an older snapshot than what was merged (it stopped at the second trade): sums only grow
    hydrate(p, snapshot_of(trades[:2]), Journal())
    doc = p.book.symbols["AAPL"].stats
    assert doc is not None
    assert (doc["trades"], doc["volume"], doc["high"], doc["low"]) == (4, 1000, 102.0, 100.0)
    assert doc["last"] == before["last"] == 101.5
    assert p.book.symbols["AAPL"].trade_tq == (trades[-1]["t"], trades[-1]["q"])


def test_previous_close_sets_change_and_gap_and_says_where_change_is_from():
    trades = tape([100.0, 102.0], [100, 100])
    p = Processor()
    p.group(trades)
    doc = p.book.symbols["AAPL"].stats
    assert doc is not None and doc["change_from"] == "open" and doc["change_pct"] == 2.0
    updates = hydrate(p, snapshot_of(trades, prev_close=80.0), Journal())
    doc = p.book.symbols["AAPL"].stats
    assert doc is not None
    assert (doc["prev_close"], doc["change_from"], doc["change_pct"], doc["gap_pct"]) == (
        80.0,
        "prev_close",
        27.5,
        25.0,
    )
    (stats,) = [u for u in updates if u.type == "stats"]
    assert stats.resync and stats.data["prev_close"] == 80.0


def test_a_snapshot_of_a_ticker_that_did_not_trade_today_only_moves_the_reference():
    p = Processor()
    p.group(tape([100.0], [100]))
    obj = snapshot_of([], prev_close=50.0)
    updates = hydrate(p, obj, Journal())
    doc = p.book.symbols["AAPL"].stats
    assert doc is not None and doc["prev_close"] == 50.0 and doc["trades"] == 1
    assert p.book.symbols["AAPL"].prev_close == 50.0
    assert [u.type for u in updates] == ["stats"]


def test_parse_ticker_reads_the_vendor_shape():
    obj = snapshot_of(tape([100.0, 101.0], [10, 20]))
    obj["lastQuote"] = {
        "p": 100.9,
        "s": 200,
        "P": 101.1,
        "S": 300,
        "x": 12,
        "X": 11,
        "t": (T0 + 50) * 1_000_000,
        "q": 9,
    }
    tk = parse_ticker(obj)
    assert tk.sym == "AAPL" and tk.prev_close == 99.0
    assert tk.trade_tq == (T0 + 10, 2) and tk.trade is not None and tk.trade["p"] == 101.0
    assert tk.day == (100.0, 101.0, 100.0, 101.0, 30, round((1000 + 2020) / 30, 4), 2)
    assert tk.quote_tq == (T0 + 50, 9)
    assert orjson.loads(tk.quote or b"")["spread"] == 0.2


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["ticker", "day", "prevDay", "lastTrade", "lastQuote", "o", "h", "l",
                                         "c", "v", "vw", "n", "p", "s", "t", "q", "P", "S", "x", "X", "i"]),
                        inner, max_size=8),
                    max_leaves=30))  # fmt: skip
def test_parse_ticker_refuses_what_is_not_a_ticker_with_a_reason(obj: Any) -> None:
    try:
        tk = parse_ticker(obj)
    except ev.Invalid as exc:
        reason = str(exc)
    else:
        assert isinstance(tk, Ticker) and tk.sym == obj["ticker"]
        return
    assert reason, "a refusal says why"


def test_previous_closes_from_grouped_daily_bars_fill_a_snapshot_without_prev_day():
    tickers = [parse_ticker(snapshot_of(tape([100.0], [10]), prev_close=None)), Ticker("MSFT"), Ticker("X")]
    grouped = [
        {"T": "AAPL", "c": 98.5},
        {"T": "MSFT", "c": 410},
        {"T": "X", "c": -1},
        {"T": 5, "c": 1.0},
        "junk",
    ]
    assert previous_closes(tickers, grouped) == 2
    assert [tk.prev_close for tk in tickers] == [98.5, 410.0, None]
