"""Helpers for the processor tests: settings on a prefix of the test's own, raw MDQ messages, and a
running processor service."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from mdc.connect import Target
from mdc.envelope import Update, decode
from mdc.names import Names
from mdp.plugins import load as load_plugins
from mdp.service import ProcessorService
from mdpipe.settings import MdcSettings, MdpSettings, MdqSettings
from mdq import message as mdq_message

from .conftest import RABBITMQ_URL, REDIS_URL

T0 = 1_763_649_000_000  # 2025-11-20 09:30 New York, in ms
_seq = itertools.count(1)


def mdc_settings(**overrides: Any) -> MdcSettings:
    return MdcSettings(mdc_prefix=f"t{uuid.uuid4().hex[:10]}", **overrides)


def mdp_settings(**overrides: Any) -> MdpSettings:
    values: dict[str, Any] = {"mdp_http_port": 0, "mdp_plugins": "", "mdp_alert_warmup_s": 0}
    values.update(overrides)
    return MdpSettings(**values)


async def send(
    mdq: MdqSettings,
    queue: str,
    body: Any,
    *,
    seq: int | None = None,
    source: str = "test",
    recv_ns: int | None = None,
    headers: dict[str, Any] | None = None,
) -> None:
    """Publish one MDQ message to ``queue`` (a class name or a full queue name) as the listener would;
    ``body`` is a list of events (encoded here) or raw bytes; ``headers`` replaces the MDQ headers."""
    name = queue if queue.startswith(mdq.mdq_exchange + ".") else f"{mdq.mdq_exchange}.{queue}"
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    if headers is None:
        props = mdq_message.properties(
            queue=name,
            cls=name.split(".")[1],
            count=len(body) if isinstance(body, list) else 0,
            recv_ns=recv_ns or time.time_ns(),
            source=source,
            seq=next(_seq) if seq is None else seq,
        )
        headers = props.headers
    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(mdq.mdq_exchange)
        await exchange.publish(aio_pika.Message(data, headers=headers, delivery_mode=1), routing_key=name)


class Updates:
    """Every update published under a prefix (a pattern subscription), decoded, in arrival order."""

    def __init__(self, redis: Redis, names: Names) -> None:
        self.redis, self.names = redis, names
        self.items: list[Update] = []
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await self._ready.wait()

    async def _run(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.psubscribe(self.names.prefix + ":*")
        self._ready.set()
        async for message in pubsub.listen():
            if message["type"] == "pmessage":
                self.items.append(decode(message["data"]))

    def on(self, channel: str) -> list[Update]:
        return [u for u in self.items if u.channel == channel]

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class ShardedUpdates(Updates):
    """On a Redis Cluster: every update on ``channels`` (client names, ``stats.AAPL``), heard with
    SSUBSCRIBE on the masters owning them (sharded pub/sub has no patterns)."""

    def __init__(self, redis: RedisCluster, names: Names, channels: list[str]) -> None:
        super().__init__(redis, names)  # type: ignore[arg-type]
        self.channels = [names.redis_channel(c) for c in channels]

    async def _run(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.ssubscribe(*self.channels)
        self._ready.set()
        while True:
            message = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=0.2)
            if message and message["type"] == "smessage":
                self.items.append(decode(message["data"]))


async def clean(redis: Redis | RedisCluster, prefix: str) -> None:
    keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]
    if isinstance(redis, RedisCluster):  # the keys span slots: one by one
        for key in keys:
            await redis.delete(key)
    elif keys:
        await redis.delete(*keys)


@contextlib.asynccontextmanager
async def running(
    mdq: MdqSettings, mdc: MdcSettings, mdp: MdpSettings, target: Target | None = None
) -> AsyncIterator[ProcessorService]:
    """A processor service, started and connected; stopped (and its keys deleted) at the end. ``target``:
    where MDC lives (a Redis Cluster), the tests' Redis when not given."""
    service = ProcessorService(
        mdq, mdc, mdp, rabbitmq_url=RABBITMQ_URL, redis_url=target or REDIS_URL,
        plugins=load_plugins(mdp.plugin_names, mdp),
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.consumer.ready.wait(), 10)
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        cleaner = (target or Target(REDIS_URL)).client()
        await clean(cleaner, mdc.mdc_prefix)
        await cleaner.aclose()
