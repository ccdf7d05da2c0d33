"""Hydration end to end: the emulator's market, two pipelines (listener and processor each) on one feed,
the real massive clients (WebSocket and REST), RabbitMQ and Redis.

The reference pipeline runs from the market's open and never hydrates; the other starts ten minutes of
market time later, loses its vendor connection, sheds messages under load, and meets a REST API that
fails in every way the vendor's can. Whenever the market is paused and both have applied everything,
every symbol's day volume, trade count, high, low and open are the same in both, exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import orjson
import pytest
from redis.asyncio import Redis

from mdc.names import Names
from mdc.tradingday import TradingDay
from mdl.listener import Listener
from mdp.service import ProcessorService
from mdpipe.settings import (
    MassiveRestSettings,
    MassiveSettings,
    MdcSettings,
    MdlSettings,
    MdpSettings,
    MdqSettings,
)
from mdq import topology
from sim.server import Emulator

from .conftest import KEY, RABBITMQ_URL, REDIS_URL, eventually
from .mdp_support import clean
from .proxy_support import Proxy

SPEED = 60  # ten minutes of market in ten seconds
COMPARED = ("volume", "trades", "high", "low", "open")


def market_open_today() -> str:
    """09:30 New York on the trading day of now: the market's day is the wall clock's, as with the real
    feed, and ten minutes after it stay far from the 04:00 day boundary."""
    day = TradingDay()(time.time_ns() // 1_000_000)
    return f"{day}T14:30:00Z"


class Pipeline:
    """A listener and processors (one per item of ``mdp``) on MDQ and MDC names of their own."""

    def __init__(
        self,
        name: str,
        emulator: Emulator,
        *,
        feed: str,
        hydrate: bool,
        mdp: list[dict[str, Any]],
        **mdq: Any,
    ) -> None:
        self.name = name
        self.mdq = MdqSettings(mdq_exchange=f"test-{uuid.uuid4().hex[:10]}", **mdq)
        self.mdc = MdcSettings(mdc_prefix=f"t{uuid.uuid4().hex[:10]}")
        self.names = Names(self.mdc.mdc_prefix)
        self.listener = Listener(
            MassiveSettings(massive_api_key=KEY, massive_feed=feed, massive_tls="false"), self.mdq,
            MdlSettings(mdl_http_port=0, mdl_backoff_initial_s=0.05, mdl_backoff_max_s=0.3),
            rabbitmq_url=RABBITMQ_URL, redis_url=None,
        )  # fmt: skip
        rest = MassiveRestSettings(
            massive_api_key=KEY, massive_rest_url=f"http://127.0.0.1:{emulator.http.port}",
            massive_rest_timeout_s=3, massive_rest_retries=0, massive_rest_backoff_max_s=1,
        )  # fmt: skip
        self.services = [
            ProcessorService(self.mdq, self.mdc, MdpSettings(**{
                "mdp_http_port": 0, "mdp_plugins": "", "mdp_instance": f"{name}-{i}", "mdp_hydrate": hydrate,
                "mdp_hydrate_interval_s": 0.3, **overrides,
            }), rabbitmq_url=RABBITMQ_URL, redis_url=REDIS_URL, rest=rest)
            for i, overrides in enumerate(mdp)
        ]  # fmt: skip
        self.service = self.services[0]
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> Pipeline:
        for service in self.services:
            self.tasks.append(asyncio.create_task(service.run(self.stop)))
            await eventually(lambda s=service: s.consumer.connected, within=10)
        self.tasks.append(asyncio.create_task(self.listener.run(self.stop)))
        await eventually(lambda: self.listener.readiness()[0], within=10)
        return self

    async def close(self) -> None:
        self.stop.set()
        for task in self.tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)

    @property
    def hydration(self) -> dict[str, Any]:
        return self.service.readiness()[1]["hydration"]

    @property
    def events(self) -> int:
        return sum(s.events for s in self.services)

    async def day_stats(self, redis: Redis) -> dict[str, dict[str, Any]]:
        keys = [k async for k in redis.scan_iter(match=self.names.stats("*"), count=1000)]
        docs = await redis.mget(keys) if keys else []
        return {orjson.loads(doc)["sym"]: orjson.loads(doc) for doc in docs if doc}

    async def queued(self) -> int:
        connection = await aio_pika.connect(RABBITMQ_URL)
        async with connection:
            channel = await connection.channel()
            total = 0
            for name in topology.queue_names(self.mdq.mdq_exchange, self.mdq.mdq_shards):
                queue = await channel.declare_queue(name, passive=True)
                total += queue.declaration_result.message_count or 0
            return total


@pytest.fixture
async def world(make_emulator) -> AsyncIterator[Any]:
    """The emulator (paused at the open), the reference pipeline (connected before the first event),
    and a factory of the late pipeline; all stopped and cleaned at the end."""
    emulator = await make_emulator(
        sim_start=market_open_today(), sim_speed=SPEED, sim_rate=100, sim_tick_ms=1000, sim_symbols=200,
        sim_start_paused=True, sim_max_connections=0,
    )  # fmt: skip
    proxy = await Proxy("127.0.0.1", emulator.port).start()
    made: list[Pipeline] = []

    async def pipeline(
        name: str, *, via_proxy: bool, hydrate: bool, mdp: list[dict[str, Any]] | None = None, **mdq: Any
    ) -> Pipeline:
        feed = f"127.0.0.1:{proxy.port}" if via_proxy else emulator.feed
        p = Pipeline(name, emulator, feed=feed, hydrate=hydrate, mdp=mdp or [{}], **mdq)
        made.append(p)
        return await p.start()

    reference = await pipeline("reference", via_proxy=False, hydrate=False)
    await eventually(
        lambda: emulator.clients and all(c.pump is not None for c in emulator.clients), within=10
    )
    await emulator.inject("resume")
    redis = Redis.from_url(REDIS_URL)
    try:
        yield emulator, proxy, reference, pipeline, redis
    finally:
        for p in made:
            await p.close()
            await clean(redis, p.mdc.mdc_prefix)
        await redis.aclose()
        await proxy.close()
        from .conftest import delete_mdq

        await delete_mdq(*(p.mdq for p in made))


async def settled(emulator: Emulator, *pipelines: Pipeline) -> None:
    """Pause the market and wait until every pipeline has applied all it was sent."""
    await emulator.inject("pause")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    last: tuple[int, ...] = ()
    quiet_since = loop.time()
    while True:
        counts = tuple(p.events for p in pipelines)
        if counts != last:
            last, quiet_since = counts, loop.time()
        elif loop.time() - quiet_since > 1.0 and not [p for p in pipelines if await p.queued()]:
            return
        assert loop.time() < deadline, "the pipelines did not settle"
        await asyncio.sleep(0.1)


async def assert_same_day(redis: Redis, reference: Pipeline, late: Pipeline) -> None:
    expected, got = await reference.day_stats(redis), await late.day_stats(redis)
    assert len(expected) > 100, len(expected)  # most of the 200 symbols traded
    wrong = {}
    for sym, doc in expected.items():
        mine = got.get(sym, {})
        diff = {k: (doc.get(k), mine.get(k)) for k in COMPARED if doc.get(k) != mine.get(k)}
        if diff:
            wrong[sym] = diff
    assert not wrong, f"{len(wrong)} symbols differ, e.g. {list(wrong.items())[:3]}"
    # the late one also knows every previous close (the reference never asked)
    assert all(got[sym].get("change_from") == "prev_close" for sym in expected)


async def test_a_late_start_reconnects_and_rest_failures_end_with_the_state_of_an_always_on_pipeline(
    world, caplog
):
    caplog.set_level(logging.DEBUG)
    emulator, proxy, reference, pipeline, redis = world
    await asyncio.sleep(600 / SPEED)  # ten minutes of market time

    # started late, while the REST API answers 503: the stream flows, readiness says degraded
    await emulator.inject("rest_error", 3.0, status=503)
    late = await pipeline("late", via_proxy=True, hydrate=True)
    await eventually(lambda: late.service.events > 0 and late.hydration["status"] == "degraded", within=10)
    ready, detail = late.service.readiness()
    assert ready and detail["hydration"]["rest"]["status"] == "degraded"
    began = time.monotonic()
    await eventually(lambda: late.hydration["done"] >= 1, within=15)  # the fault ends after 3 s
    assert time.monotonic() - began < 8
    await settled(emulator, reference, late)
    await assert_same_day(redis, reference, late)
    await emulator.inject("resume")

    # the vendor connection drops for two minutes of market time, each time with the REST API failing
    # another way; after each, the state is the reference's again
    for fault, options in (("rest_slow", {"delay": 1.0}), ("rest_429", {}), ("rest_down", {})):
        done = late.hydration["done"]
        await asyncio.sleep(0.5)
        proxy.cut()
        await emulator.inject(fault, 2.5, **options)
        await asyncio.sleep(2.0)
        proxy.mend()
        await eventually(lambda: late.hydration["done"] > done, within=20)  # noqa: B023 - awaited here
        assert late.service.hydration.reasons["reconnect"] >= 1
        await settled(emulator, reference, late)
        await assert_same_day(redis, reference, late)
        await emulator.inject("resume")
    # every failure was logged, and never with the vendor key (websockets' own DEBUG lines show the
    # listener's auth frame: the components' log formatter scrubs registered secrets from those)
    ours = [r for r in caplog.records if r.name.split(".")[0] in ("mdp", "mdpipe", "mdc", "mdq", "mdl")]
    assert any(r.getMessage() == "hydration failed, retrying" for r in ours)
    assert not [r for r in ours if KEY in r.getMessage() or KEY in repr(vars(r))]


async def test_queues_that_shed_messages_under_load_end_with_the_state_of_an_always_on_pipeline(world):
    emulator, _, reference, pipeline, redis = world
    await asyncio.sleep(60 / SPEED)
    late = await pipeline(
        "loaded", via_proxy=True, hydrate=True, mdp=[{"mdp_prefetch": 1}], mdq_max_length=10
    )
    await eventually(lambda: late.hydration["done"] >= 1, within=15)

    # the processor slows down for a while: its queues overflow and drop their oldest messages
    commit = late.service.commit

    async def slow(work: Any) -> None:
        await asyncio.sleep(1.0)  # a message a second (the prefetch is 1): far below what comes
        await commit(work)

    late.service.commit = slow  # type: ignore[method-assign]
    gaps = late.service.consumer.stats.seq_gaps
    await asyncio.sleep(4.0)
    late.service.commit = commit  # type: ignore[method-assign]
    assert late.service.consumer.stats.seq_gaps > gaps  # it did shed
    done = late.hydration["done"]
    await eventually(lambda: late.hydration["done"] > done, within=15)
    await settled(emulator, reference, late)
    assert late.service.hydration.reasons["gap"] >= 1
    await assert_same_day(redis, reference, late)


async def test_processors_sharing_the_market_by_shard_each_hydrate_their_own_symbols(world):
    emulator, _, reference, pipeline, redis = world
    await asyncio.sleep(120 / SPEED)
    classes = ("trades", "aggregates", "quotes")
    shards = [{"mdp_classes": ",".join(f"{c}.{i}" for c in classes)} for i in range(2)]
    late = await pipeline("sharded", via_proxy=True, hydrate=True, mdp=shards, mdq_shards=2)
    for service in late.services:
        await eventually(lambda s=service: s.hydration.done >= 1, within=15)
    await settled(emulator, reference, late)
    await assert_same_day(redis, reference, late)
    # each merged the symbols of its own shard only: the two halves of the market, no overlap
    merged = [s.hydration.last["symbols"] for s in late.services]  # type: ignore[index]
    assert all(m > 0 for m in merged) and sum(merged) == late.services[0].hydration.last["tickers"]  # type: ignore[index]
