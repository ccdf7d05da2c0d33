"""The MDC subscriber on a real local Redis Cluster (3 masters, 3 replicas): ``mdc.topology`` read from
hand-built and real replies, sharded subscriptions spread over every master, patterns refused, and a
master's ``kill -9``: the subscriber follows the promoted replica, says it resubscribed, and hears again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from mdc import envelope
from mdc.connect import Target
from mdc.names import Names
from mdc.subscriber import Subscriber
from mdc.topology import Topology, discover, key_slot, node_url
from mdpipe.backoff import Backoff
from tests.conftest import eventually

from . import test_mdc_cluster, test_mdc_subscriber
from .cluster_support import LocalCluster

cluster = test_mdc_cluster.cluster  # the module's one local cluster (a fixture)
start = test_mdc_subscriber.start  # ``await start(sub)``: run in a task until connected (a fixture)
SYMBOLS = ("AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "GOOG", "BRK.B")  # over all 3 masters


def target_of(cluster: LocalCluster) -> Target:
    return Target("redis://", tuple(cluster.startup_nodes))


@pytest.fixture
async def client(cluster) -> AsyncIterator[RedisCluster]:
    rc = target_of(cluster).client()
    await rc.initialize()
    yield rc
    await rc.aclose()


def subscriber(cluster: LocalCluster, prefix: str, **kw: Any) -> Subscriber:
    kw.setdefault("backoff", Backoff(0.1, 0.5, 60.0))
    return Subscriber(target_of(cluster), prefix, client_name=f"mdc-test-{prefix}", **kw)


async def spublish(rc: RedisCluster, names: Names, channel: str, seq: int) -> int:
    ts = 1763649000000 + seq
    body = envelope.encode("stats", channel, seq, ts, ts + 1, "test:1", {"n": seq})
    return int(await rc.spublish(names.redis_channel(channel), body))


# -- mdc.topology, pure -----------------------------------------------------------------------------------


def test_key_slot_and_topology_from_hand_built_replies():
    assert key_slot("md:stats.{AAPL}") == key_slot(b"md:stats:{AAPL}") == key_slot("AAPL")
    slots = [[0, 5460, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
             [5461, 10922, [b"", 7001, b"id2"]], [10923, 16383, [b"10.0.0.3", 7002, b"id3"]]]  # fmt: skip
    topology = Topology.from_slots(slots, default_host="10.0.0.2")
    assert topology.complete
    assert topology.master(0) == ("10.0.0.1", 7000)
    assert topology.master(5461) == ("10.0.0.2", 7001)  # an empty host: the node that answered
    assert topology.master(16383) == ("10.0.0.3", 7002)
    node = [b"id", b"x", b"port", 7000, b"ip", b"10.0.0.1", b"role", b"master", b"health", b"online"]
    failed = [b"id", b"y", b"port", 7003, b"ip", b"10.0.0.4", b"role", b"master", b"health", b"fail"]
    shards = [
        [b"slots", [0, 100, 200, 300], b"nodes", [failed, node]],
        [b"slots", [101, 199], b"nodes", [failed]],
    ]
    topology = Topology.from_shards(shards)
    assert topology.master(50) == topology.master(250) == ("10.0.0.1", 7000)
    assert topology.master(150) is None and topology.master(301) is None and not topology.complete
    grouped = Topology(((0, 16383, ("h", 1)),)).group(["md:stats.{AAPL}", "md:quotes.{AAPL}", "md:x.{MSFT}"])
    assert grouped == {("h", 1): {key_slot("AAPL"): ["md:stats.{AAPL}", "md:quotes.{AAPL}"],
                                  key_slot("MSFT"): ["md:x.{MSFT}"]}}  # fmt: skip
    assert node_url("rediss://u:p%40ss@seed:1/3", ("10.0.0.1", 7000)) == "rediss://u:p%40ss@10.0.0.1:7000"
    assert node_url("redis://", ("::1", 7000)) == "redis://[::1]:7000"


# -- on the cluster ---------------------------------------------------------------------------------------


async def test_discover_agrees_with_the_cluster(cluster):
    topology = await discover(target_of(cluster))
    assert topology.complete and len(topology.masters) == 3
    for sym in SYMBOLS:
        assert topology.master_of(f"md:stats.{{{sym}}}")[1] == cluster.master_of(f"md:stats:{{{sym}}}")
    topology2 = await discover([("127.0.0.1", 1), *cluster.startup_nodes])  # a dead seed is skipped
    assert topology2 == topology


async def test_patterns_are_refused_in_cluster_mode(cluster):
    sub = subscriber(cluster, "p")
    with pytest.raises(ValueError, match="sharded pub/sub has no patterns") as refused:
        sub.on("trades.*", lambda u: None)
    assert "trades.AAPL" in str(refused.value)
    sub.on("trades.AAPL", lambda u: None)  # exact channels are fine


async def test_sharded_updates_from_every_master_are_delivered(cluster, client, start):
    prefix = f"t{uuid.uuid4().hex[:6]}"
    names = Names(prefix)
    channels = [f"stats.{sym}" for sym in SYMBOLS]
    topology = await discover(target_of(cluster))
    assert len({topology.master_of(names.redis_channel(c)) for c in channels}) == 3
    got: list[tuple[str, int]] = []
    raw: list[tuple[str, bytes]] = []
    sub = subscriber(cluster, prefix)
    for channel in channels:
        sub.on(channel, lambda u: got.append((u.channel, u.seq)))
    sub.on(channels[0], lambda ch, data: raw.append((ch, data)), raw=True)
    await start(sub)
    async with asyncio.timeout(5):
        await sub.confirmed()
    for channel in channels:
        assert await spublish(client, names, channel, 1) == 1  # heard on the slot's master
    await eventually(lambda: len(got) == len(channels))
    assert sorted(got) == sorted((c, 1) for c in channels)
    assert raw and raw[0][0] == channels[0]
    # unsubscribing one leaves the others
    sub.off(next(h for h in sub._handlers[(False, channels[1])]))
    await eventually(lambda: (False, channels[1]) not in sub._handlers)
    await asyncio.sleep(0.3)
    assert await spublish(client, names, channels[1], 2) == 0
    assert await spublish(client, names, channels[2], 2) == 1
    await eventually(lambda: (channels[2], 2) in got)
    assert sub.reconnects == 0 and sub.stats["gaps"] == 0


async def test_a_master_killed_the_subscriber_follows_the_promoted_replica(start):
    own = LocalCluster(masters=3, replicas=1).start()  # killing a master: a cluster of its own
    try:
        prefix = f"t{uuid.uuid4().hex[:6]}"
        names = Names(prefix)
        channels = [f"stats.{sym}" for sym in SYMBOLS]
        resubscribed = asyncio.Event()
        got: list[tuple[str, int]] = []
        sub = subscriber(own, prefix, on_resubscribed=resubscribed.set)
        for channel in channels:
            sub.on(channel, lambda u: got.append((u.channel, u.seq)))
        await start(sub)
        async with asyncio.timeout(5):
            await sub.confirmed()
        rc = target_of(own).client()
        try:
            await spublish(rc, names, channels[0], 1)
            await eventually(lambda: ("stats.AAPL", 1) in got)
            owner = own.master_of(names.stats("AAPL"))
            own.kill(owner)
            await asyncio.to_thread(own.wait_promoted, owner)
            async with asyncio.timeout(15):
                await resubscribed.wait()
            assert sub.reconnects >= 1 and sub.connected
            await rc.aclose()
            rc = target_of(own).client()  # the dead seed is gone from its startup nodes
            for channel in channels:
                assert await spublish(rc, names, channel, 2) == 1, channel
            await eventually(lambda: all((c, 2) in got for c in channels))
        finally:
            await rc.aclose()
    finally:
        own.stop()
