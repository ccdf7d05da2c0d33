"""The processors against real RabbitMQ and Redis: known sequences give exact state and updates, order and
redelivery cannot change the result, poison is dead-lettered, Redis outages are survived."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import aio_pika
import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from mdc.names import Names
from mdc.reader import Reader
from mdp.service import ProcessorService
from mdpipe.private_services import free_port
from mdq import topology
from mdq.message import Batch

from .conftest import RABBITMQ_URL, REDIS_URL, eventually, http
from .mdp_support import T0, Updates, clean, mdc_settings, mdp_settings, running, send
from .test_mdp_units import bar, quote, trade

DAY = "2025-11-20"


async def keys_are_named_by_mdc(redis: Redis, names: Names) -> None:
    """The Lua scripts build key names themselves: every key they wrote must be one mdc.names names."""
    x = "\x00"
    shapes = [names.trade(x), names.trades(x), names.quote(x), names.stats(x), names.bar_second(x),
              names.bars_minute(x), names.luld(x), names.halted(), names.feed(x), names.day(),
              names.ranking(x, x), names.board(x), names.prev_close(), names.raw(x), names.seq(),
              names.done(x), names.leaders_lock(), names.heartbeat(x, x), names.signal(x, x), names.alerted(),
              names.volume_means(), names.symbol_seq(x), names.leader_rows(), names.layout()]  # fmt: skip
    patterns = [re.compile(re.escape(shape).replace("\x00", ".+") + "$") for shape in shapes]
    keys = [k.decode() async for k in redis.scan_iter(match=f"{names.prefix}:*")]
    assert len(keys) > 15
    assert [k for k in keys if not any(p.match(k) for p in patterns)] == []


def luld(sym: str, h: float, low: float, t: int, q: int, i: list[int] | None = None) -> dict[str, Any]:
    return {"ev": "LULD", "T": sym, "h": h, "l": low, "i": i or [], "t": t, "q": q}


async def updates_for(redis: Redis, names: Names) -> Updates:
    updates = Updates(redis, names)
    await updates.start()
    return updates


async def applied(service, n: int, within: float = 10.0) -> None:
    await eventually(lambda: service.events >= n, within=within)


# -- exact state from a known sequence -------------------------------------------------------------


async def test_known_sequence_gives_exact_state_and_updates(mdq, redis):
    mdc, mdp = mdc_settings(), mdp_settings(mdp_leaders_n=2, mdp_leaders_interval_s=0.1)
    names = Names(mdc.mdc_prefix)
    await redis.hset(names.prev_close(), mapping={"AAPL": 100.0, "MSFT": 400.0, "TSLA": 250.0})
    updates = await updates_for(redis, names)
    async with running(mdq, mdc, mdp) as service:
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
        reader = Reader(redis, names)
        stats = await reader.stats("AAPL")
        fields = ("day", "last", "open", "high", "low", "trades", "volume", "prev_close", "change",
                  "change_pct", "gap_pct", "vwap")  # fmt: skip
        assert {k: stats[k] for k in fields} == {
            "day": DAY, "last": 102.2, "open": 100.5, "high": 102.5, "low": 100.5, "trades": 3,
            "volume": 1310, "prev_close": 100, "change": 2.2, "change_pct": 2.2, "gap_pct": 0.5,
            "vwap": 101.2,
        }  # fmt: skip
        # the bar's close (end T0+21000) is newer than the last trade (T0+20)
        assert (await reader.quote("AAPL"))["bp"] == 101.9  # the older quote did not overwrite it
        snap = await reader.snapshot("trades.AAPL")
        assert [t["q"] for t in snap.data["recent"]] == [1, 2, 3] and snap.data["last"]["p"] == 102.0
        assert snap.seq == 1
        bars = await reader.snapshot("bars.AAPL")
        assert bars.data["second"]["c"] == 102.2 and [b["c"] for b in bars.data["minute"]] == [101.0]
        assert bars.seq == 2  # one second bar and one minute bar published

        async def boards_current() -> bool:  # published within the interval after the last message
            board = await reader.leaderboard("gainers")
            return board is not None and [(r["sym"], r["change_pct"]) for r in board["rows"]] == [
                ("TSLA", 5.0), ("AAPL", 2.2)]  # fmt: skip

        await eventually(boards_current)
        gainers = (await reader.leaderboard("gainers"))["rows"]
        assert [r["sym"] for r in (await reader.leaderboard("losers"))["rows"]] == ["MSFT"]
        assert [r["sym"] for r in (await reader.leaderboard("volume"))["rows"]] == ["AAPL", "MSFT"]
        gappers = (await reader.leaderboard("gappers"))[
            "rows"
        ]  # AAPL: open from the bar, the others from trades
        assert [(r["sym"], r["gap_pct"]) for r in gappers] == [("TSLA", 5.0), ("MSFT", -1.0)]
        # the rows a board shows are written with the rankings, at most 0.2 s after the stats: a board
        # published before that flush is published once more, then no more while nothing changes
        await asyncio.sleep(0.5)
        published = len(updates.on("leaders.gainers"))
        await asyncio.sleep(0.4)  # unchanged boards are not published again
        assert len(updates.on("leaders.gainers")) == published
        await keys_are_named_by_mdc(redis, names)

    await updates.stop()
    stats_updates = updates.on("stats.AAPL")
    assert [u.seq for u in stats_updates] == [1, 2]  # one per message (trades, then aggregates)
    assert stats_updates[-1].data["last"] == 102.2 and stats_updates[-1].type == "stats"
    (trades_update,) = updates.on("trades.AAPL")
    assert trades_update.type == "trades" and [t["p"] for t in trades_update.data] == [101.0, 103.0, 102.0]
    assert trades_update.ts == T0 + 20 and trades_update.src == service.instance
    assert trades_update.sent >= trades_update.ts
    assert [u.type for u in updates.on("bars.AAPL")] == ["bar.1s", "bar.1m"]
    (quote_update,) = updates.on("quotes.AAPL")
    assert quote_update.data["spread"] == 0.2
    assert updates.on("leaders.gainers")[-1].data == {"board": "gainers", "day": DAY, "rows": gainers}


async def test_halts_and_alerts(mdq, redis):
    mdc, mdp = mdc_settings(), mdp_settings(mdp_spike_min_volume=100, mdp_alert_cooldown_s=60)
    names = Names(mdc.mdc_prefix)
    updates = await updates_for(redis, names)
    async with running(mdq, mdc, mdp) as service:
        await send(mdq, "halts", [luld("ABC", 11.0, 9.0, T0, 1), luld("ABC", 11.0, 9.0, T0 + 5, 2, [15])])
        await applied(service, 2)
        reader = Reader(redis, names)
        assert list(await reader.halted()) == ["ABC"]
        await send(mdq, "halts", [luld("ABC", 12.0, 10.0, T0 + 300_000, 3, [16])])
        await applied(service, 3)
        assert await reader.halted() == {}
        snap = await reader.snapshot("halts")
        assert [h["kind"] for h in snap.data["recent"]] == ["halt", "resume"] and snap.seq == 2

        # one message each: a new high needs a high from before
        for i, p in enumerate([10.0, 10.5, 10.7, 9.0]):
            await send(mdq, "trades", [trade("XYZ", p=p, t=T0 + i * 1000, q=i)])
        await applied(service, 7)
        minutes = [bar("AM", "XYZ", s=T0 + i * 60_000, o=10.0, h=10.0, low=10.0, c=10.0, v=v)
                   for i, v in enumerate([100, 100, 100, 100, 100, 100, 5000])]  # fmt: skip
        await send(mdq, "aggregates", minutes)
        await applied(service, 14)
    await updates.stop()
    kinds = [(u.data["kind"], u.data["sym"]) for u in updates.on("alerts")]
    assert kinds == [("halt", "ABC"), ("resume", "ABC"), ("new_high", "XYZ"), ("new_low", "XYZ"),
                     ("volume_spike", "XYZ")]  # fmt: skip
    # one new high per cooldown: 10.7 came within 60 s of 10.5
    assert next(u.data for u in updates.on("alerts") if u.data["kind"] == "new_high")["price"] == 10.5
    assert [u.type for u in updates.on("halts")] == ["halt", "resume"]
    assert [u.data["halted"] for u in updates.on("luld.ABC")] == [True, False]  # one per message: the newest


async def test_day_reset_and_late_events(mdq, redis):
    mdc, mdp = mdc_settings(), mdp_settings()
    names = Names(mdc.mdc_prefix)
    next_day = T0 + 86_400_000
    async with running(mdq, mdc, mdp) as service:
        await send(mdq, "trades", [trade("AAPL", p=100.0, t=T0, q=1), trade("AAPL", p=110.0, t=T0 + 1, q=2)])
        await applied(service, 2)
        await send(mdq, "trades", [trade("AAPL", p=121.0, s=7, t=next_day, q=1)])
        await applied(service, 3)
        await send(mdq, "trades", [trade("AAPL", p=1.0, s=1000, t=T0 + 2, q=3)])  # yesterday's, late
        await applied(service, 4)
        stats = await Reader(redis, names).stats("AAPL")
        assert (stats["day"], stats["prev_close"], stats["open"], stats["last"]) == (
            "2025-11-21",
            110,
            121,
            121,
        )
        assert (stats["volume"], stats["trades"], stats["gap_pct"], stats["change_pct"]) == (7, 1, 10.0, 10.0)
        assert await Reader(redis, names).day() == "2025-11-21"


# -- order and redelivery --------------------------------------------------------------------------


def session_events(seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events, t = [], T0
    minutes: dict[str, int] = {}  # one bar per symbol and minute: a bar repeated with other values is a
    # vendor correction, and which version wins depends on arrival
    for i in range(600):
        sym = rng.choice(["AAA", "BBB", "CCC", "DDD"])
        t += rng.randint(0, 50)
        p = round(rng.uniform(9, 11), 2)
        kind = rng.random()
        if kind < 0.4:
            events.append(
                trade(sym, p=p, s=rng.randint(1, 500), t=t, q=i, c=[37] if rng.random() < 0.2 else [])
            )
        elif kind < 0.9:
            events.append(quote(sym, p - 0.01, p + 0.01, t=t, q=i))
        elif kind < 0.95:
            minutes[sym] = minutes.get(sym, 0) + 1
            events.append(bar("AM", sym, s=T0 + minutes[sym] * 60_000, o=p, h=p + 0.1, low=p - 0.1, c=p,
                              v=rng.randint(1, 900), op=10.0, av=rng.randint(1, 10**6), a=10.0))  # fmt: skip
        else:
            events.append(luld(sym, p * 1.05, p * 0.95, t, i, [15] if rng.random() < 0.5 else []))
    return events


def messages(events: list[dict[str, Any]], size: int = 25) -> list[tuple[str, list[dict[str, Any]], int]]:
    """(class, events, seq) per message, as the listener would cut them."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_class.setdefault(topology.EVENT_CLASSES["stocks"][event["ev"]], []).append(event)
    out, seq = [], 0
    for cls, evs in by_class.items():
        for start in range(0, len(evs), size):
            seq += 1
            out.append((cls, evs[start : start + size], seq))
    return out


STATE_KEYS = ("stats", "trade", "trades", "quote", "bar1s", "bars1m", "luld", "halted", "rank", "day")


async def state(redis: Redis, prefix: str) -> dict[str, Any]:
    """Every order-independent key under ``prefix`` (alerts, feeds and sequence numbers record history)."""
    out: dict[str, Any] = {}
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        name = key.decode()[len(prefix) + 1 :]
        if name.split(":")[0] not in STATE_KEYS:
            continue
        kind = (await redis.type(key)).decode()
        if kind == "string":
            raw = await redis.get(key)
            out[name] = orjson.loads(raw) if raw.startswith(b"{") else raw
        elif kind == "zset":
            out[name] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "hash":
            out[name] = await redis.hgetall(key)
    return out


async def test_shuffled_and_duplicated_delivery_gives_the_same_state(mdq, redis):
    events = session_events()
    in_order = messages(events)
    shuffled = in_order + random.Random(3).sample(in_order, 15)  # 15 redelivered
    random.Random(4).shuffle(shuffled)
    results = []
    base_ns = time.time_ns()  # a redelivered message is the same message: same source, time and seq
    for batch in (in_order, shuffled):
        mdc = mdc_settings()
        async with running(mdq, mdc, mdp_settings()) as service:
            for cls, evs, seq in batch:
                await send(mdq, cls, evs, seq=seq, recv_ns=base_ns + seq, source="mdl-1")
            expected = len(batch)
            await eventually(lambda: service.consumer.stats.handled >= expected, within=15)  # noqa: B023
            await eventually(lambda: not service.book.ranks)  # rankings are written within 0.2 s
            results.append(await state(redis, mdc.mdc_prefix))
            if batch is shuffled:
                assert service.duplicates == 15
    assert len(results[0]) > 20
    assert results[0] == results[1]


async def test_two_replicas_on_shards_give_the_same_state_as_one(make_mdq, redis):
    events = session_events(seed=11)
    mdq = make_mdq(mdq_shards=2)
    one = mdc_settings()
    two = mdc_settings()

    async def deliver(prefix_events_done) -> None:
        for cls, evs, seq in messages(events):
            for shard in (0, 1):
                part = [e for e in evs if topology.shard_of(e.get("sym") or e.get("T"), 2) == shard]
                if part:
                    await send(mdq, f"{cls}.{shard}", part, seq=seq, source="mdl-1")
        await prefix_events_done()

    async with running(mdq, one, mdp_settings()) as single:
        await deliver(lambda: eventually(lambda: single.events >= len(events), within=15))
        await eventually(lambda: not single.book.ranks)
        expected = await state(redis, one.mdc_prefix)
    classes = ",".join(f"{c}.{{}}" for c in ("trades", "quotes", "aggregates", "halts"))
    async with (
        running(mdq, two, mdp_settings(mdp_classes=classes.format(0, 0, 0, 0))) as a,
        running(mdq, two, mdp_settings(mdp_classes=classes.format(1, 1, 1, 1))) as b,
    ):
        await deliver(lambda: eventually(lambda: a.events + b.events >= len(events), within=15))
        await eventually(lambda: not a.book.ranks and not b.book.ranks)
        assert a.events > 0 and b.events > 0
        assert await state(redis, two.mdc_prefix) == expected


async def test_a_repeat_already_written_is_left_out_of_its_group(mdq, redis):
    mdc = mdc_settings()
    names = Names(mdc.mdc_prefix)
    queue = f"{mdq.mdq_exchange}.trades"
    a = Batch([trade(s=100, q=1)], "trades", time.time_ns(), "mdl-1", 1, queue)
    b = Batch([trade(s=10, q=2, t=T0 + 1)], "trades", a.recv_ns + 1, "mdl-1", 2, queue)

    async def volume() -> int:
        return orjson.loads(await redis.get(names.stats("AAPL")))["trade_volume"]

    async with running(mdq, mdc, mdp_settings()) as service:
        await service.commit(service.prepare([a]))  # written alone, then the consumer died unacked
        again = [dataclasses.replace(x, repeat=True) for x in (a, b)]
        await service.commit(service.prepare(again))  # redelivered with the next one, as one group
        assert await volume() == 110 and service.duplicates == 1
        await service.commit(service.prepare(again))  # the whole group again: nothing new
        assert await volume() == 110 and service.duplicates == 3
        await service.commit(service.prepare([b]))  # not marked as a repeat: only the calls' guards
        assert await volume() == 110 and service.duplicates == 4


# -- the state in memory: takeover, reload --------------------------------------------------------


async def test_a_standby_taking_over_continues_the_state_and_seq_from_redis(mdq, redis):
    """Two replicas on the same queues: the active one stops, the standby becomes active and loads the
    symbols' state from Redis before merging: sums go on, seq goes on with no gap, nothing regresses."""
    mdc = mdc_settings()
    names = Names(mdc.mdc_prefix)
    updates = await updates_for(redis, names)
    reader = Reader(redis, names)
    first = ProcessorService(mdq, mdc, mdp_settings(mdp_instance="first"), rabbitmq_url=RABBITMQ_URL,
                             redis_url=REDIS_URL)  # fmt: skip
    stop_first = asyncio.Event()
    first_task = asyncio.create_task(first.run(stop_first))
    await asyncio.wait_for(first.consumer.ready.wait(), 10)
    await send(mdq, "trades", [trade("AAPL", p=100.0, s=100, t=T0, q=1)])
    await send(mdq, "quotes", [quote("AAPL", 99.9, 100.1, t=T0 + 5, q=2)])
    await applied(first, 2)
    async with running(mdq, mdc, mdp_settings(mdp_instance="standby")) as standby:
        await asyncio.sleep(0.3)
        assert standby.events == 0  # the first replica is the active consumer
        stop_first.set()
        await asyncio.wait_for(first_task, 15)
        await send(mdq, "trades", [trade("AAPL", p=101.0, s=10, t=T0 + 10, q=3)])
        await send(mdq, "quotes", [quote("AAPL", 1.0, 2.0, t=T0, q=0)])  # older than what the first wrote
        await applied(standby, 2)
        assert standby.loaded >= 1
        stats = await reader.stats("AAPL")
        assert (stats["trade_volume"], stats["trades"], stats["last"]) == (110, 2, 101.0)
        assert (await reader.quote("AAPL"))["bp"] == 99.9  # the standby knew the newer quote
        assert (await reader.snapshot("stats.AAPL")).seq == 2
    await updates.stop()
    assert [u.seq for u in updates.on("stats.AAPL")] == [1, 2]
    assert [u.seq for u in updates.on("trades.AAPL")] == [1, 2]
    assert [u.src for u in updates.on("trades.AAPL")] == [first.instance, standby.instance]
    assert len(updates.on("quotes.AAPL")) == 1


async def test_a_replica_killed_mid_stream_is_replaced_by_its_standby_exactly_once(mdq, redis):
    """kill -9 of the active replica while messages flow: the standby gets what was delivered and not
    acknowledged, leaves out what the dead one wrote (its markers), loads the state it left: every trade
    counted once, and the channel's seq has no gap and no repeat."""
    mdc = mdc_settings()
    names = Names(mdc.mdc_prefix)
    updates = await updates_for(redis, names)
    port = free_port()
    env = {**os.environ, "MDQ_EXCHANGE": mdq.mdq_exchange, "MDP_HTTP_PORT": str(port), "REDIS_URL": REDIS_URL,
           "MDC_PREFIX": mdc.mdc_prefix, "MDP_INSTANCE": "doomed", "MDP_PLUGINS": ""}  # fmt: skip
    doomed = await asyncio.create_subprocess_exec(sys.executable, "-m", "mdpipe", "mdp", env=env,
                                                  stderr=subprocess.DEVNULL)  # fmt: skip

    async def all_counted() -> bool:
        return await _volume(redis, names) == total

    total = 0
    try:
        await eventually(lambda: _ready(port), within=15)
        async with running(mdq, mdc, mdp_settings(mdp_instance="standby")) as standby:
            for i in range(300):
                await send(
                    mdq, "trades", [trade("AAPL", p=100.0 + i % 7, s=1, t=T0 + i, q=i)], source="mdl-1"
                )
                total += 1
                if i == 150:
                    doomed.send_signal(signal.SIGKILL)
            await eventually(all_counted, within=20)
            assert standby.events > 0 and standby.loaded >= 1
            await asyncio.sleep(0.3)  # nothing more arrives: no message is applied twice
            assert await _volume(redis, names) == total
    finally:
        with contextlib.suppress(ProcessLookupError):
            doomed.kill()
        await doomed.wait()
    await updates.stop()
    seqs = [u.seq for u in updates.on("trades.AAPL")]
    assert seqs == list(range(1, len(seqs) + 1))  # no gap, no repeat, across the takeover
    assert {u.src for u in updates.on("trades.AAPL")} == {"doomed", "standby"}
    assert sum(len(u.data) for u in updates.on("trades.AAPL")) == total  # every print published once


async def _ready(port: int) -> bool:
    try:
        status, _, _ = await http(port, "GET", "/readyz")
    except OSError:
        return False
    return status == 200


async def _volume(redis: Redis, names: Names) -> int | None:
    raw = await redis.get(names.stats("AAPL"))
    return orjson.loads(raw)["trade_volume"] if raw else None


async def test_rankings_still_waiting_are_written_by_a_clean_stop(mdq, redis):
    mdc = mdc_settings()
    names = Names(mdc.mdc_prefix)
    service = ProcessorService(mdq, mdc, mdp_settings(), rabbitmq_url=RABBITMQ_URL, redis_url=REDIS_URL)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.consumer.ready.wait(), 10)
        await send(mdq, "trades", [trade("AAPL", s=100, t=T0, q=1)])
        await applied(service, 1)
        service._ranked = time.monotonic() + 60  # no flush for a minute: this score waits for the stop
        await send(mdq, "trades", [trade("AAPL", s=50, t=T0 + 1, q=2)])
        await applied(service, 2)
        assert service.book.ranks  # still waiting
        stop.set()
        await asyncio.wait_for(task, 15)
        assert await redis.zscore(names.ranking(DAY, "volume"), "AAPL") == 150
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await clean(redis, mdc.mdc_prefix)


async def test_a_cache_emptied_under_a_running_processor_gets_whole_documents_again(mdq, redis):
    """Redis lost its data (a restart without persistence) while the processor kept its state: the next
    event of a symbol writes its whole documents again, and seq goes on from the processor's count."""
    mdc = mdc_settings()
    names = Names(mdc.mdc_prefix)
    reader = Reader(redis, names)
    async with running(mdq, mdc, mdp_settings()) as service:
        await send(mdq, "trades", [trade("AAPL", p=100.0, s=100, t=T0, q=1)])
        await applied(service, 1)
        keys = [k async for k in redis.scan_iter(match=f"{mdc.mdc_prefix}:*")]
        await redis.delete(*keys)
        await send(mdq, "trades", [trade("AAPL", p=101.0, s=10, t=T0 + 10, q=2)])
        await applied(service, 2)
        stats = await reader.stats("AAPL")
        assert (stats["trade_volume"], stats["trades"], stats["open"]) == (110, 2, 100.0)
        assert (await reader.snapshot("stats.AAPL")).seq == 2


# -- poison and staleness --------------------------------------------------------------------------


async def dead_letters(mdq) -> list[aio_pika.abc.AbstractIncomingMessage]:
    got = []
    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.dead_letter_name(mdq.mdq_exchange))
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            got.append(message)
    return got


async def test_poison_is_counted_dead_lettered_and_the_rest_applied(mdq, redis):
    mdc = mdc_settings()
    async with running(mdq, mdc, mdp_settings()) as service:
        await send(mdq, "trades", b"{not json")
        await send(mdq, "trades", b'{"an": "object"}')
        await send(mdq, "trades", [trade()], headers={"mdq-class": "trades"})  # no recv time or seq
        await send(
            mdq, "trades", [trade("GOOD", q=1), trade("BAD", p="1"), {"ev": "T"}, [1], trade("OK", q=2)]
        )
        huge = [trade(f"S{i % 3000}", p=1.0 + i % 7, t=T0 + i, q=i) for i in range(60_000)]
        await send(mdq, "trades", huge)
        await send(mdq, "quotes", [quote("AFTER")])
        await eventually(lambda: service.events >= 60_003, within=30)
        s = service.consumer.stats
        assert (s.malformed, s.failed) == (3, 0)
        reader = Reader(redis, Names(mdc.mdc_prefix))
        assert (await reader.stats("GOOD"))["last"] == 190.0 and (await reader.quote("AFTER")) is not None
        assert (await reader.stats("S2999"))["trades"] == 20
        assert await reader.stats("BAD") is None
        status, _, body = await http(service.http.port, "GET", "/metrics")
        assert status == 200 and b'mdpipe_mdp_dead_letters_total{reason="malformed"}' in body
    dead = await dead_letters(mdq)
    assert len(dead) == 4  # three rejected messages and one message of invalid events
    rejected = [m for m in dead if "x-death" in (m.headers or {})]
    assert [m.body[:5] for m in rejected[:2]] == [b"{not ", b'{"an"']
    (invalid,) = [m for m in dead if "mdq-reason" in (m.headers or {})]
    items = orjson.loads(invalid.body)
    assert [i["reason"][:12] for i in items] == ["not a JSON o", "p must be a ", "symbol missi"]
    assert items[1]["event"]["sym"] == "BAD"
    assert invalid.headers["mdq-count"] == 3


async def test_stale_messages_are_skipped_and_counted(mdq, redis):
    mdc = mdc_settings()
    async with running(mdq, mdc, mdp_settings()) as service:
        await send(mdq, "trades", [trade("OLD")], recv_ns=time.time_ns() - 60 * 10**9)
        await send(mdq, "trades", [trade("NEW")])
        await applied(service, 1)
        assert service.consumer.stats.stale == 1
        assert await Reader(redis, Names(mdc.mdc_prefix)).stats("OLD") is None


# -- Redis outage (a private server, so nothing else is disturbed) ---------------------------------


async def answers(client: Redis) -> bool:
    try:
        return bool(await client.ping())
    except (OSError, RedisError):
        return False


@contextlib.contextmanager
def private_redis(port: int):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


async def test_redis_restart_mid_stream_loses_nothing_acknowledged(make_mdq):
    mdq = make_mdq(mdq_message_ttl_ms=30_000)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    mdc = mdc_settings()
    with private_redis(port) as server:
        client = Redis.from_url(url)
        await eventually(lambda: answers(client))
        service = ProcessorService(mdq, mdc, mdp_settings(), rabbitmq_url=RABBITMQ_URL, redis_url=url)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        await asyncio.wait_for(service.consumer.ready.wait(), 10)
        await send(mdq, "trades", [trade("BEFORE")])
        await applied(service, 1)
        server.send_signal(signal.SIGKILL)
        server.wait()
        for i in range(5):
            await send(mdq, "trades", [trade(f"DURING{i}")])
        await eventually(lambda: service.consumer.stats.retried > 0 and not service.redis_ok)
        assert service.consumer.stats.handled == 1  # nothing acknowledged while Redis is away
    with private_redis(port):
        await eventually(lambda: service.consumer.stats.handled == 6, within=15)
        await client.aclose()
        client = Redis.from_url(url)  # the old connection died with the old server
        reader = Reader(client, Names(mdc.mdc_prefix))
        for i in range(5):
            assert (await reader.stats(f"DURING{i}"))["trades"] == 1
        assert await reader.stats("BEFORE") is None  # the restarted Redis kept nothing: no persistence
        assert service.redis_ok and service.consumer.stats.stale == 0
        status, _, _ = await http(service.http.port, "GET", "/readyz")
        assert status == 200
        stop.set()
        await asyncio.wait_for(task, 15)
        await client.aclose()


# -- leaderboards across replicas, heartbeat, plug-in, the command ---------------------------------


async def test_leaderboards_are_published_once_per_interval_across_replicas(mdq, redis):
    mdc = mdc_settings()
    names = Names(mdc.mdc_prefix)
    updates = await updates_for(redis, names)
    settings = mdp_settings(mdp_leaders_interval_s=0.25)
    async with running(mdq, mdc, settings) as a, running(mdq, mdc, settings):
        for i in range(8):
            await send(
                mdq, "trades", [trade("AAA", p=100 + i, t=T0 + i, q=i), trade("BBB", p=50 - i, t=T0 + i, q=i)]
            )
            await asyncio.sleep(0.1)
        await applied(a, 16)
        await asyncio.sleep(0.6)
        published = len(updates.on("leaders.gainers"))
        await asyncio.sleep(0.6)  # nothing changes: nothing more is published
        assert len(updates.on("leaders.gainers")) == published
    await updates.stop()
    gainers = updates.on("leaders.gainers")
    assert 1 <= len(gainers) <= 6  # 8 changes in ~1 s, two replicas, at most one per 0.25 s
    assert [u.seq for u in gainers] == list(range(1, len(gainers) + 1))
    times = [u.sent for u in gainers]
    assert all(b - a >= 150 for a, b in itertools.pairwise(times))


async def test_heartbeat_and_readiness(mdq, redis):
    mdc = mdc_settings()
    async with running(mdq, mdc, mdp_settings()) as service:
        await eventually(lambda: service.heartbeat.ok)
        await service.heartbeat.beat()  # the first beat may predate the broker connection
        beats = await Reader(redis, Names(mdc.mdc_prefix)).heartbeats()
        (beat,) = [b for b in beats if b["instance"] == service.instance]
        assert beat["component"] == "mdp" and beat["ready"] is True and "events_per_s" in beat
        assert 0 < await redis.ttl(Names(mdc.mdc_prefix).heartbeat("mdp", service.instance)) <= 15
        status, _, body = await http(service.http.port, "GET", "/readyz")
        assert status == 200 and orjson.loads(body)["redis"] == "ok"
    assert await Reader(redis, Names(mdc.mdc_prefix)).heartbeats() == []  # a clean stop removes it


async def test_momentum_plugin_publishes_signals(mdq, redis):
    mdc = mdc_settings()
    names = Names(mdc.mdc_prefix)
    updates = await updates_for(redis, names)
    closes = [100.0] * 25 + [110.0] * 5
    bars_ = [bar("AM", "MOM", s=T0 + i * 60_000, o=c, h=c, low=c, c=c) for i, c in enumerate(closes)]
    async with running(mdq, mdc, mdp_settings(mdp_plugins="momentum")) as service:
        await send(mdq, "aggregates", bars_)
        await applied(service, len(bars_))
        await eventually(lambda: bool(updates.on("signals.momentum")))
        stored = orjson.loads(await redis.get(names.signal("momentum", "MOM")))
    await updates.stop()
    (signal_,) = updates.on("signals.momentum")
    assert signal_.type == "signal" and signal_.data["side"] == "buy" and stored == signal_.data


def test_mdp_command_runs_and_stops_cleanly(mdq):
    port = free_port()
    env = {**os.environ, "MDQ_EXCHANGE": mdq.mdq_exchange, "MDP_HTTP_PORT": str(port), "REDIS_URL": REDIS_URL,
           "MDC_PREFIX": mdc_settings().mdc_prefix, "LOG_FORMAT": "json"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "mdpipe", "mdp"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                status, _, _ = asyncio.run(http(port, "GET", "/readyz"))
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("mdpipe mdp never became ready")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "guest:guest" not in err


def test_mdp_command_refuses_bad_settings():
    env = {**os.environ, "MDP_CLASSES": "trades,bogus", "MDP_TIMEZONE": "Mars/Base"}
    result = subprocess.run([sys.executable, "-m", "mdpipe", "mdp"], env=env, capture_output=True, text=True,
                            timeout=30)  # fmt: skip
    assert result.returncode == 2
    assert (
        "MDP_CLASSES" in result.stderr
        and "MDP_TIMEZONE" in result.stderr
        and "Traceback" not in result.stderr
    )
