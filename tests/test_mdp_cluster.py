"""The processors on a real Redis Cluster (3 masters, 3 replicas, ``tests/cluster_support.py``): the known
sequence of ``test_mdp_service`` gives the same state, snapshots and (sharded) updates; and a master's
``kill -9`` mid-stream is survived with nothing acknowledged lost (every trade counted exactly once)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import aio_pika
import orjson
import pytest
from redis.asyncio.cluster import RedisCluster

from mdc.clusterpipe import command_key, split_commands, transactions
from mdc.connect import Target
from mdc.names import Names
from mdc.reader import Reader
from mdc.wire import command
from mdq import message as mdq_message

from . import test_mdp_service as service_tests
from .cluster_support import LocalCluster
from .conftest import RABBITMQ_URL, eventually, http
from .mdp_support import T0, ShardedUpdates, mdc_settings, mdp_settings, running
from .test_mdp_units import trade


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    started = LocalCluster(masters=3, replicas=1).start()
    yield started  # pytest runs the rest whatever the tests did
    started.stop()


@pytest.fixture
def target(cluster: LocalCluster) -> Target:
    return Target(cluster.url, tuple(cluster.startup_nodes))


@pytest.fixture
async def client(target: Target) -> AsyncIterator[RedisCluster]:
    redis = target.client()
    await redis.initialize()
    yield redis
    await redis.aclose()


def test_commands_are_routed_by_their_key():
    payload = command("SET", "md:stats:{AAPL}", "x") + command("EVAL", "return 1", 1, "md:{md}:day", "{}")
    payload += command("SPUBLISH", "md:stats.{AAPL}", "u") + command("HGET", "md:{md}:vavg", "AAPL")
    keys = [command_key(c) for c in split_commands(payload)]
    assert keys == [b"md:stats:{AAPL}", b"md:{md}:day", b"md:stats.{AAPL}", b"md:{md}:vavg"]
    body, n = transactions([[command("SET", "a", 1)], [command("SET", "b", 1)]], (1, 200))
    assert n == 7 and body.count(b"MULTI") == 2 and body.endswith(command("WAIT", 1, 200))


async def test_known_sequence_gives_exact_state_and_updates(mdq, client, target, monkeypatch):
    """``test_mdp_service``'s known sequence, run as it is with the processor on the cluster, the cluster
    client for the state and snapshots (``mdc.reader`` on a cluster) and a sharded subscriber."""
    channels = ["stats.AAPL", "trades.AAPL", "bars.AAPL", "quotes.AAPL", "leaders.gainers"]

    async def sharded_updates(redis: RedisCluster, names: Names) -> ShardedUpdates:
        updates = ShardedUpdates(redis, names, channels)
        await updates.start()
        return updates

    def on_cluster(mdq, mdc, mdp):
        return running(mdq, mdc, mdp, target)

    monkeypatch.setattr(service_tests, "updates_for", sharded_updates)
    monkeypatch.setattr(service_tests, "running", on_cluster)
    await service_tests.test_known_sequence_gives_exact_state_and_updates(mdq, client)


SYMBOLS = ("AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "GOOG")


async def test_a_master_killed_mid_stream_loses_nothing_acknowledged(mdq, client, target, cluster):
    """Trades stream in through RabbitMQ; the master of AAPL's slot is killed (-9) part way; MDP
    recovers by itself, and every trade is counted once: nothing acknowledged was lost, nothing twice."""
    mdc, mdp = mdc_settings(), mdp_settings()
    names = Names(mdc.mdc_prefix)
    messages = 400
    queue = f"{mdq.mdq_exchange}.trades"
    async with running(mdq, mdc, mdp, target) as service:
        connection = await aio_pika.connect(RABBITMQ_URL)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(mdq.mdq_exchange)
            victim = cluster.master_of(names.stats("AAPL"))
            killed_at = None
            for i in range(messages):
                body = [trade(sym, p=100.0 + i % 7, s=1 + i % 5, t=T0 + i * 10, q=i + 1) for sym in SYMBOLS]
                props = mdq_message.properties(
                    queue=queue,
                    cls="trades",
                    count=len(SYMBOLS),
                    recv_ns=time.time_ns(),
                    source="failover",
                    seq=i + 1,
                )
                message = aio_pika.Message(orjson.dumps(body), headers=props.headers, delivery_mode=2)
                await exchange.publish(message, routing_key=queue)
                if i == messages // 3:
                    await asyncio.to_thread(cluster.kill, victim)
                    killed_at = time.monotonic()
                await asyncio.sleep(0.01)
        promoted = await asyncio.to_thread(cluster.wait_promoted, victim)
        assert killed_at is not None and promoted < 30
        volume = sum(1 + i % 5 for i in range(messages))
        reader = Reader(client, names)

        async def all_counted() -> bool:
            try:
                docs = [await reader.stats(sym) for sym in SYMBOLS]
            except Exception:  # the client finds the new master on its own
                return False
            return all(d is not None and d["trades"] >= messages for d in docs)

        await eventually(all_counted, within=60)
        await asyncio.sleep(0.5)  # anything counted twice would show now
        docs = {sym: await reader.stats(sym) for sym in SYMBOLS}
        assert {s: (d["trades"], d["volume"]) for s, d in docs.items()} == dict.fromkeys(
            SYMBOLS, (messages, volume)
        )

        async def ready() -> bool:
            return (await http(service.http.port, "GET", "/readyz"))[0] == 200

        await eventually(ready, within=30)
        status, _, body = await http(service.http.port, "GET", "/metrics")
        assert status == 200 and b"mdpipe_mdp_redis_ok 1.0" in body
        assert service.cluster is not None and service.cluster.discoveries >= 2  # it found the new master
        assert service.consumer.stats.retried >= 1 or service.redis_error is None
