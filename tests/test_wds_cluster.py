"""WDS on a real local Redis Cluster (3 masters, 3 replicas), given a cluster ``Target`` as ``mdpipe wds``
builds it from ``REDIS_CLUSTER_NODES``: a WebSocket client asking symbols on every master at once gets
their snapshots (read one MULTI/EXEC per slot) and their live updates (SPUBLISH, sharded subscriptions);
after a master's ``kill -9`` it gets a resync and live updates again."""

from __future__ import annotations

import time

import orjson
from redis.asyncio.cluster import RedisCluster

from mdc import envelope
from mdc.connect import Target
from mdc.names import Names
from mdc.topology import discover

from .cluster_support import LocalCluster
from .conftest import eventually
from .mdp_support import mdc_settings
from .wds_support import peer, running, token, url

SYMBOLS = ("AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "GOOG", "BRK.B")  # over all 3 masters


async def publish(rc: RedisCluster, names: Names, sym: str, seq: int) -> int:
    """As a processor does: the state and the channel's seq, then the update (SPUBLISH); returns how
    many sharded subscriptions heard it."""
    channel = f"stats.{sym}"
    doc = {"sym": sym, "n": seq}
    await rc.set(names.stats(sym), orjson.dumps(doc))
    await rc.hset(names.seq_key(channel), channel, seq)  # the symbol's own seq hash, in its slot
    now = int(time.time() * 1000)
    body = envelope.encode("stats", channel, seq, now, now, "test:1", doc)
    return int(await rc.spublish(names.redis_channel(channel), body))


async def test_snapshots_and_live_updates_over_every_master_and_a_resync_after_a_master_kill():
    cluster = LocalCluster(masters=3, replicas=1).start()  # a kill: the cluster is this test's own
    try:
        target = Target("redis://", tuple(cluster.startup_nodes))
        mdc = mdc_settings()
        names = Names(mdc.mdc_prefix)
        channels = [f"stats.{sym}" for sym in SYMBOLS]
        topology = await discover(target)
        assert len({topology.master_of(names.redis_channel(c)) for c in channels}) == 3
        rc = target.client()
        try:
            for sym in SYMBOLS:
                await publish(rc, names, sym, 5)
            async with running(mdc=mdc, redis_url=target) as gw:
                assert gw.subscriber.target.cluster and gw.subscriber.connected
                gw.subscriber.backoff.initial = 0.1  # reconnect promptly after the kill
                p = await peer(url(gw, token(gw)))
                await p.send(action="subscribe", channels=channels, id=1)
                await eventually(lambda: len(p.of("snapshot")) == len(channels))
                for snap in p.of("snapshot"):
                    assert (snap["seq"], snap["data"]["n"], snap["resync"]) == (5, 5, False), snap
                for sym in SYMBOLS:
                    assert await publish(rc, names, sym, 6) == 1
                await eventually(lambda: len(p.of("update")) == len(channels))
                assert {(e["channel"], e["seq"]) for e in p.of("update")} == {(c, 6) for c in channels}

                owner = cluster.master_of(names.stats("AAPL"))
                cluster.kill(owner)
                await eventually(lambda: p.of("snapshot", "stats.AAPL")[-1]["resync"], within=30)
                await eventually(lambda: len([s for s in p.of("snapshot") if s["resync"]]) >= len(channels))
                assert all(s["seq"] == 6 for s in p.of("snapshot") if s["resync"])
                await rc.aclose()
                rc = Target("redis://", tuple(cluster.startup_nodes)).client()  # without the dead seed
                for sym in SYMBOLS:
                    assert await publish(rc, names, sym, 7) == 1, sym
                heard = lambda: {(e["channel"], e["seq"]) for e in p.of("update")}  # noqa: E731
                await eventually(lambda: {(c, 7) for c in channels} <= heard())
                await p.close()
        finally:
            await rc.aclose()
    finally:
        cluster.stop()
