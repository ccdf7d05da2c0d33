"""The emulator's REST API: the real ``massive.RESTClient`` against an in-process emulator, and the
sans-I/O parts (ledger, previous day, calendar, request parsing) directly.

What the consumer side relies on, checked: the vendor's shapes parse into the client's models; the
answers agree with the stream a WebSocket client read from the first event (the ledger follows the tape,
not the generator running ahead); the previous day is the same in every emulator with the seed; auth,
404, 429 and the REST fault switches and their recovery; the market's pause, resume and speed; and no
request, however malformed, gets a 500 (hypothesis).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import datetime as dt
import time
import types
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from massive import RESTClient
from massive.exceptions import BadResponse
from massive.rest.models import (
    Agg,
    GroupedDailyAgg,
    LastQuote,
    LastTrade,
    MarketStatus,
    MinuteSnapshot,
    PreviousCloseAgg,
    TickerSnapshot,
)
from urllib3.exceptions import MaxRetryError

from mdpipe.observe import Request
from mdpipe.settings import parse_start
from sim import metrics
from sim.calendar import previous_trading_day, session, trading_day
from sim.frames import chunk_json
from sim.ledger import Ledger
from sim.market import EVENT_TYPES, SyntheticMarket
from sim.prevday import Reference, previous_day
from sim.recording import RecordingWriter
from sim.restapi import RATE_LIMITED, ApiError, Call, RestApi, parse
from sim.resthttp import RestServer, TokenBucket
from sim.server import FAULTS, references
from tests.conftest import ALL_STOCKS, KEY, START, Collector, client_for, eventually, http

START_MS = parse_start(START)  # Friday 2026-11-20, 09:30 New York
PREV_DATE = "2026-11-19"
DAY = 86_400_000


# -- helpers ----------------------------------------------------------------------------------------


def rest(emulator, **kw: Any) -> RESTClient:
    """The real client on the emulator; no retries, so a fault shows at once."""
    kw.setdefault("api_key", KEY)
    kw.setdefault("retries", 0)
    return RESTClient(base=emulator.rest_url, **kw)


async def call(fn, *args: Any, **kw: Any) -> Any:
    """A blocking client call, off the event loop the emulator runs on; iterators are read whole."""

    def run() -> Any:
        result = fn(*args, **kw)
        return list(result) if isinstance(result, types.GeneratorType) else result

    return await asyncio.to_thread(run)


AUTH = {"Authorization": f"Bearer {KEY}"}


async def get(emulator, target: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    status, _, body = await http(emulator.http.port, "GET", target, AUTH if headers is None else headers)
    return status, orjson.loads(body) if body else {}


async def post_fault(emulator, query: str) -> int:
    """``POST /faults?{query}`` as ``mdpipe sim fault`` sends it; returns the status."""
    return (await http(emulator.http.port, "POST", f"/faults?{query}", AUTH))[0]


def stream_events(frames: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for frame in frames:
        parsed = orjson.loads(frame)
        out += [e for e in parsed if e.get("ev") != "status"]
    return out


def market(seconds: float, start_ms: int = START_MS, **kw: Any) -> tuple[SyntheticMarket, list]:
    """A synthetic market run for ``seconds`` and what each tick gave: (frames, summary)."""
    params = {"seed": 3, "symbols": 200, "rate": 4000, "tick_ms": 50, "start_ms": start_ms, **kw}
    m = SyntheticMarket(**params)
    ticks = []
    for _ in range(int(seconds * 1000 / params["tick_ms"])):
        frames = chunk_json(m.tick_json(), 100, EVENT_TYPES)
        ticks.append((frames, m.summary()))
    return m, ticks


# -- the ledger, without I/O ------------------------------------------------------------------------


def test_the_ticks_summaries_and_the_frames_give_the_same_ledger():
    """``apply`` (the synthetic market's own account of a tick) and ``feed`` (frames parsed, as for a
    replay) agree on everything: the day, the newest trade and quote, the bars and their trade counts."""
    m, ticks = market(65, start_ms=START_MS - 5000, rate=800)  # a partial minute bar, then a whole one
    by_summary = Ledger(start_ms=START_MS, seed=3, references=references(m))
    by_frames = Ledger(start_ms=START_MS, seed=3)
    for frames, summary in ticks:
        by_summary.apply(summary)
        for frame in frames:
            by_frames.feed(frame)
    assert by_summary.trades.keys() == by_frames.trades.keys()
    for sym, agg in by_summary.trades.items():
        assert agg[:7] == pytest.approx(by_frames.trades[sym][:7], rel=1e-12)
        assert by_summary.last_trade(sym) == by_frames.last_trade(sym)
    for sym in set(by_summary.quotes) | set(by_frames.quotes):
        assert by_summary.last_quote(sym) == by_frames.last_quote(sym)
    assert by_summary.minutes == by_frames.minutes
    assert all(by_summary.day_bars(sym) == by_frames.day_bars(sym) for sym in by_summary.trades)
    assert sum(len(by_summary.day_bars(sym)) for sym in by_summary.trades) > 100
    minutes = {bar[0] for sym in by_summary.trades for bar in by_summary.day_bars(sym)}
    assert minutes == {START_MS - 60_000, START_MS}


def test_feed_skips_what_is_not_a_well_formed_stock_event():
    ledger = Ledger(start_ms=START_MS, seed=1)
    (frame,) = chunk_json(
        [
            f'{{"ev":"T","sym":"AAA","i":"1","x":4,"p":10.0,"s":100,"t":{START_MS + 1},"q":1}}',
            f'{{"ev":"T","sym":"AAA","p":"ten","s":100,"t":{START_MS + 2}}}',
            '{"ev":"T","sym":7,"p":1.0,"s":1,"t":1}',
            '{"ev":"Q","sym":"AAA","bp":null,"ap":1.0,"t":1}',
            '{"ev":"AM","sym":"AAA"}',
            '{"ev":"ZZ"}',
        ],
        100,
        frozenset({"T"}),
    )
    ledger.feed(frame)
    for raw in (b"not json", b'{"ev":"T"}', b"[1, 2, 3]"):
        ledger.feed(type(frame)(raw, None, 1))
    assert list(ledger.trades) == ["AAA"]
    assert ledger.trades["AAA"][:7] == (10.0, 10.0, 10.0, 10.0, 100, 1000.0, 1)
    assert not ledger.quotes and not ledger.minutes
    assert ledger.references["AAA"].price == 10.0  # a replay's reference: the first price seen


def test_a_new_day_at_4_new_york_time_makes_the_day_played_the_previous_one():
    start = parse_start("2026-11-20T08:59:00Z")  # 03:59 New York: still Thursday's trading day
    boundary = parse_start("2026-11-20T09:00:00Z")
    m, ticks = market(120, start_ms=start, rate=500)
    ledger = Ledger(start_ms=start, seed=3, references=references(m))
    before: dict[str, list] = collections.defaultdict(list)
    after: dict[str, list] = collections.defaultdict(list)
    bars_after = []
    for frames, summary in ticks:
        ledger.apply(summary)
        for event in stream_events([f.full for f in frames]):
            if event["ev"] == "T":
                (before if event["t"] < boundary else after)[event["sym"]].append(event)
            elif event["ev"] == "AM" and event["s"] >= boundary:
                bars_after.append(event)
    assert ledger.day == dt.date(2026, 11, 20) and ledger.prev_date == dt.date(2026, 11, 19)
    for sym, trades in before.items():
        prev = ledger.previous(sym)
        expected = (trades[0]["p"], trades[-1]["p"], sum(t["s"] for t in trades), len(trades))
        assert (prev.o, prev.c, prev.v, prev.n) == expected
        assert prev.date == dt.date(2026, 11, 19) and sum(bar[5] for bar in prev.bars()) == prev.v
    for sym, trades in after.items():
        agg = ledger.trades[sym]
        assert (agg[0], agg[4], agg[6]) == (trades[0]["p"], sum(t["s"] for t in trades), len(trades))
    # the market's own day figures start again too
    first = {}
    for bar in bars_after:
        first.setdefault(bar["sym"], bar)
    assert all(bar["av"] == bar["v"] for bar in first.values())
    assert all(ledger.previous(sym) is None for sym in ledger.references if sym not in before)


# -- the previous day -------------------------------------------------------------------------------


def test_the_previous_day_is_made_from_the_seed_and_the_symbol_alone():
    ref = Reference(182.11, 0.012, 40_000)
    one = previous_day(7, "AAPL", dt.date(2026, 11, 19), ref)
    other_date = previous_day(7, "AAPL", dt.date(2026, 12, 3), ref)
    fields = ("o", "h", "l", "c", "v", "vw", "n")
    assert [getattr(one, f) for f in fields] == [getattr(other_date, f) for f in fields]
    assert [bar[1:] for bar in one.bars()] == [bar[1:] for bar in other_date.bars()]
    assert [getattr(one, f) for f in fields] != [
        getattr(previous_day(8, "AAPL", dt.date(2026, 11, 19), ref), f) for f in fields
    ]


@pytest.mark.parametrize(
    ("sym", "price", "vol"), [("AAPL", 182.11, 0.012), ("PENNY", 0.73, 0.08), ("ONE", 1.0, 0.05)]
)
def test_the_previous_days_bars_agree_with_the_day(sym, price, vol):
    day = previous_day(1, sym, dt.date(2026, 11, 19), Reference(price, vol, 5000))
    bars = day.bars()
    assert len(bars) == 390
    assert bars[0][0] == parse_start("2026-11-19T14:30:00Z")  # 09:30 New York
    assert [b[0] for b in bars] == [bars[0][0] + 60_000 * k for k in range(390)]
    assert bars[0][1] == day.o and bars[-1][4] == day.c
    assert max(b[2] for b in bars) == day.h and min(b[3] for b in bars) == day.l
    assert sum(b[5] for b in bars) == day.v and sum(b[7] for b in bars) == day.n
    assert all(low <= min(o, c) <= max(o, c) <= h and low <= vw <= h for _, o, h, low, c, _, vw, _ in bars)
    assert all(v >= n >= 1 for *_, v, _, n in bars)
    assert sum(b[6] * b[5] for b in bars) / day.v == pytest.approx(day.vw, rel=0.01)
    assert day.l < min(day.o, day.c) and day.h > max(day.o, day.c)
    assert day.t == parse_start("2026-11-19T21:00:00Z")  # the 16:00 close


def test_previous_closes_gap_realistically_from_the_synthetic_opens():
    m = SyntheticMarket(seed=1, symbols=3000, rate=5000, tick_ms=50, start_ms=START_MS)
    gaps = sorted(
        abs(ref.price / previous_day(1, sym, dt.date(2026, 11, 19), ref).c - 1)
        for sym, ref in references(m).items()
    )
    assert gaps[len(gaps) // 2] < 0.02  # most move a little overnight
    assert 0.03 < gaps[int(len(gaps) * 0.98)] < 0.2  # a few move a lot


def test_the_calendar_matches_the_processors_trading_day():
    assert trading_day(parse_start("2026-11-20T08:59:59Z")) == dt.date(2026, 11, 19)  # 03:59:59 New York
    assert trading_day(parse_start("2026-11-20T09:00:00Z")) == dt.date(2026, 11, 20)
    assert trading_day(parse_start("2026-07-01T08:00:00Z")) == dt.date(2026, 7, 1)  # 04:00 EDT
    assert previous_trading_day(dt.date(2026, 11, 23)) == dt.date(2026, 11, 20)  # Monday's is Friday
    assert previous_trading_day(dt.date(2026, 11, 22)) == dt.date(2026, 11, 20)
    times = {"08:30": "closed", "10:00": "pre", "15:00": "regular", "22:00": "post", "01:30+1": "closed"}
    for hhmm, expected in times.items():
        hhmm, _, plus = hhmm.partition("+")
        t = parse_start(f"2026-11-20T{hhmm}:00Z") + (DAY if plus else 0)
        assert session(t) == expected, hhmm
    assert session(parse_start("2026-11-21T15:00:00Z")) == "closed"  # Saturday


# -- parsing requests, without I/O ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "route"),
    [
        ("/v2/snapshot/locale/us/markets/stocks/tickers", {}, "snapshot_all"),
        ("/v2/snapshot/locale/us/markets/stocks/tickers", {"tickers": ["A,BRK.A"]}, "snapshot_all"),
        ("/v2/snapshot/locale/us/markets/stocks/tickers/AAPL", {}, "snapshot_ticker"),
        ("/v2/snapshot/locale/us/markets/stocks/gainers", {"include_otc": ["false"]}, "movers"),
        ("/v2/aggs/grouped/locale/us/market/stocks/2026-11-19", {"adjusted": ["true"]}, "grouped"),
        ("/v2/aggs/ticker/AAPL/prev", {}, "prev"),
        ("/v2/aggs/ticker/AAPL/range/5/minute/2026-11-19/1795185000000", {"sort": ["desc"]}, "range"),
        ("/v1/marketstatus/now", {"whatever": ["x"]}, "market_status"),  # unknown parameters are ignored
    ],
)
def test_parse_knows_the_routes(path, query, route):
    assert parse("GET", path, query).route == route


@pytest.mark.parametrize(
    ("method", "path", "query", "status"),
    [
        ("POST", "/v1/marketstatus/now", {}, 405),
        ("GET", "/v2/snapshot/locale/global/markets/crypto/tickers", {}, 404),
        ("GET", "/v2/snapshot/locale/us/markets/stocks/tickers/", {}, 400),
        ("GET", "/v2/snapshot/locale/us/markets/stocks/tickers/A%2FB", {}, 400),
        ("GET", "/v2/snapshot/locale/us/markets/stocks/tickers", {"tickers": ["A,,B"]}, 400),
        ("GET", "/v2/snapshot/locale/us/markets/stocks/movers", {}, 404),
        ("GET", "/v2/aggs/grouped/locale/us/market/stocks/2026-13-01", {}, 400),
        ("GET", "/v2/aggs/grouped/locale/us/market/stocks/2026-11-19", {"adjusted": ["yes"]}, 400),
        ("GET", "/v2/aggs/ticker/AAPL/range/0/minute/2026-11-19/2026-11-20", {}, 400),
        ("GET", "/v2/aggs/ticker/AAPL/range/61/minute/2026-11-19/2026-11-20", {}, 400),
        ("GET", "/v2/aggs/ticker/AAPL/range/1/week/2026-11-19/2026-11-20", {}, 400),
        ("GET", "/v2/aggs/ticker/AAPL/range/1/fortnight/2026-11-19/2026-11-20", {}, 400),
        ("GET", "/v2/aggs/ticker/AAPL/range/1/minute/yesterday/2026-11-20", {}, 400),
        ("GET", "/v2/aggs/ticker/AAPL/range/1/minute/2026-11-19/9999-12-31", {}, 400),
        ("GET", "/v2/aggs/ticker/AAPL/range/1/minute/2026-11-19/2026-11-20", {"limit": ["50001"]}, 400),
        ("GET", "/v2/aggs/ticker/AAPL/range/1/minute/2026-11-19/2026-11-20", {"limit": ["1", "2"]}, 400),
        ("GET", "/v2/aggs/ticker/AAPL/range/1/minute/2026-11-19/2026-11-20", {"sort": ["up"]}, 400),
        ("GET", "/v2/aggs/ticker/AAPL/range/1/minute/2026-11-19/2026-11-20", {"cursor": ["!!"]}, 400),
        ("GET", "/v2/aggs/ticker/AAPL/range/1/minute/2026-11-19/2026-11-20",
         {"cursor": [base64.urlsafe_b64encode(b"limit=5&evil=1").decode()]}, 400),
    ],
)  # fmt: skip
def test_parse_refuses_bad_requests_with_the_vendors_bodies(method, path, query, status):
    with pytest.raises(ApiError) as caught:
        parse(method, path, query)
    assert caught.value.status == status
    body = caught.value.body
    assert body["status"] == ("NOT_FOUND" if status == 404 else "ERROR") and len(body["request_id"]) == 32
    assert body.get("error") or body.get("message")


SEGMENTS = st.sampled_from(
    ["", "v1", "v2", "v3", "snapshot", "locale", "us", "markets", "market", "stocks", "tickers", "gainers",
     "losers", "aggs", "grouped", "ticker", "AAPL", "prev", "range", "1", "60", "minute", "hour", "day",
     "2026-11-19", "2026-11-20", "1795185000000", "marketstatus", "now", "0001-01-01", "9999-12-31"]
) | st.text(max_size=14)  # fmt: skip
PATHS = st.lists(SEGMENTS, max_size=10).map(lambda parts: "/" + "/".join(parts))
QUERIES = st.dictionaries(
    st.sampled_from(["tickers", "limit", "sort", "adjusted", "include_otc", "cursor", "apiKey", "other"]),
    st.lists(st.text(max_size=24) | st.sampled_from(["asc", "desc", "true", "5000", "AAPL,SPY"]), min_size=1,
             max_size=2),
    max_size=4,
)  # fmt: skip


@pytest.fixture(scope="module")
def small_ledger() -> Ledger:
    m, ticks = market(70, rate=1000)
    ledger = Ledger(start_ms=START_MS, seed=3, references=references(m))
    for _, summary in ticks:
        ledger.apply(summary)
    return ledger


@settings(max_examples=150, deadline=None)
@given(method=st.sampled_from(["GET", "GET", "GET", "POST", "get"]), path=PATHS, query=QUERIES)
def test_fuzzed_requests_get_a_vendor_answer_never_an_exception(small_ledger, method, path, query):
    """Whatever the path and query: a Call that answers 200 or 404, or a 400/404/405 error body."""
    try:
        parsed: Call | ApiError = parse(method, path, query)
    except ApiError as exc:
        parsed = exc
    if isinstance(parsed, ApiError):
        assert parsed.status in (400, 404, 405) and parsed.body["status"] in ("ERROR", "NOT_FOUND")
        return
    status, body = RestApi(small_ledger).answer(parsed, "http://127.0.0.1:1")
    assert status in (200, 404)
    assert body["status"] in ("OK", "NOT_FOUND")
    orjson.dumps(body)


@settings(max_examples=100, deadline=None)
@given(
    path=PATHS,
    query=QUERIES,
    headers=st.dictionaries(
        st.sampled_from(["authorization", "host", "x"]), st.text(max_size=30), max_size=3
    ),
)
def test_fuzzed_requests_through_the_http_handler_never_fail(small_ledger, path, query, headers):
    server = RestServer(RestApi(small_ledger), key=KEY, rate=0, address="127.0.0.1:1")
    response = asyncio.run(server.handle(Request("GET", path, query, headers, b"")))
    if not path.startswith(("/v1/", "/v2/", "/v3/", "/vX/")):
        assert response is None
        return
    assert response.status in (200, 400, 401, 404)
    assert orjson.loads(response.body)["status"] in ("OK", "ERROR", "NOT_FOUND")


def test_paging_never_splits_a_window_and_carries_limit_and_sort(small_ledger):
    api = RestApi(small_ledger)
    sym = next(iter(small_ledger.trades))
    start, end = PREV_DATE, str(START_MS + DAY)
    first = parse(
        "GET", f"/v2/aggs/ticker/{sym}/range/5/minute/{start}/{end}", {"limit": ["7"], "sort": ["desc"]}
    )
    status, body = api.answer(first, "http://h:1")
    assert status == 200 and body["next_url"].startswith(f"http://h:1/v2/aggs/ticker/{sym}/range/5/minute/")
    seen: list[int] = [r["t"] for r in body["results"]]
    while "next_url" in body:
        path, _, query = body["next_url"][len("http://h:1") :].partition("?")
        cursor = dict([query.split("=", 1)])
        status, body = api.answer(parse("GET", path, {"cursor": [cursor["cursor"]]}), "http://h:1")
        assert status == 200 and body["resultsCount"] <= 2  # 7 base bars: one whole 5-minute window a page
        seen += [r["t"] for r in body.get("results", [])]
    assert seen == sorted(set(seen), reverse=True)
    assert len(seen) == 78 + 1  # the previous day's 5-minute windows, and today's first minute's


def test_token_bucket_allows_a_minutes_worth_then_one_per_interval():
    bucket = TokenBucket(3)
    now = bucket.at
    assert [bucket.take(now) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(now + 19)
    assert bucket.take(now + 20.5)  # 60 / 3 s later: one more
    assert TokenBucket(0).take(now)


def test_market_status_follows_the_market_clock():
    def status(at: str) -> dict:
        return RestApi(Ledger(start_ms=parse_start(at), seed=1)).answer(Call("market_status"), "")[1]

    assert status(START)["market"] == "open" and status(START)["serverTime"] == "2026-11-20T09:30:00-05:00"
    early = status("2026-11-20T12:00:00Z")
    assert early["market"] == "extended-hours" and early["earlyHours"] and not early["afterHours"]
    assert status("2026-11-20T22:00:00Z")["afterHours"]
    weekend = status("2026-11-21T15:00:00Z")
    assert weekend["market"] == "closed" and weekend["currencies"] == {"crypto": "open", "fx": "closed"}


# -- the real client against an emulator ------------------------------------------------------------


async def test_every_answer_parses_into_the_clients_models(make_emulator):
    emulator = await make_emulator(sim_speed=60, sim_start="2026-11-20T14:30:55Z")
    await eventually(lambda: emulator.ledger.minutes)
    await emulator.inject("pause")  # so that the answers below describe one moment
    client = rest(emulator)
    snapshots = await call(client.get_snapshot_all, "stocks")
    assert len(snapshots) == 500 and all(isinstance(s, TickerSnapshot) for s in snapshots)
    traded = [s for s in snapshots if s.day.volume]
    assert traded and all(
        isinstance(s.last_trade, LastTrade) and isinstance(s.min, MinuteSnapshot) for s in traded
    )
    assert all(
        s.prev_day.close > 0 and s.prev_day.timestamp == parse_start("2026-11-19T21:00:00Z")
        for s in snapshots
    )
    quiet = [s for s in snapshots if not s.day.volume]
    assert all(
        s.todays_change == 0 and s.day.open == 0 and s.last_trade is None for s in quiet
    )  # as the vendor
    busy = max(traded, key=lambda s: s.day.volume)
    assert busy.todays_change == pytest.approx(busy.day.close - busy.prev_day.close, abs=1e-4)
    assert busy.todays_change_percent == pytest.approx(
        100 * busy.todays_change / busy.prev_day.close, abs=1e-4
    )
    assert isinstance(busy.last_quote, LastQuote) and busy.last_quote.bid_price < busy.last_quote.ask_price
    assert busy.updated >= busy.last_trade.sip_timestamp > START_MS * 1_000_000

    some = await call(client.get_snapshot_all, "stocks", tickers=[busy.ticker, "NOPE"])
    assert [s.ticker for s in some] == [busy.ticker]
    one = await call(client.get_snapshot_ticker, "stocks", busy.ticker)
    assert isinstance(one, TickerSnapshot) and one.ticker == busy.ticker and one.prev_day == busy.prev_day

    gainers = await call(client.get_snapshot_direction, "stocks", "gainers")
    losers = await call(client.get_snapshot_direction, "stocks", "losers")
    assert len(gainers) <= 20 and len(losers) <= 20 and gainers + losers
    assert [g.todays_change_percent for g in gainers] == sorted(
        (g.todays_change_percent for g in gainers), reverse=True
    )
    assert all(g.todays_change > 0 and g.day.volume >= 10_000 for g in gainers)
    assert all(loser.todays_change < 0 for loser in losers)

    (prev,) = await call(client.get_previous_close_agg, busy.ticker)
    assert (
        isinstance(prev, PreviousCloseAgg)
        and prev.close == busy.prev_day.close
        and prev.ticker == busy.ticker
    )
    grouped = await call(client.get_grouped_daily_aggs, PREV_DATE)
    assert len(grouped) == 500 and all(isinstance(g, GroupedDailyAgg) for g in grouped)
    today = await call(client.get_grouped_daily_aggs, "2026-11-20")
    assert {g.ticker for g in today} == {s.ticker for s in traded}
    assert await call(client.get_grouped_daily_aggs, "2026-11-18") == []

    bars = await call(client.list_aggs, busy.ticker, 1, "minute", PREV_DATE, "2026-11-20")
    assert all(isinstance(b, Agg) for b in bars) and len(bars) == 390 + len(
        emulator.ledger.day_bars(busy.ticker)
    )
    days = await call(client.list_aggs, busy.ticker, 1, "day", PREV_DATE, "2026-11-20")
    assert [d.timestamp for d in days] == [
        parse_start("2026-11-19T05:00:00Z"),
        parse_start("2026-11-20T05:00:00Z"),
    ]
    assert (days[0].open, days[0].close, days[0].volume) == (prev.open, prev.close, prev.volume)

    status = await call(client.get_market_status)
    assert isinstance(status, MarketStatus) and status.market == "open" and status.exchanges.nasdaq == "open"


async def test_the_snapshot_is_what_a_client_read_from_the_first_event(make_emulator):
    """Started paused so a WebSocket client subscribes before the first event; after a pause, every
    symbol's day, newest trade, newest quote, minute bar and bars equal what the client read."""
    emulator = await make_emulator(
        sim_start_paused=True, sim_rate=300, sim_symbols=100, sim_speed=60, sim_start="2026-11-20T14:31:50Z"
    )
    collector = Collector(client_for(emulator, ALL_STOCKS))
    try:
        await eventually(lambda: emulator.clients and emulator.clients[0].pump is not None)
        await asyncio.sleep(0.1)
        assert emulator.source.tape.head == 0  # nothing before the resume
        await emulator.inject("resume")
        await eventually(lambda: emulator.ledger.clock_ms >= START_MS + 185_000, within=20)  # 2 bars closed
        await emulator.inject("pause")
        head = emulator.source.tape.head
        await collector.wait_for(lambda got: sum('"status"' not in f for f in got) >= head, timeout=20)
    finally:
        await collector.close()
    events = stream_events(collector.received)
    trades: dict[str, list] = collections.defaultdict(list)
    quotes, bars = {}, collections.defaultdict(list)
    for e in events:
        if e["ev"] == "T":
            trades[e["sym"]].append(e)
        elif e["ev"] == "Q":
            quotes[e["sym"]] = e
        elif e["ev"] == "AM":
            bars[e["sym"]].append(e)
    assert sum(map(len, bars.values())) > 30  # two minutes closed

    client = rest(emulator)
    snapshots = {s.ticker: s for s in await call(client.get_snapshot_all, "stocks")}
    for sym, ts in trades.items():
        snap = snapshots[sym]
        prices = [t["p"] for t in ts]
        day = snap.day
        assert (day.open, day.high, day.low, day.close) == (prices[0], max(prices), min(prices), prices[-1])
        assert (day.volume, day.transactions) == (sum(t["s"] for t in ts), len(ts))
        assert day.vwap == pytest.approx(sum(t["p"] * t["s"] for t in ts) / day.volume, abs=1e-4)
        newest = max(ts, key=lambda t: (t["t"], t["q"]))
        last = snap.last_trade
        got = (last.price, last.size, last.id, last.exchange, last.sequence_number)
        assert got == tuple(newest[k] for k in "psixq")
        assert last.sip_timestamp == newest["t"] * 1_000_000 and last.conditions == newest.get("c")
    for sym, q in quotes.items():
        lq = snapshots[sym].last_quote
        got = (lq.bid_price, lq.bid_size, lq.ask_price, lq.ask_size, lq.sip_timestamp // 1_000_000)
        assert got == tuple(q[k] for k in ("bp", "bs", "ap", "as", "t"))
    for sym, ams in bars.items():
        newest = ams[-1]
        m = snapshots[sym].min
        got = (m.open, m.high, m.low, m.close, m.volume, m.vwap, m.timestamp, m.accumulated_volume)
        assert got == tuple(newest[k] for k in ("o", "h", "l", "c", "v", "vw", "s", "av"))
        assert m.transactions == sum(newest["s"] <= t["t"] < newest["e"] for t in trades[sym])
    busiest = sorted(bars, key=lambda s: -len(trades[s]))[:5]
    for sym in busiest:
        got = await call(client.list_aggs, sym, 1, "minute", START_MS, START_MS + DAY)
        assert [(b.timestamp, b.open, b.high, b.low, b.close, b.volume, b.vwap) for b in got] == [
            (e["s"], e["o"], e["h"], e["l"], e["c"], e["v"], e["vw"]) for e in bars[sym]
        ]


async def test_the_previous_day_is_the_same_in_two_emulators_with_the_seed(make_emulator):
    """Another start day (a fortnight later, both in EST): the same previous days, a fortnight later."""
    one = await make_emulator(sim_rate=100, sim_seed=5)
    two = await make_emulator(sim_rate=100, sim_seed=5, sim_start="2026-12-04T14:30:00Z")
    other_seed = await make_emulator(sim_rate=100, sim_seed=6)
    days = []
    for emulator, date in ((one, PREV_DATE), (two, "2026-12-03"), (other_seed, PREV_DATE)):
        grouped = await call(rest(emulator).get_grouped_daily_aggs, date)
        days.append({g.ticker: g for g in grouped})
    assert days[0].keys() == days[1].keys() and len(days[0]) == 500
    fields = ("open", "high", "low", "close", "volume", "vwap", "transactions")
    for sym, day in days[0].items():
        assert [getattr(day, f) for f in fields] == [getattr(days[1][sym], f) for f in fields]
        assert days[1][sym].timestamp - day.timestamp == 14 * DAY
    assert days[2]["SPY"].close != days[0]["SPY"].close
    bars_one = await call(rest(one).list_aggs, "SPY", 1, "minute", PREV_DATE, PREV_DATE)
    bars_two = await call(rest(two).list_aggs, "SPY", 1, "minute", "2026-12-03", "2026-12-03")
    assert len(bars_one) == 390
    assert [(b.timestamp + 14 * DAY, b.open, b.close, b.volume) for b in bars_one] == [
        (b.timestamp, b.open, b.close, b.volume) for b in bars_two
    ]


async def test_list_aggs_pages_with_next_url_and_the_key_as_a_bearer_header(make_emulator):
    emulator = await make_emulator(sim_rate=100)
    client = rest(emulator)
    asc = await call(client.list_aggs, "QQQ", 1, "minute", PREV_DATE, PREV_DATE, limit=100)
    desc = await call(client.list_aggs, "QQQ", 1, "minute", PREV_DATE, PREV_DATE, limit=100, sort="desc")
    assert len(asc) == 390 and [b.timestamp for b in asc] == sorted({b.timestamp for b in asc})
    assert desc == asc[::-1]
    hours = await call(client.list_aggs, "QQQ", 1, "hour", PREV_DATE, PREV_DATE, limit=45)
    assert [h.timestamp for h in hours] == [parse_start(f"2026-11-19T{h}:00:00Z") for h in range(14, 21)]
    assert sum(h.volume for h in hours) == sum(b.volume for b in asc)
    assert hours[0].open == asc[0].open and hours[0].close == asc[29].close  # 09:30-10:00 only
    status, body = await get(
        emulator, f"/v2/aggs/ticker/QQQ/range/1/minute/{PREV_DATE}/{PREV_DATE}?limit=100"
    )
    assert status == 200 and body["resultsCount"] == body["queryCount"] == 100 and body["adjusted"] is True
    assert body["next_url"].startswith("http://mdpipe/v2/aggs/ticker/QQQ/range/1/minute/")  # the Host asked
    assert (await get(emulator, f"/v2/aggs/ticker/QQQ/range/1/minute/{START_MS}/{START_MS - 1}"))[1][
        "resultsCount"
    ] == 0


async def test_a_wrong_or_missing_key_is_a_401_and_apikey_works_too(make_emulator):
    emulator = await make_emulator(sim_rate=100)
    with pytest.raises(BadResponse) as caught:
        await call(rest(emulator, api_key="wrong").get_market_status)
    assert orjson.loads(str(caught.value))["error"] == "Unknown API Key"
    status, body = await get(emulator, "/v1/marketstatus/now", headers={})
    assert status == 401 and body["status"] == "ERROR" and body["error"] == "API Key was not provided"
    assert (await get(emulator, f"/v1/marketstatus/now?apiKey={KEY}", headers={}))[0] == 200
    assert (await get(emulator, "/v1/marketstatus/now?apiKey=wrong", headers={}))[0] == 401


async def test_unknown_tickers_and_paths_are_404s_and_the_other_routes_still_work(make_emulator):
    emulator = await make_emulator(sim_rate=100)
    with pytest.raises(BadResponse) as caught:
        await call(rest(emulator).get_snapshot_ticker, "stocks", "NOPE")
    body = orjson.loads(str(caught.value))
    assert body["status"] == "NOT_FOUND" and body["message"] == "Ticker not found."
    assert await call(rest(emulator).get_previous_close_agg, "NOPE") == []
    status, body = await get(emulator, "/v3/reference/tickers")
    assert status == 404 and body["status"] == "NOT_FOUND"
    assert (await get(emulator, "/v2/aggs/ticker/AAPL/range/1/minute/x/y"))[0] == 400
    assert (await http(emulator.http.port, "POST", "/v1/marketstatus/now", AUTH))[0] == 405
    assert (await get(emulator, "/elsewhere"))[0] == 404
    assert (await get(emulator, "/healthz"))[0] == 200
    assert (await get(emulator, "/faults"))[0] == 200
    before = metrics.REST_REQUESTS.labels("snapshot_ticker", "404")._value.get()
    await get(emulator, "/v2/snapshot/locale/us/markets/stocks/tickers/NOPE")
    assert metrics.REST_REQUESTS.labels("snapshot_ticker", "404")._value.get() == before + 1


async def test_the_rate_limit_answers_429_then_lets_requests_through_again(make_emulator):
    emulator = await make_emulator(sim_rate=100, sim_rest_rate=60)  # one a second, 60 at once
    answers = [(await get(emulator, "/v1/marketstatus/now"))[0] for _ in range(60)]
    while answers[-1] == 200 and len(answers) < 70:  # the bucket refills as the 60 go
        answers.append((await get(emulator, "/v1/marketstatus/now"))[0])
    assert answers[:60] == [200] * 60 and answers[-1] == 429
    status, body = await get(emulator, "/v1/marketstatus/now")
    assert status == 429 and body == {
        "status": "ERROR",
        "request_id": body["request_id"],
        "error": RATE_LIMITED,
    }
    with pytest.raises(MaxRetryError, match="429"):
        await call(rest(emulator).get_market_status)
    await asyncio.sleep(1.1)
    assert (await call(rest(emulator).get_market_status)).market == "open"


def test_every_rest_and_market_fault_is_covered():
    covered = {"rest_error", "rest_slow", "rest_down", "rest_429", "pause", "resume"}
    assert covered <= set(FAULTS)
    assert {f for f in FAULTS if f.startswith("rest_")} | {"pause", "resume"} == covered


async def test_rest_error_answers_the_status_asked_for_then_recovers(make_emulator):
    emulator = await make_emulator(sim_rate=100)
    client = rest(emulator)
    assert await post_fault(emulator, "name=rest_error&seconds=0.5&status=502") == 200
    with pytest.raises(MaxRetryError, match="502"):
        await call(client.get_market_status)
    status, body = await get(emulator, "/v1/marketstatus/now", headers={})  # before auth, as an outage
    assert status == 502 and body["status"] == "ERROR"
    await asyncio.sleep(0.6)
    assert (await call(client.get_market_status)).market == "open"
    await emulator.inject("rest_error", seconds=0.5, status=404)
    with pytest.raises(BadResponse):  # not a status the client retries
        await call(client.get_market_status)
    with pytest.raises(ValueError, match="status"):
        await emulator.inject("rest_error", status=200)
    assert await post_fault(emulator, "name=rest_error&status=abc") == 400
    assert await post_fault(emulator, "name=rest_slow&delay=nan") == 400


async def test_rest_slow_delays_every_answer_then_recovers(make_emulator):
    emulator = await make_emulator(sim_rate=100)
    client = rest(emulator)
    await emulator.inject("rest_slow", seconds=0.6, delay=0.4)
    began = time.monotonic()
    assert (await call(client.get_market_status)).market == "open"
    assert time.monotonic() - began >= 0.4
    await asyncio.sleep(0.4)
    began = time.monotonic()
    await call(client.get_market_status)
    assert time.monotonic() - began < 0.3


async def test_rest_down_aborts_connections_then_recovers(make_emulator):
    emulator = await make_emulator(sim_rate=100)
    client = rest(emulator)
    await emulator.inject("rest_down", seconds=0.5)
    with pytest.raises(MaxRetryError):
        await call(client.get_market_status)
    reader, writer = await asyncio.open_connection("127.0.0.1", emulator.http.port)
    writer.write(f"GET /v1/marketstatus/now HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode())
    try:
        answer = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        answer = b""
    assert answer == b""  # closed without a word
    writer.close()
    assert metrics.REST_REQUESTS.labels("market_status", "aborted")._value.get() >= 2
    await asyncio.sleep(0.6)
    assert (await call(client.get_market_status)).market == "open"


async def test_rest_429_is_a_rate_limit_for_a_while(make_emulator):
    emulator = await make_emulator(sim_rate=100)
    await emulator.inject("rest_429", seconds=0.4)
    status, body = await get(emulator, "/v1/marketstatus/now")
    assert status == 429 and body["error"] == RATE_LIMITED
    with pytest.raises(MaxRetryError, match="429"):
        await call(rest(emulator).get_market_status)
    await asyncio.sleep(0.5)
    assert (await get(emulator, "/v1/marketstatus/now"))[0] == 200


async def test_pause_stops_the_market_and_resume_goes_on_with_no_burst_and_no_skip(make_emulator):
    speed = 10
    emulator = await make_emulator(sim_rate=1000, sim_symbols=100, sim_speed=speed)
    ledger, tape = emulator.ledger, emulator.source.tape
    await eventually(lambda: ledger.clock_ms > START_MS + 1000)
    await emulator.inject("pause")
    clock, head = ledger.clock_ms, tape.head
    await asyncio.sleep(0.5)
    assert (ledger.clock_ms, tape.head) == (clock, head)  # nothing generated, nothing sent
    _, ready = await get(emulator, "/readyz")
    assert ready["paused"] is True and ready["clock_ms"] == clock
    _, body = await get(emulator, "/v1/marketstatus/now")
    est = dt.timezone(dt.timedelta(hours=-5))
    assert body["serverTime"] == dt.datetime.fromtimestamp(clock / 1000, est).isoformat(timespec="seconds")
    await emulator.inject("resume")
    began = time.monotonic()
    await asyncio.sleep(0.3)
    advanced = (ledger.clock_ms - clock) / 1000
    elapsed = time.monotonic() - began
    # the clock goes on from where it stopped at the speed (a burst would add the 5 s paused)
    assert 0.5 * elapsed * speed <= advanced <= elapsed * speed + 1.0
    # a timed pause, over HTTP, resumes by itself
    assert await post_fault(emulator, "name=pause&seconds=0.3") == 200 and emulator.source.paused
    await eventually(lambda: not emulator.source.paused, within=2)


async def test_speed_runs_market_time_faster_than_wall_time(make_emulator):
    emulator = await make_emulator(sim_rate=200, sim_symbols=100, sim_speed=20)
    await eventually(lambda: emulator.ledger.clock_ms > START_MS)
    clock, began = emulator.ledger.clock_ms, time.monotonic()
    await asyncio.sleep(0.6)
    rate = (emulator.ledger.clock_ms - clock) / 1000 / (time.monotonic() - began)
    assert 14 <= rate <= 22


async def test_a_flat_out_pool_serves_its_ledger_and_cannot_pause(make_emulator):
    emulator = await make_emulator(sim_rate=0, sim_pool_events=5000)
    await eventually(lambda: emulator.source.ready)
    snapshot = await call(rest(emulator).get_snapshot_ticker, "stocks", "SPY")
    assert snapshot.day.volume > 0 and snapshot.prev_day.close > 0
    with pytest.raises(ValueError, match="paced"):
        await emulator.inject("pause")
    assert await post_fault(emulator, "name=pause") == 400


async def test_a_paced_replay_feeds_its_ledger_and_learns_previous_days(make_emulator, tmp_path):
    _, ticks = market(3, symbols=50)
    path = tmp_path / "day.mdrec"
    writer = RecordingWriter(path, {"market": "stocks", "started_ns": time.time_ns()})  # not the events' day
    trades: dict[str, list] = collections.defaultdict(list)
    for k, (frames, _) in enumerate(ticks):
        for frame in frames:
            writer.write((START_MS + 50 * k) * 1_000_000, frame.full)
            for e in stream_events([frame.full]):
                if e["ev"] == "T":
                    trades[e["sym"]].append(e)
    writer.close()
    emulator = await make_emulator(sim_replay=str(path), sim_replay_speed=100, sim_start_paused=True)
    collector = Collector(client_for(emulator, ALL_STOCKS))
    try:
        await eventually(lambda: emulator.clients and emulator.clients[0].pump is not None)
        await asyncio.sleep(0.2)
        assert emulator.source.tape.head == 0  # paused from the start: the replay waits
        await emulator.inject("resume")
        await eventually(lambda: emulator.source.finished, within=10)
    finally:
        await collector.close()
    snapshots = {s.ticker: s for s in await call(rest(emulator).get_snapshot_all, "stocks")}
    assert snapshots.keys() >= trades.keys()
    for sym, ts in trades.items():
        snap = snapshots[sym]
        assert (snap.day.volume, snap.day.transactions, snap.day.open) == (
            sum(t["s"] for t in ts),
            len(ts),
            ts[0]["p"],
        )
        assert abs(snap.prev_day.close / ts[0]["p"] - 1) < 0.3  # made from the first price seen
    grouped = await call(rest(emulator).get_grouped_daily_aggs, PREV_DATE)  # the events' previous day
    assert {g.ticker for g in grouped} == snapshots.keys()


async def test_mdpipe_sim_fault_passes_status_and_delay(make_emulator):
    """The command line's fault: ``--status`` and ``--delay`` reach the emulator, as over HTTP."""
    import os
    import sys

    emulator = await make_emulator(sim_rate=100)
    env = {**os.environ, "SIM_HTTP_PORT": str(emulator.http.port), "SIM_API_KEY": KEY, "LOG_LEVEL": "ERROR"}
    argv = [sys.executable, "-m", "mdpipe", "sim", "fault", "rest_error", "--status", "502", "--seconds", "5"]
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and orjson.loads(out)["fault"] == "rest_error"
    status, _ = await get(emulator, "/v1/marketstatus/now")
    assert status == 502
    argv = [sys.executable, "-m", "mdpipe", "sim", "fault", "rest_slow", "--delay", "0.4", "--seconds", "5"]
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.PIPE)
    await proc.communicate()
    began = time.monotonic()
    await get(emulator, "/v1/marketstatus/now")
    assert time.monotonic() - began >= 0.4
