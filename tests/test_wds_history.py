"""Chart history against real Redis, a stand-in answering for the vendor: the fetcher
(``mdc.historyfetch``: one vendor call per symbol across processes, the miss markers, the backoff after a
failure, the requests it serves) and the gateway (``wds.history``: the bars snapshot with its history,
the wait, the fresh snapshot when it comes late). Against the emulator's REST API, through the real
``massive`` client: ``test_wds_history_e2e.py``."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from mdc.history import MINUTE_MS
from mdc.historyfetch import HistoryFetcher
from mdc.names import Names
from mdc.tradingday import TradingDay
from mdpipe.rest import RestError
from mdpipe.settings import MassiveRestSettings, MdcSettings

from .conftest import eventually
from .mdp_support import mdc_settings
from .wds_support import Market, peer, running, token, url, wds_settings

DAY = "2026-11-20"
NY = TradingDay()
T0 = NY.bounds(DAY)[0] + 330 * MINUTE_MS  # 09:30 New York


def vendor_bars(n: int, t0: int = T0) -> list[dict[str, Any]]:
    return [{"o": 10, "h": 11, "l": 9, "c": 10.5, "v": 100 + i, "vw": 10.2, "n": 4, "t": t0 + i * MINUTE_MS}
            for i in range(n)]  # fmt: skip


class StubRest:
    """Stands for ``mdpipe.rest.VendorRest``: answers ``bars`` after ``delay`` s, or raises ``error``;
    counts the calls."""

    def __init__(
        self, bars: list[dict[str, Any]], *, delay: float = 0.0, error: RestError | None = None
    ) -> None:
        self.settings = MassiveRestSettings(massive_api_key="k", massive_rest_backoff_max_s=4)
        self.bars, self.delay, self.error = bars, delay, error
        self.enabled = True
        self.status = "ok"
        self.calls: list[tuple[str, int, int]] = []

    def readiness(self) -> dict[str, Any]:
        return {"status": self.status}

    async def minute_bars(self, sym: str, start: int, end: int) -> list[dict[str, Any]]:
        self.calls.append((sym, start, end))
        await asyncio.sleep(self.delay)
        if self.error is not None:
            self.status = "degraded"
            raise self.error
        self.status = "ok"
        return self.bars


@pytest.fixture
async def names(redis):
    made = Names(mdc_settings().mdc_prefix)
    await redis.set(made.day(), DAY)  # the market's day, as the processors write it
    yield made
    async for key in redis.scan_iter(match=f"{made.prefix}:*"):
        await redis.delete(key)


def fetcher(redis, names: Names, rest: StubRest, clock: Any = None, **mdc: Any) -> HistoryFetcher:
    kw = {"clock": clock} if clock else {}
    return HistoryFetcher(redis, names, rest, MdcSettings(mdc_prefix=names.prefix, **mdc), NY, **kw)  # type: ignore[arg-type]


async def missing(redis, names: Names, *syms: str) -> list[str]:
    return [s for s in syms if not await redis.exists(names.history(s), names.history_miss(s))]


async def test_a_fetch_stores_the_bars_asked_from_the_previous_days_start_with_a_ttl(redis, names):
    rest = StubRest(vendor_bars(30))
    h = fetcher(redis, names, rest, mdc_history_bars=20, mdc_history_ttl_s=600)
    task = h.fetch("AAPL")
    assert h.fetch("AAPL") is task  # one fetch per symbol in flight in a process
    assert await task is True
    assert rest.calls == [("AAPL", NY.bounds("2026-11-19")[0], NY.bounds(DAY)[1] - 1)]
    stored = await redis.zrange(names.history("AAPL"), 0, -1, withscores=True)
    assert len(stored) == 20  # MDC_HISTORY_BARS: the newest
    first = orjson.loads(stored[0][0])
    assert first == {"t": T0 + 10 * MINUTE_MS, "e": T0 + 11 * MINUTE_MS, "o": 10, "h": 11, "l": 9, "c": 10.5,
                     "v": 110, "vw": 10.2}  # fmt: skip
    assert stored[0][1] == first["t"]
    assert 590 <= await redis.ttl(names.history("AAPL")) <= 600
    assert await missing(redis, names, "AAPL", "MSFT") == ["MSFT"]
    assert not h.fetching


async def test_two_replicas_asking_at_once_make_one_call(redis, names):
    rest_a, rest_b = StubRest(vendor_bars(5), delay=0.5), StubRest(vendor_bars(5), delay=0.5)
    a, b = fetcher(redis, names, rest_a), fetcher(redis, names, rest_b)
    got = await asyncio.gather(a.fetch("NVDA"), b.fetch("NVDA"))
    assert got == [True, True]
    assert len(rest_a.calls) + len(rest_b.calls) == 1
    assert await redis.zcard(names.history("NVDA")) == 5
    assert not await redis.exists(names.history_lock("NVDA"))  # released


async def test_an_unknown_symbol_is_remembered_for_the_miss_ttl(redis, names):
    for rest in (StubRest([]), StubRest([], error=RestError("HTTP error: not found", 404))):
        h = fetcher(redis, names, rest, mdc_history_miss_ttl_s=30)
        assert await h.fetch("NOPE") is False
        assert await redis.get(names.history_miss("NOPE")) == b"unknown"
        assert 25 <= await redis.ttl(names.history_miss("NOPE")) <= 30
        assert await missing(redis, names, "NOPE") == []  # no second call until it expires
        assert h.retry_at == 0.0  # the vendor answered: no backoff
        await redis.delete(names.history_miss("NOPE"))


async def test_a_failure_backs_off_then_a_later_request_tries_again(redis, names):
    now = [100.0]
    rest = StubRest([], error=RestError("HTTP 503", 503))
    h = fetcher(redis, names, rest, clock=lambda: now[0])
    assert await h.fetch("AAPL") is False
    assert rest.status == "degraded" and h.readiness() == {"status": "degraded"}
    assert await redis.get(names.history_miss("AAPL")) == b"failed"
    delay = h.retry_at - now[0]
    assert 0.5 <= delay <= 1.0  # the first delay of the backoff
    assert 0 < await redis.pttl(names.history_miss("AAPL")) <= delay * 1000 + 1
    assert h.fetch("MSFT") is None  # backing off: no call for any symbol
    assert len(rest.calls) == 1
    now[0] += delay
    assert await h.fetch("MSFT") is False  # tried again, failed again: a longer wait
    assert 1.0 <= h.retry_at - now[0] <= 2.0
    now[0] = h.retry_at
    rest.error, rest.bars = None, vendor_bars(3)
    assert await missing(redis, names, "MSFT", "AMZN") == ["AMZN"]  # the others wait as long for MSFT
    assert await h.fetch("AMZN") is True
    assert rest.status == "ok" and h.retry_at == 0.0 and h.backoff.attempts == 0
    assert len(rest.calls) == 3


async def test_a_replica_waiting_on_a_lock_whose_holder_died_asks_itself(redis, names):
    rest = StubRest(vendor_bars(2))
    h = fetcher(redis, names, rest)
    # a dead replica's lock, expiring in 0.5 s
    await redis.set(names.history_lock("TSLA"), "dead-replica", px=500)
    assert await h.fetch("TSLA") is True
    assert len(rest.calls) == 1


# -- the gateway ----------------------------------------------------------------------------------------


async def live_bars(redis, names: Names, sym: str, starts: list[int], c: float = 20.0) -> None:
    bars = [{"t": t, "e": t + MINUTE_MS, "o": c, "h": c, "l": c, "c": c, "v": 1, "vw": c} for t in starts]
    await redis.zadd(names.bars_minute(sym), {orjson.dumps(b): b["t"] for b in bars})
    await redis.hset(names.seq_key(f"bars.{sym}"), f"bars.{sym}", 3)


async def test_a_bars_snapshot_carries_the_history_and_a_second_subscriber_makes_no_call(redis, names):
    rest = StubRest(vendor_bars(40), delay=0.2)
    await live_bars(redis, names, "AAPL", [T0 + i * MINUTE_MS for i in range(35, 45)])
    mdc = MdcSettings(mdc_prefix=names.prefix)
    async with running(wds_settings(wds_history_wait_s=5), mdc, rest=rest) as gw:  # type: ignore[arg-type]
        a = await peer(url(gw, token(gw)))
        started = asyncio.get_running_loop().time()
        await a.send(action="subscribe", channels=["bars.AAPL", "stats.AAPL"], id=1)
        await eventually(lambda: a.of("snapshot", "bars.AAPL"))
        waited = asyncio.get_running_loop().time() - started
        # the other channel did not wait for the history
        assert a.events.index(a.of("snapshot", "stats.AAPL")[0]) < a.events.index(
            a.of("snapshot", "bars.AAPL")[0]
        )
        snap = a.of("snapshot", "bars.AAPL")[0]
        assert snap["seq"] == 3 and 0.2 <= waited < 2
        minute = snap["data"]["minute"]
        assert [b["t"] for b in minute] == [T0 + i * MINUTE_MS for i in range(45)]
        assert [b["c"] for b in minute] == [10.5] * 35 + [20.0] * 10  # the live bars win
        b = await peer(url(gw, token(gw, subject="bob")))
        await b.send(action="subscribe", channels=["bars.AAPL"])
        await eventually(lambda: b.of("snapshot", "bars.AAPL"))
        assert b.of("snapshot", "bars.AAPL")[0]["data"] == snap["data"]
        assert len(rest.calls) == 1
        ready = gw.readiness()
        assert ready[0] and ready[1]["rest"] == {"status": "ok"}
        for p in (a, b):
            await p.close()


async def test_a_slow_vendor_gives_a_snapshot_without_history_then_a_fresh_one_with_it(redis, names):
    rest = StubRest(vendor_bars(20), delay=1.5)
    await live_bars(redis, names, "MSFT", [T0 + 30 * MINUTE_MS])
    mdc = MdcSettings(mdc_prefix=names.prefix)
    async with running(wds_settings(wds_history_wait_s=0.3), mdc, rest=rest) as gw:  # type: ignore[arg-type]
        a = await peer(url(gw, token(gw)))
        started = asyncio.get_running_loop().time()
        await a.send(action="subscribe", channels=["bars.MSFT"])
        await eventually(lambda: a.of("snapshot", "bars.MSFT"))
        assert asyncio.get_running_loop().time() - started < 1.0
        first = a.of("snapshot", "bars.MSFT")[0]
        assert len(first["data"]["minute"]) == 1 and first["resync"] is False
        # a second client meanwhile joins the same fetch (no second call) and waits as long
        b = await peer(url(gw, token(gw, subject="bob")))
        await b.send(action="subscribe", channels=["bars.MSFT"])
        await eventually(lambda: len(a.of("snapshot", "bars.MSFT")) == 2, within=5)
        fresh = a.of("snapshot", "bars.MSFT")[1]
        assert fresh["resync"] is True and len(fresh["data"]["minute"]) == 21
        # its snapshot after the wait went without history too: the fresh one follows
        await eventually(lambda: [len(e["data"]["minute"]) for e in b.of("snapshot")][-1:] == [21], within=5)
        assert len(rest.calls) == 1
        for p in (a, b):
            await p.close()


async def test_without_a_key_there_is_no_history_and_rest_is_off(redis, names):
    from mdpipe.rest import VendorRest

    off = VendorRest(MassiveRestSettings(massive_api_key=None))
    await live_bars(redis, names, "AAPL", [T0])
    async with running(wds_settings(), MdcSettings(mdc_prefix=names.prefix), rest=off) as gw:
        # nobody serves the requests either: history is off, nothing is asked
        assert gw.history.fetcher is None and gw.readiness()[1]["rest"] == {"status": "off"}
        a = await peer(url(gw, token(gw)))
        await a.send(action="subscribe", channels=["bars.AAPL"])
        await eventually(lambda: a.of("snapshot", "bars.AAPL"))
        assert len(a.of("snapshot", "bars.AAPL")[0]["data"]["minute"]) == 1
        assert not await redis.exists(names.history_miss("AAPL"), names.history_lock("AAPL"))
        assert not await redis.exists(names.history_requests())
        await a.close()


async def test_snapshots_of_many_charts_at_once_do_not_make_a_client_slow(redis, names):
    """Eight bars channels with two days of bars are some 1.6 MB of snapshots, above the 1 MiB buffer:
    updates arriving before they are written do not get the client closed as slow."""
    starts = [T0 + i * MINUTE_MS for i in range(1920)]
    bars = {orjson.dumps({"t": t, "e": t + MINUTE_MS, "o": 10.0, "h": 10.1, "l": 9.9, "c": 10.0, "v": 12345,
                          "vw": 10.0}): t for t in starts}  # fmt: skip
    syms = [f"S{i}" for i in range(8)]
    for sym in syms:
        await redis.zadd(names.history(sym), bars)
    market = Market(redis, names)
    async with running(wds_settings(), MdcSettings(mdc_prefix=names.prefix)) as gw:
        p = await peer(url(gw, token(gw)))
        storming = True

        async def storm() -> None:
            n = 0
            while storming:
                await market.stats("S0", n)
                n += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(storm())
        try:
            await p.send(action="subscribe", channels=[f"bars.{s}" for s in syms] + ["stats.S0"])
            await eventually(lambda: len(p.of("snapshot")) == 9 or p.close_code, within=10)
            await eventually(lambda: len(p.of("update", "stats.S0")) > 50 or p.close_code)
        finally:
            storming = False
            await task
        assert p.close_code is None
        assert all(
            len(e["data"]["minute"]) == 1920 for e in p.of("snapshot") if e["channel"].startswith("bars.")
        )
        await p.close()
