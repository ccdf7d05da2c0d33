"""What MDC on Redis Cluster will stand on, checked on a real local cluster (3 masters, 3 replicas):
hash tags put a symbol's keys and its sharded channels on one node; sharded pub/sub (Redis 7
``SPUBLISH``/``SSUBSCRIBE``) delivers a message only on the shard owning its slot; and the asyncio
cluster pub/sub of the redis-py version this project pins follows a master's ``kill -9`` (its replica
promoted): every subscription, the dead master's included, gets what is published after the failover."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import pytest
import redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from .cluster_support import LocalCluster

SYMBOLS = ("AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "GOOG", "BRK.B", "O:SPY251219C00650000")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    started = LocalCluster(masters=3, replicas=1).start()
    try:
        yield started
    finally:
        started.stop()


def test_a_symbols_keys_and_channels_share_one_slot_and_symbols_spread_over_the_masters(cluster):
    client = redis.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in cluster.startup_nodes]
    )
    try:
        owners = set()
        for sym in SYMBOLS:
            names = [f"md:{kind}:{{{sym}}}" for kind in ("trade", "trades", "quote", "stats", "bars1m")]
            names += [f"md:{kind}.{{{sym}}}" for kind in ("trades", "quotes", "stats", "bars")]
            slots = {client.keyslot(name) for name in names}
            assert len(slots) == 1, (sym, slots)
            owners.add(cluster.master_of(names[0]))
        assert len(owners) == 3  # these eight symbols already use every master
    finally:
        client.close()


async def test_sharded_pubsub_stays_on_its_shard_and_follows_a_failover(cluster):
    nodes = [ClusterNode(h, p) for h, p in cluster.startup_nodes]
    client = RedisCluster(startup_nodes=nodes)
    await client.initialize()
    pubsub = client.pubsub()
    channels = [f"md:stats.{{{sym}}}" for sym in SYMBOLS]
    await pubsub.ssubscribe(*channels)
    got: list[tuple[bytes, bytes]] = []

    async def read() -> None:
        while True:
            message = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=0.2)
            if message:
                got.append((message["channel"], message["data"]))

    reader = asyncio.create_task(read())
    try:
        await asyncio.sleep(0.5)
        for channel in channels:
            await client.spublish(channel, b"before")
        await wait_for(lambda: len(got) == len(channels))
        # each subscription lives on the master owning its slot, and only there
        aapl = channels[0]
        owner = cluster.master_of(aapl)
        for port in cluster.masters_now():
            counts = redis.Redis(port=port).execute_command("PUBSUB", "SHARDNUMSUB", aapl)
            assert counts[1] == (1 if port == owner else 0), (port, owner, counts)

        cluster.kill(owner)  # kill -9 of the master of AAPL's slot
        promoted_in = cluster.wait_promoted(owner)
        # pub/sub keeps nothing: what is published before a subscription moved to the promoted replica is
        # lost (so a gateway reads snapshots again); publish until every subscription has heard again
        started, heard = time.monotonic(), set()
        while heard != {c.encode() for c in channels}:
            assert time.monotonic() - started < 20, (heard, cluster.masters_now())
            with contextlib.suppress(redis.RedisError, OSError):  # until the client learns the new owner
                for channel in channels:
                    await client.spublish(channel, b"after")
            await asyncio.sleep(0.2)
            heard = {c for c, d in got if d == b"after"}
        assert promoted_in < 15
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await pubsub.aclose()
        await client.aclose()


async def wait_for(condition, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
