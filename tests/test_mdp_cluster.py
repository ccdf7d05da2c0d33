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

from .cluster_support import LocalCluster
from .conftest import RABBITMQ_URL, eventually, http
from .mdp_support import T0, ShardedUpdates, mdc_settings, mdp_settings, running, send
from .test_mdp_service import DAY, applied, keys_are_named_by_mdc
from .test_mdp_units import bar, quote, trade


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    started = LocalCluster(masters=3, replicas=1).start()
    try:
        yield started
    finally:
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


async def test_known_sequence_gives_exact_state_and_updates(mdq, client, target):
    mdc, mdp = mdc_settings(), mdp_settings(mdp_leaders_n=2, mdp_leaders_interval_s=0.1)
    names = Names(mdc.mdc_prefix)
    await client.hset(names.prev_close(), mapping={"AAPL": 100.0, "MSFT": 400.0, "TSLA": 250.0})
    channels = ["stats.AAPL", "trades.AAPL", "bars.AAPL", "quotes.AAPL", "leaders.gainers"]
    updates = ShardedUpdates(client, names, channels)
    await updates.start()
    async with running(mdq, mdc, mdp, target) as service:
        assert service.cluster is not None and service.context.verb == "SPUBLISH"
        await send(mdq, "trades", [
            trade("AAPL", p=101.0, s=100, t=T0, q=1),
            trade("AAPL", p=103.0, s=10, t=T0 + 10, q=2, c=[37]),  # odd lot: volume only
            trade("AAPL", p=102.0, s=200, t=T0 + 20, q=3),
            trade("MSFT", p=396.0, s=50, t=T0, q=1),
            trade("TSLA", p=262.5, s=5, t=T0, q=1),
        ])  # fmt: skip
        await send(
            mdq, "quotes", [quote("AAPL", 101.9, 102.1, t=T0 + 21, q=4), quote("AAPL", 1.0, 2.0, t=T0, q=0)]
        )
        await send(mdq, "aggregates", [
            bar("A", "AAPL", s=T0 + 20_000, o=102.0, h=102.5, low=101.5, c=102.2, v=300),
            bar("AM", "AAPL", s=T0 - 60_000, o=101.0, h=101.5, low=100.5, c=101.0, v=1000, op=100.5, av=1310,
                a=101.2),
        ])  # fmt: skip
        await applied(service, 9)
        reader = Reader(client, names)
        stats = await reader.stats("AAPL")
        fields = ("day", "last", "open", "high", "low", "trades", "volume", "prev_close", "change",
                  "change_pct", "gap_pct", "vwap")  # fmt: skip
        assert {k: stats[k] for k in fields} == {
            "day": DAY, "last": 102.2, "open": 100.5, "high": 102.5, "low": 100.5, "trades": 3,
            "volume": 1310, "prev_close": 100, "change": 2.2, "change_pct": 2.2, "gap_pct": 0.5,
            "vwap": 101.2,
        }  # fmt: skip
        assert (await reader.quote("AAPL"))["bp"] == 101.9
        snap = await reader.snapshot("trades.AAPL")
        assert [t["q"] for t in snap.data["recent"]] == [1, 2, 3] and snap.data["last"]["p"] == 102.0
        assert snap.seq == 1
        bars = await reader.snapshot("bars.AAPL")
        assert bars.data["second"]["c"] == 102.2 and [b["c"] for b in bars.data["minute"]] == [101.0]
        assert bars.seq == 2

        async def boards_current() -> bool:
            board = await reader.leaderboard("gainers")
            return board is not None and [(r["sym"], r["change_pct"]) for r in board["rows"]] == [
                ("TSLA", 5.0), ("AAPL", 2.2)]  # fmt: skip

        await eventually(boards_current)
        gainers = (await reader.leaderboard("gainers"))["rows"]
        assert [r["sym"] for r in (await reader.leaderboard("losers"))["rows"]] == ["MSFT"]
        assert [r["sym"] for r in (await reader.leaderboard("volume"))["rows"]] == ["AAPL", "MSFT"]
        gappers = (await reader.leaderboard("gappers"))["rows"]
        assert [(r["sym"], r["gap_pct"]) for r in gappers] == [("TSLA", 5.0), ("MSFT", -1.0)]
        await keys_are_named_by_mdc(client, names)

        def board_heard() -> bool:
            heard = updates.on("leaders.gainers")
            return bool(heard) and heard[-1].data["rows"] == gainers

        await eventually(board_heard)

    await updates.stop()
    stats_updates = updates.on("stats.AAPL")
    assert [u.seq for u in stats_updates] == [1, 2]
    assert stats_updates[-1].data["last"] == 102.2 and stats_updates[-1].type == "stats"
    (trades_update,) = updates.on("trades.AAPL")
    assert trades_update.type == "trades" and [t["p"] for t in trades_update.data] == [101.0, 103.0, 102.0]
    assert trades_update.ts == T0 + 20 and trades_update.src == service.instance
    assert [u.type for u in updates.on("bars.AAPL")] == ["bar.1s", "bar.1m"]
    (quote_update,) = updates.on("quotes.AAPL")
    assert quote_update.data["spread"] == 0.2
    assert updates.on("leaders.gainers")[-1].data == {"board": "gainers", "day": DAY, "rows": gainers}


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
