"""``mdc.reader.Reader`` on a real Redis Cluster through ``ClusterPipeline``: the same snapshots as on one
Redis, a channel's state and seq read in one transaction, and the next snapshots after a master's failover."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
import redis
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from mdc.clusterpipe import ClusterChanged, ClusterPipeline
from mdc.connect import Target
from mdc.names import Names
from mdc.reader import Reader, plan, slot_indexes
from mdc.topology import key_slot
from mdc.wire import KEEPALIVE, command
from tests.conftest import REDIS_URL

from .cluster_support import LocalCluster

T0 = 1_760_000_000_000


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    started = LocalCluster(masters=3, replicas=0).start()
    try:
        yield started
    finally:
        started.stop()


def target_of(cluster: LocalCluster) -> Target:
    return Target(cluster.url, tuple(cluster.startup_nodes))


def sync_cluster(cluster: LocalCluster) -> redis.RedisCluster:
    return redis.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in cluster.startup_nodes]
    )


@pytest.fixture
async def reader_on(cluster) -> AsyncIterator[tuple[Reader, ClusterPipeline]]:
    target = target_of(cluster)
    client = target.client()
    pipeline = ClusterPipeline(target, "test-reader", 5.0, KEEPALIVE)
    try:
        yield Reader(client, Names(f"t{uuid.uuid4().hex[:8]}"), cluster=pipeline), pipeline
    finally:
        await pipeline.close()
        await client.aclose()


def spread(cluster: LocalCluster, names: Names, n: int = 12) -> list[str]:
    """Symbols whose keys are on every master."""
    syms = [f"S{i}" for i in range(n)]
    assert len({cluster.master_of(names.stats(s)) for s in syms}) == 3
    return syms


def write(client: redis.Redis | redis.RedisCluster, names: Names, syms: list[str]) -> None:
    """State of every kind of channel, as the processors and mdc.publisher keep it."""
    for i, sym in enumerate(syms):
        trades = [{"t": T0 + k, "p": 100 + i + k, "s": 10} for k in range(3)]
        client.set(names.trade(sym), orjson.dumps(trades[-1]))
        client.zadd(names.trades(sym), {orjson.dumps(t): t["t"] for t in trades})
        client.set(names.quote(sym), orjson.dumps({"bp": i, "ap": i + 1}))
        client.set(names.stats(sym), orjson.dumps({"last": 100 + i, "volume": i * 10}))
        client.set(names.luld(sym), orjson.dumps({"upper": 110, "lower": 90, "halted": False}))
        client.set(names.bar_second(sym), orjson.dumps({"t": T0, "c": i}))
        client.zadd(
            names.bars_minute(sym),
            {orjson.dumps({"t": T0 + 60_000 * m, "c": m}): T0 + 60_000 * m for m in range(4)},
        )
        client.zadd(
            names.history(sym),
            {orjson.dumps({"t": T0 - 60_000 * m, "c": -m}): T0 - 60_000 * m for m in range(3)},
        )
        kinds = ("stats", "quotes", "trades", "bars")
        client.hset(names.symbol_seq(sym), mapping={f"{kind}.{sym}": i + k for k, kind in enumerate(kinds)})
    client.set(names.board("volume"), orjson.dumps({"board": "volume", "rows": [{"sym": syms[0]}]}))
    client.hset(names.halted(), mapping={syms[1]: orjson.dumps({"halted": True})})
    client.zadd(names.feed("halts"), {orjson.dumps({"sym": syms[1], "t": T0}): T0})
    client.zadd(names.feed("alerts"), {orjson.dumps({"alert": "x", "t": T0}): T0})
    client.hset(names.seq(), mapping={"leaders.volume": 7, "halts": 9, "alerts": 11})
    client.lpush(names.signal_recent("signals.momentum"), orjson.dumps({"n": 1}), orjson.dumps({"n": 2}))
    client.set(names.signal_seq("signals.momentum"), 2)


def channels_of(syms: list[str]) -> list[str]:
    per_symbol = [f"{kind}.{sym}" for sym in syms for kind in ("stats", "quotes", "trades", "bars", "luld")]
    market = ["leaders.volume", "leaders.gainers", "halts", "alerts", "signals.momentum", "signals.nobody"]
    return [*per_symbol, "quotes.NOSUCH", "bars.NOSUCH", *market]


async def test_snapshots_on_every_master_equal_those_of_one_redis(cluster, reader_on):
    reader, pipeline = reader_on
    names = reader.names
    syms = spread(cluster, names)
    writer = sync_cluster(cluster)
    single = Redis.from_url(REDIS_URL)
    try:
        write(writer, names, syms)
        write(redis.Redis.from_url(REDIS_URL), names, syms)
        channels = channels_of(syms)
        for minute_bars in (0, 2):
            on_cluster = await reader.snapshots(channels, minute_bars=minute_bars)
            on_one = await Reader(single, names).snapshots(channels, minute_bars=minute_bars)
            assert on_cluster == on_one
        snap = {s.channel: s for s in on_cluster}
        assert snap[f"stats.{syms[2]}"].data == {"last": 102, "volume": 20}
        assert snap[f"stats.{syms[2]}"].seq == 2
        assert snap["halts"].data["halted"] == {syms[1]: {"halted": True}}  # HGETALL: a flat list on the wire
        assert snap["signals.momentum"].data == {"recent": [{"n": 1}, {"n": 2}]}
        assert (snap["quotes.NOSUCH"].seq, snap["quotes.NOSUCH"].data) == (0, None)
        assert pipeline.discoveries == 1
    finally:
        writer.close()
        await single.aclose()
        keys = redis.Redis.from_url(REDIS_URL).keys(f"{names.prefix}:*")
        if keys:
            redis.Redis.from_url(REDIS_URL).delete(*keys)


def test_a_channels_state_and_seq_are_read_in_one_slot():
    names = Names("md")
    channels = ["stats.AAPL", "trades.AAPL", "bars.MSFT", "halts", "leaders.volume", "signals.x"]
    reads, _ = plan(names, channels, 0)
    slots = slot_indexes(reads)
    at = 0
    for channel in channels:
        count = len(plan(names, [channel], 0)[0])  # its state's reads and its seq
        assert len({key_slot(reads[i][1]) for i in range(at, at + count)}) == 1, channel
        at += count
    assert len(slots) == 3  # AAPL, MSFT, and the market-wide {md} slot (signals too)


async def test_state_and_seq_agree_while_they_are_written(cluster, reader_on):
    """A writer bumps stats.SYM's state and its seq in one MULTI/EXEC, as the processors do; every
    snapshot read meanwhile sees the two agree (they are read in one transaction)."""
    reader, _ = reader_on
    names, sym = reader.names, "ATOM"
    writer = ClusterPipeline(target_of(cluster), "test-writer", 5.0, KEEPALIVE)  # its own connections
    stop = asyncio.Event()
    slot = key_slot(names.stats(sym))

    async def bump() -> int:
        n = 0
        while not stop.is_set():
            n += 1
            state = command("SET", names.stats(sym), orjson.dumps({"n": n}))
            await writer.transact({slot: [state, command("HSET", names.symbol_seq(sym), f"stats.{sym}", n)]})
        return n

    task = asyncio.create_task(bump())
    seen = set()
    try:
        for _ in range(300):
            (snap,) = await reader.snapshots([f"stats.{sym}"])
            if snap.data is not None:
                assert snap.data["n"] == snap.seq
                seen.add(snap.seq)
            await asyncio.sleep(0)
    finally:
        stop.set()
        await task
        await writer.close()
    assert len(seen) > 10  # the reads did overlap the writes


async def test_an_error_reply_is_raised_as_on_one_redis(cluster, reader_on):
    reader, _ = reader_on
    writer = sync_cluster(cluster)
    try:
        writer.hset(reader.names.stats("BAD"), "x", 1)  # not a string: GET answers WRONGTYPE
    finally:
        writer.close()
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await reader.snapshots(["quotes.BAD", "stats.BAD"])


async def test_a_changed_cluster_is_retried_once_then_raised():
    calls = []

    class Flaky:
        async def transact(self, slots):
            calls.append(slots)
            raise ClusterChanged("moved")

    reader = Reader(None, Names("md"), cluster=Flaky())  # type: ignore[arg-type]
    with pytest.raises(ClusterChanged):
        await reader.snapshots(["stats.AAPL"])
    assert len(calls) == 2


async def test_snapshots_after_a_masters_failover():
    failing = LocalCluster(masters=3, replicas=1).start()
    target = target_of(failing)
    pipeline = ClusterPipeline(target, "test-reader-failover", 5.0, KEEPALIVE)
    client = target.client()
    try:
        names = Names("fo")
        syms = spread(failing, names)
        writer = sync_cluster(failing)
        write(writer, names, syms)
        for node in writer.get_primaries():
            writer.execute_command("WAIT", 1, 2000, target_nodes=node)  # on the replicas before the kill
        writer.close()
        reader = Reader(client, names, cluster=pipeline)
        channels = channels_of(syms)
        before = await reader.snapshots(channels)
        victim = failing.master_of(names.stats(syms[0]))
        await asyncio.to_thread(failing.kill, victim)
        await asyncio.to_thread(failing.wait_promoted, victim)
        after = await reader.snapshots(channels)  # the dead master's connection fails: discover, retry
        assert after == before
        assert pipeline.discoveries == 2
    finally:
        await pipeline.close()
        await client.aclose()
        failing.stop()
