"""Chart history end to end: real gateways, real Redis, and the vendor's own REST client (``massive``,
through ``mdpipe.rest.VendorRest``) against the emulator's REST API, its calls counted by the emulator.

Two ways, each test run both: ``mdp``, the gateways hold no key and ask the processes that do (here
``HistoryFetcher.serve`` alone, as MDP runs it) through Redis; ``wds``, each gateway holds the key."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from mdc.history import MINUTE_MS, mdc_bar
from mdc.historyfetch import HistoryFetcher
from mdc.names import Names
from mdc.tradingday import TradingDay
from mdpipe.rest import VendorRest
from mdpipe.settings import MassiveRestSettings, MdcSettings
from wds.server import Gateway

from .conftest import KEY, REDIS_URL, START, eventually
from .mdp_support import mdc_settings
from .wds_support import peer, running, token, url, wds_settings

DAY = START[:10]  # the emulator's trading day (its clock starts at START)
PREV_BOUNDS = TradingDay().bounds(TradingDay.previous(DAY))


def vendor_rest(base: str, **kw: Any) -> VendorRest:
    values: dict[str, Any] = {"massive_api_key": KEY, "massive_rest_url": base, "massive_rest_timeout_s": 2.0,
                              "massive_rest_retries": 0, "massive_rest_rate": 50.0}  # fmt: skip
    return VendorRest(MassiveRestSettings(**(values | kw)))


def range_calls() -> float:
    """The emulator's answers to ``list_aggs``, whatever their status."""
    total = 0.0
    for family in REGISTRY.collect():
        if family.name == "mdpipe_sim_rest_requests":
            total += sum(
                s.value for s in family.samples if s.name.endswith("_total") and s.labels["route"] == "range"
            )
    return total


@contextlib.asynccontextmanager
async def gateways(
    mode: str, base: str, mdc: MdcSettings, settings: Any = None, n: int = 1, servers: int = 1, **rest: Any
) -> AsyncIterator[list[Gateway]]:
    """``n`` gateways on ``mdc``; ``mdp``: ``servers`` processes hold the key and serve them, ``wds``:
    each gateway holds it. ``rest``: the REST settings (against ``base``)."""
    stop = asyncio.Event()
    clients = [Redis.from_url(REDIS_URL) for _ in range(servers if mode == "mdp" else 0)]
    tasks = [
        asyncio.create_task(
            HistoryFetcher(client, Names(mdc.mdc_prefix), vendor_rest(base, **rest), mdc, TradingDay()).serve(
                stop
            )
        )
        for client in clients
    ]
    try:
        async with contextlib.AsyncExitStack() as stack:
            made = [
                await stack.enter_async_context(
                    running(
                        settings or wds_settings(),
                        mdc,
                        rest=vendor_rest(base, **rest) if mode == "wds" else None,
                    )
                )
                for _ in range(n)
            ]
            await eventually(
                lambda: all(gw.readiness()[1]["rest"]["status"] != "off" for gw in made), within=5
            )
            yield made
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for client in clients:
            await client.aclose()


MODES = pytest.mark.parametrize("mode", ["mdp", "wds"])


@pytest.fixture
async def names(redis):
    made = Names(mdc_settings().mdc_prefix)
    await redis.set(made.day(), DAY)  # as the processors write it from the events' times
    yield made
    async for key in redis.scan_iter(match=f"{made.prefix}:*"):
        await redis.delete(key)


async def live_bar(redis, names: Names, sym: str, t: int) -> None:
    bar = {"t": t, "e": t + MINUTE_MS, "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 7, "vw": 1.0}
    await redis.zadd(names.bars_minute(sym), {orjson.dumps(bar): t})
    await redis.hset(names.seq_key(f"bars.{sym}"), f"bars.{sym}", 1)


@MODES
async def test_a_bars_snapshot_opens_with_the_vendors_bars_and_one_call_serves_every_client(
    emulator, redis, names, mode
):
    mdc = MdcSettings(mdc_prefix=names.prefix)
    now = TradingDay().bounds(DAY)[0] + 630 * MINUTE_MS  # 14:30 New York, today: a pipeline's own bar
    await live_bar(redis, names, "AAPL", now)
    before = range_calls()
    async with gateways(mode, emulator.rest_url, mdc, n=2) as (gw, other):
        a = await peer(url(gw, token(gw)))
        await a.send(action="subscribe", channels=["bars.AAPL"])
        await eventually(lambda: a.of("snapshot", "bars.AAPL"), within=10)
        minute = a.of("snapshot", "bars.AAPL")[0]["data"]["minute"]
        previous = [b for b in minute if PREV_BOUNDS[0] <= b["t"] < PREV_BOUNDS[1]]
        assert len(previous) == 390  # the previous trading day's regular session, 09:30-16:00
        assert minute[-1]["t"] == now and minute[-1]["c"] == 1.0  # the pipeline's own bar, newest
        assert [b["t"] for b in minute] == sorted({b["t"] for b in minute})
        assert range_calls() - before == 1
        # more clients, on this replica and on another one: no more calls
        clients = [await peer(url(gw, token(gw, subject=f"c{i}"))) for i in range(3)]
        clients.append(await peer(url(other, token(other, subject="elsewhere"))))
        for c in clients:
            await c.send(action="subscribe", channels=["bars.AAPL"])
        await eventually(lambda: all(c.of("snapshot", "bars.AAPL") for c in clients), within=10)
        assert all(c.of("snapshot", "bars.AAPL")[0]["data"]["minute"] == minute for c in clients)
        assert range_calls() - before == 1
        assert gw.readiness()[1]["rest"]["status"] == "ok"
        assert await redis.ttl(names.history("AAPL")) > 3000
        for c in [a, *clients]:
            await c.close()
    # the same bars as the vendor's, in the live bars' shape
    vendor = await vendor_rest(emulator.rest_url).minute_bars("AAPL", PREV_BOUNDS[0], PREV_BOUNDS[1] - 1)
    assert previous == [mdc_bar(v) for v in vendor]


@MODES
async def test_two_replicas_asked_at_once_make_one_call(emulator, redis, names, mode):
    mdc = MdcSettings(mdc_prefix=names.prefix)
    await emulator.inject("rest_slow", seconds=30, delay=1.0)  # the first call is still out when both ask
    before = range_calls()
    async with gateways(mode, emulator.rest_url, mdc, wds_settings(wds_history_wait_s=5), n=2, servers=2) as (
        one,
        two,
    ):
        peers = [await peer(url(gw, token(gw))) for gw in (one, two, one, two)]
        await asyncio.gather(*(p.send(action="subscribe", channels=["bars.NVDA"]) for p in peers))
        await eventually(lambda: all(p.of("snapshot", "bars.NVDA") for p in peers), within=10)
        assert all(len(p.of("snapshot", "bars.NVDA")[-1]["data"]["minute"]) >= 390 for p in peers)
        assert range_calls() - before == 1
        for p in peers:
            await p.close()


@MODES
async def test_an_unknown_ticker_is_remembered_and_not_asked_again(emulator, redis, names, mode):
    mdc = MdcSettings(mdc_prefix=names.prefix, mdc_history_miss_ttl_s=120)
    before = range_calls()
    async with gateways(mode, emulator.rest_url, mdc) as (gw,):
        for n in range(2):
            p = await peer(url(gw, token(gw)))
            await p.send(action="subscribe", channels=["bars.ZZZZQ"])
            await eventually(lambda p=p: p.of("snapshot", "bars.ZZZZQ"), within=10)
            assert p.of("snapshot", "bars.ZZZZQ")[0]["data"] is None, n
            await p.close()
        assert range_calls() - before == 1
        assert await redis.get(names.history_miss("ZZZZQ")) == b"unknown"
        assert 100 < await redis.ttl(names.history_miss("ZZZZQ")) <= 120
        assert gw.readiness()[1]["rest"]["status"] == "ok"  # the vendor answered: nothing is wrong


@MODES
@pytest.mark.parametrize("fault", ["rest_down", "rest_slow", "rest_error"])
async def test_a_vendor_down_slow_or_failing_gives_the_snapshot_without_history_quickly_then_recovers(
    emulator, redis, names, mode, fault
):
    mdc = MdcSettings(mdc_prefix=names.prefix)
    t = TradingDay().bounds(DAY)[0] + 630 * MINUTE_MS
    await live_bar(redis, names, "TSLA", t)
    settings = wds_settings(wds_history_wait_s=1.0)
    rest = {"massive_rest_timeout_s": 1.5, "massive_rest_backoff_max_s": 1}
    async with gateways(mode, emulator.rest_url, mdc, settings, **rest) as (gw,):
        await emulator.inject(fault, seconds=2.5, **({"delay": 5.0} if fault == "rest_slow" else {}))
        p = await peer(url(gw, token(gw)))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await p.send(action="subscribe", channels=["bars.TSLA", "stats.TSLA"])
        await eventually(lambda: p.of("snapshot", "bars.TSLA"), within=5)
        assert loop.time() - started < 1.5  # at most WDS_HISTORY_WAIT_S, whatever the vendor does
        assert [b["t"] for b in p.of("snapshot", "bars.TSLA")[0]["data"]["minute"]] == [t]  # live bars only
        # degraded, still ready: the stream flows
        await eventually(lambda: gw.readiness()[1]["rest"]["status"] == "degraded", within=10)
        ready, detail = gw.readiness()
        assert ready and detail["rest"]["error"]
        assert KEY not in str(detail)
        await p.close()
        # the fault ends; once the backoff has passed, the next subscription fetches the history
        await asyncio.sleep(2.6)

        async def fresh_snapshot_has_history() -> bool:
            q = await peer(url(gw, token(gw)))
            try:
                await q.send(action="subscribe", channels=["bars.TSLA"])
                await eventually(lambda: q.of("snapshot", "bars.TSLA"), within=5)
                return len(q.of("snapshot", "bars.TSLA")[-1]["data"]["minute"]) > 390
            finally:
                await q.close()

        await eventually(fresh_snapshot_has_history, within=10)
        await eventually(lambda: gw.readiness()[1]["rest"]["status"] == "ok", within=5)


async def test_without_a_serving_processor_history_is_off_and_nothing_waits(emulator, redis, names):
    mdc = MdcSettings(mdc_prefix=names.prefix)
    await live_bar(redis, names, "AAPL", TradingDay().bounds(DAY)[0])
    async with gateways("mdp", emulator.rest_url, mdc, wds_settings(wds_history_wait_s=5)) as (gw,):
        # the processor stops serving (its announcement is deleted): the gateway sees it within seconds
        await redis.delete(names.history_server())
        await eventually(lambda: gw.readiness()[1]["rest"] == {"status": "off"}, within=5)
        p = await peer(url(gw, token(gw)))
        started = asyncio.get_running_loop().time()
        await p.send(action="subscribe", channels=["bars.AAPL"])
        await eventually(lambda: p.of("snapshot", "bars.AAPL"), within=5)
        assert asyncio.get_running_loop().time() - started < 1.0  # no wait for an answer nobody gives
        assert len(p.of("snapshot", "bars.AAPL")[0]["data"]["minute"]) == 1
        assert await redis.llen(names.history_requests()) == 0
        await p.close()


async def test_an_unroutable_rest_url_gives_the_snapshot_without_history_quickly(redis, names):
    mdc = MdcSettings(mdc_prefix=names.prefix)
    await live_bar(redis, names, "AAPL", TradingDay().bounds(DAY)[0])
    rest = vendor_rest("http://10.255.255.1:9", massive_rest_timeout_s=3.0)  # nothing answers there
    async with running(wds_settings(wds_history_wait_s=0.5), mdc, rest=rest) as gw:
        p = await peer(url(gw, token(gw)))
        started = asyncio.get_running_loop().time()
        await p.send(action="subscribe", channels=["bars.AAPL"])
        await eventually(lambda: p.of("snapshot", "bars.AAPL"), within=5)
        assert asyncio.get_running_loop().time() - started < 1.0
        assert len(p.of("snapshot", "bars.AAPL")[0]["data"]["minute"]) == 1
        await eventually(lambda: gw.readiness()[1]["rest"]["status"] == "degraded", within=10)
        assert gw.readiness()[0]
        assert await redis.get(names.history_miss("AAPL")) == b"failed"
        await p.close()
