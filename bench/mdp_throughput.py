"""How many events per second one processor (MDP) applies from RabbitMQ to Redis with the default
processors, at what CPU cost (its own and Redis's) and how many Redis commands per event, against a naive
consumer doing one Redis round trip per event.

What is measured
----------------
The bench generates a realistic stream with ``sim.market.SyntheticMarket`` (``--symbols`` symbols,
``--events`` events: about 85% quotes, 15% trades, second bars, LULD bands; the market clock starts 6 s
before a minute closes, so minute bars and imbalances are in it too), routes every event to its MDQ class
(``mdq.topology.EVENT_CLASSES["stocks"]``, ``other`` for the rest) and cuts each class's events into MDQ
messages of ``--batch`` events, encoded as the listener does (JSON array body, ``mdq.message.properties``
headers, ``mdq-recv-ns`` = the time of publish). The messages go, before anything is measured, into the
queues of a bench exchange of its own (``MDQ_EXCHANGE=bench-<random>``, ``MDQ_MESSAGE_TTL_MS`` 10 min and
``MDQ_MAX_LENGTH``/``MDQ_MAX_BYTES`` large, so the backlog neither expires nor overflows). Then, one after
the other:

- ``mdp``: ONE ``mdpipe mdp`` process, as deployed (every class, ``MDP_PLUGINS=momentum``, every other
  ``MDP_*``/``MDC_*`` at its default, ``MDC_PREFIX=bench-<random>``), drains the backlog. The window runs
  from its first applied event (``mdpipe_mdp_events_total`` > 0 on ``/metrics``, polled every 10 ms
  until then) to every event applied or refused (``mdpipe_mdp_events_total`` + invalid = events sent,
  polled every ``--poll`` seconds, every 20 ms near the end);
- ``naive``: a baseline written in this file (not product code), in its own process: aio-pika, one
  consumer per queue (as MDP has), and for every event ONE awaited Redis command, ``SET
  <prefix>:naive:<ev>:<sym> json.dumps(event)``, then the message's ack. The queues are refilled with the
  first messages of the same stream; the window starts ``--warmup`` s after its first event and ends after
  ``--naive-events`` events or ``--naive-seconds``, whichever comes first (it is slow).

Figures over each window: events/s, and the ratio of MDP's to the naive's (the headline: the target is
at least 28x); CPU of the process (``/proc/PID/stat``, user + system) per event; Redis CPU per event
(``INFO cpu``: used_cpu_user + used_cpu_sys deltas; the target is at most 3 us); Redis commands per event
(``INFO commandstats`` deltas, every command, those queued in MULTI/EXEC and run by EVAL included, ``INFO``
itself excluded); EXEC (transactions) per AMQP message, the groups MDP formed (messages already waiting,
folded and merged together, written as one transaction) and the time Redis spends inside EXEC per event
(``usec`` of EXEC in commandstats: Redis runs one transaction at a time); AMQP messages/s; RabbitMQ's CPU
(``beam.smp``, when local) and the rest of the machine (``/proc/stat``). Before any of it, the bench
applies the same messages one at a time in its own process with MDP's planner, merge and writes
(``mdp.plan``, ``mdp.merge``, ``mdp.writes``, built by ``mdp.service.ProcessorService``, nothing
connected) into a fresh ``mdp.book.Book``: the expected figures, and the pure-Python cost per event of
decode, plan, merge and encode.

Markets: ``--market options`` generates the stream with ``sim.markets.AssetMarket`` instead (the
emulator's options market: ``O:`` contracts, about 95% quotes ``Q``, 5% trades ``T``, second and minute
bars ``A``/``AM``; at most 630 contracts whatever ``--symbols`` says), routes it with
``EVENT_CLASSES["options"]`` and runs MDP (and the offline planner) with ``MASSIVE_MARKET=options``.
``--market stocks,options`` runs the whole bench once per market, one after the other (each its own
stream, queues, prefix and JSON: ``<stem>.<market>.json`` for a market other than stocks), then prints a
table of MDP's figures per market with the ratio of events/s per core to the first market's (and writes it
to ``<stem>.markets.json``).

Options for looking into it: ``--set MDP_X=VALUE`` (an MDP or MDC setting for the measured process, say
``MDP_GROUP_EVENTS=0`` for one message at a time), ``--shards N`` (``MDQ_SHARDS``: the stream is cut per
class and shard, and the one MDP process consumes every shard queue, one handler per queue), ``--batch``
(the listener sends up to 2000 events per message when backed up), ``--py-spy`` (samples MDP during its
window and prints where its CPU goes; raw samples in ``bench/results/mdp_throughput.py-spy.folded``) and
``--source DIR`` (runs ``mdpipe mdp`` from another source tree, to measure a patch against the same
stream).

Redis is shared by default (``--redis-url``, database 14 of the local server): ``INFO`` figures are
server-wide, so the bench measures the server's background load for a second before and after the run
and says when it is not negligible; ``--private-redis`` starts a throw-away ``redis-server`` instead.

Checks (exit status 1 when one fails): every message handled, none stale, failed or retried; events
applied = events sent - invalid, and per fold as planned offline; the queues empty at the end; the
symbols held = the symbols planned, each loaded from Redis once at least and once per queue at most (more:
state dropped and loaded again); Redis holds the expected keys under the prefix (one ``quote`` per quoted
symbol, one ``stats`` per traded or barred symbol..., one ``done`` marker per message), a ``seq`` for each
per-symbol channel and every ``stats`` symbol in the volume ranking; over the whole run, EXEC calls = the
groups MDP wrote, EVALSHA (leaderboards) at most one per interval, EVAL at most two per group (on a shared
Redis, where other clients add theirs, only the lower bounds). The exchange, its queues and every key
under the prefix are deleted at the end, whatever happens (but not when the bench is killed with
SIGKILL: delete ``bench-<random>*`` by hand).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import mmap
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pyspy
from mdl_throughput import (
    _json_safe,
    broker_pids,
    by_label,
    fmt_int,
    machine_info,
    parse_markets,
    run_markets,
    scrape,
    start_private_redis,
    total,
)
from procs import (
    ROOT,
    Child,
    child_env,
    free_port,
    health_notes,
    http_get,
    machine_busy,
    own_cpu,
    proc_cpu,
    public_env,
    terminate,
)

from mdc.names import Names
from mdpipe.settings import MdpSettings, mask_url

DEFAULT_JSON = ROOT / "bench" / "results" / "mdp_throughput.json"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
MARKET = "stocks"  # the default market
MARKETS = ("stocks", "options")  # sim.market.SyntheticMarket; sim.markets.AssetMarket for the others
START = "2026-11-20T14:30:54Z"  # fixed market clock; a minute closes 6 s in (minute bars, imbalances)
PLUGINS = "momentum"  # MDP's default processors: the built-in folds and the example plug-in
TTL_MS = 600_000  # the backlog must not expire while it waits (queue TTL and the consumer's age check)
MAX_LENGTH = 10_000_000
MAX_BYTES = 2**32
FIRST_EVENT_TIMEOUT_S = 60.0
STALL_TIMEOUT_S = 30.0  # no progress this long: the phase ends, short
BACKGROUND_S = 1.0  # Redis's background load is measured this long before the run
BACKGROUND_WARN = 0.02  # background commands over the window, as a share of ours, before a warning
COUNTERS = ("events", "messages", "errors")  # the naive child's counters, shared through mmap
COUNTER_BYTES = 8 * len(COUNTERS)
EXCLUDED_COMMANDS = ("info",)  # the bench's own polling

# The targets: the events/s per process, MDP against the naive consumer in the same run (it was
# 14-15x with a Lua script per group), and Redis's CPU per event.
TARGET_EVENTS_PER_S = 150_000
TARGET_RATIO = 28
TARGET_REDIS_US = 3.0  # Redis CPU per event

PHASES = {"mdp": "MDP (`mdpipe mdp`, default processors)", "naive": "naive: one round trip per event"}

# py-spy frames -> what MDP spends its time on (the first rule matching from the leaf up wins).
PROFILE_RULES = (
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("plan: event checks (mdp/events.py)", ("mdp/events.py",)),
    ("plan: trades fold (mdp/trades.py)", ("mdp/trades.py",)),
    ("plan: quotes fold (mdp/quotes.py)", ("mdp/quotes.py",)),
    ("plan: aggregates fold (mdp/aggregates.py)", ("mdp/aggregates.py",)),
    ("plan: halts, raw, plug-ins", ("mdp/halts.py", "mdp/raw.py", "mdp/plugins.py", "mdp/momentum.py")),
    ("plan: trading day (mdc/tradingday.py)", ("mdc/tradingday.py",)),
    ("plan: routing (Planner.plan)", ("mdp/plan.py",)),
    ("merge: day stats (mdp/stats.py)", ("mdp/stats.py",)),
    ("merge: state in memory, orjson.dumps of stats (mdp/merge.py)", ("mdp/merge.py",)),
    ("writes: RESP and envelopes (mdp/writes.py, mdc/envelope.py, mdc.wire.command)",
     ("mdp/writes.py", "mdc/envelope.py", "command (mdc/wire.py")),
    ("load: symbols not held (mdp/book.py)", ("mdp/book.py",)),
    ("Redis wire: send, hiredis parse (mdc/wire.py Pipeline)", ("mdc/wire.py",)),
    ("redis-py: leaderboards, heartbeat", ("redis/",)),
    ("AMQP: aio-pika/aiormq/pamqp (deliveries, acks)", ("aio_pika/", "aiormq/", "pamqp/")),
    ("decode: orjson.loads + headers (mdq/message.py)", ("mdq/message.py",)),
    ("consumer loop (mdq/consumer.py)", ("mdq/consumer.py",)),
    ("service: prepare, commit, _apply (mdp/service.py)", ("mdp/service.py",)),
)  # fmt: skip


# -- the stream ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Message:
    queue: str
    cls: str
    body: bytes
    count: int


@dataclass
class Stream:
    messages: list[Message]
    events: int
    by_type: dict[str, int]
    by_class: dict[str, int]
    symbols: dict[str, set[str]]  # event type -> distinct symbols
    market_seconds: float
    body_bytes: int
    generate_s: float


def build_stream(args: argparse.Namespace, exchange: str) -> Stream:
    """``--events`` events of the synthetic market, cut per class into messages of ``--batch`` events,
    in stream order (a message is emitted when its class has a batch full; the rest at the end)."""
    import orjson

    from mdpipe.settings import parse_start
    from mdq import topology
    from sim.market import SyntheticMarket
    from sim.markets import AssetMarket

    started = time.perf_counter()
    routes = topology.EVENT_CLASSES[args.market]
    market_args = {"seed": args.seed, "symbols": args.symbols, "rate": args.rate, "tick_ms": args.tick_ms,
                   "start_ms": parse_start(args.start)}  # fmt: skip
    market = (
        SyntheticMarket(**market_args) if args.market == MARKET else AssetMarket(args.market, **market_args)
    )
    first_ms = market.now_ms
    pending: dict[str, list[dict[str, Any]]] = {}
    messages: list[Message] = []
    by_type: collections.Counter[str] = collections.Counter()
    symbols: dict[str, set[str]] = collections.defaultdict(set)

    queues = {cls: topology.class_queues(exchange, cls, args.shards) for cls in topology.CLASSES}
    class_of = {queue: cls for cls, names in queues.items() for queue in names}

    def emit(queue: str, events: list[dict[str, Any]]) -> None:
        messages.append(Message(queue, class_of[queue], orjson.dumps(events), len(events)))

    n = 0
    while n < args.events:
        for event in market.tick():
            kind = event.get("ev")
            by_type[kind] += 1
            sym = event.get("sym") or event.get("T")
            symbols[kind].add(sym or "")
            shards = queues[routes.get(kind, topology.OTHER)]
            queue = shards[topology.shard_of(sym, args.shards)] if args.shards > 1 else shards[0]
            batch = pending.setdefault(queue, [])
            batch.append(event)
            if len(batch) >= args.batch:
                emit(queue, pending.pop(queue))
            n += 1
            if n >= args.events:
                break
    for queue, batch in pending.items():
        emit(queue, batch)
    by_class: collections.Counter[str] = collections.Counter()
    for m in messages:
        by_class[m.cls] += m.count
    return Stream(
        messages=messages, events=n, by_type=dict(by_type), by_class=dict(by_class),
        symbols=dict(symbols), market_seconds=(market.now_ms - first_ms) / 1000,
        body_bytes=sum(len(m.body) for m in messages), generate_s=time.perf_counter() - started,
    )  # fmt: skip


def plan_offline(stream: Stream, market: str = MARKET) -> dict[str, Any]:
    """Apply every message alone (a busy MDP folds groups of them) with MDP's own planner, merge and
    write context, built as ``mdpipe mdp`` builds them (nothing connects), into a fresh state in memory
    (the symbols it loads from an empty Redis): the expected figures, and the time of the pure-Python
    parts of MDP's work on one core of this process."""
    import orjson

    from mdp import plugins
    from mdp.book import SymbolState
    from mdp.service import ProcessorService
    from mdp.writes import Writes
    from mdpipe.settings import MdcSettings
    from mdq.message import Batch

    mdp = MdpSettings.model_construct(massive_market=market)
    service = ProcessorService(
        mdq_settings("bench", 1), MdcSettings.model_construct(), mdp, rabbitmq_url=DEFAULT_RABBITMQ_URL,
        redis_url=DEFAULT_REDIS_URL, plugins=plugins.load([PLUGINS], mdp),
    )  # fmt: skip
    planner, merger, book, ctx = service.planner, service.merger, service.book, service.context
    events: collections.Counter[str] = collections.Counter()
    symbols: dict[str, set[str]] = collections.defaultdict(set)  # queue -> the symbols it merges
    invalid = commands = evals = publishes = payload_bytes = 0
    decode_s = plan_s = merge_s = encode_s = 0.0
    clock = time.perf_counter
    for seq, m in enumerate(stream.messages):
        t0 = clock()
        batch = Batch(orjson.loads(m.body), m.cls, 0, "bench", seq, m.queue)
        t1 = clock()
        plan = planner.plan(batch)
        t2 = clock()
        book.install([SymbolState(sym) for sym in book.missing(plan.symbols)])  # loaded: nothing yet
        t3 = clock()
        writes = Writes(ctx, 0)
        merger.apply(plan, book, writes)
        writes.done(batch.message_id)
        t4 = clock()
        payload, n = writes.transaction()
        t5 = clock()
        decode_s, plan_s = decode_s + t1 - t0, plan_s + t2 - t1
        merge_s, encode_s = merge_s + t4 - t3, encode_s + t5 - t4
        events.update(plan.events)
        symbols[m.queue] |= plan.symbols
        invalid += len(plan.invalid)
        commands += n
        evals += bool(writes.feeds or writes.day) + bool(writes.plugin)
        publishes += writes.publishes
        payload_bytes += len(payload)
    n = max(stream.events, 1)
    return {
        "applied": sum(events.values()),
        "events_by_fold": dict(events),
        "invalid": invalid,
        "symbols": len(set().union(*symbols.values())),
        "symbols_per_queue": sum(len(held) for held in symbols.values()),
        "transactions": len(stream.messages),
        "commands": commands,  # sent, MULTI and EXEC included (not the commands the EVALs run)
        "evals": evals,
        "publishes": publishes,
        "payload_bytes": payload_bytes,
        "us_per_event": {
            "decode": decode_s * 1e6 / n,
            "plan": plan_s * 1e6 / n,
            "merge": merge_s * 1e6 / n,
            "encode": encode_s * 1e6 / n,
            "total": (decode_s + plan_s + merge_s + encode_s) * 1e6 / n,
        },
    }


# -- RabbitMQ ----------------------------------------------------------------------------------------------


def mdq_settings(exchange: str, shards: int):
    from mdpipe.settings import MdqSettings

    return MdqSettings.model_construct(
        mdq_exchange=exchange, mdq_message_ttl_ms=TTL_MS, mdq_max_length=MAX_LENGTH, mdq_max_bytes=MAX_BYTES,
        mdq_shards=shards,
    )  # fmt: skip


def mdq_env(exchange: str, shards: int) -> dict[str, str]:
    """What the children need to declare the same queues as the bench (other arguments: refused)."""
    return {
        "MDQ_EXCHANGE": exchange,
        "MDQ_SHARDS": str(shards),
        "MDQ_MESSAGE_TTL_MS": str(TTL_MS),
        "MDQ_MAX_LENGTH": str(MAX_LENGTH),
        "MDQ_MAX_BYTES": str(MAX_BYTES),
    }


async def _publish(
    url: str, exchange: str, shards: int, messages: list[Message], source: str
) -> dict[str, Any]:
    """Declare the topology, publish ``messages`` in order with publisher confirms (``mdq-recv-ns`` now),
    and return the queue depths after."""
    import aio_pika

    from mdq import message as mdq_message
    from mdq import topology

    settings = mdq_settings(exchange, shards)
    started = time.perf_counter()
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queues = await topology.declare(channel, settings)
        underlay = await channel.get_underlay_channel()
        seqs: dict[str, int] = {}
        for m in messages:
            seq = seqs[m.queue] = seqs.get(m.queue, 0) + 1
            props = mdq_message.properties(
                queue=m.queue, cls=m.cls, count=m.count, recv_ns=time.time_ns(), source=source, seq=seq
            )
            await underlay.basic_publish(m.body, exchange=exchange, routing_key=m.queue, properties=props)
        depths = await _depths_on(channel, queues)
    return {"seconds": time.perf_counter() - started, "depths": depths}


def amqp(coroutine, url: str) -> Any:
    """Run one of the AMQP steps below; the broker away or refusing is a RuntimeError (reported)."""
    try:
        return asyncio.run(coroutine)
    except (OSError, TimeoutError, ConnectionError) as exc:
        raise RuntimeError(f"RabbitMQ at {mask_url(url)}: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        if type(exc).__module__.startswith(("aiormq", "aio_pika", "mdq")):
            raise RuntimeError(f"RabbitMQ at {mask_url(url)}: {type(exc).__name__}: {exc}") from None
        raise


async def _depths_on(channel, queues: list[str]) -> dict[str, int]:
    out = {}
    for name in queues:
        queue = await channel.declare_queue(name, passive=True)
        out[name] = queue.declaration_result.message_count
    return out


async def _depths(url: str, exchange: str, shards: int) -> dict[str, int]:
    import aio_pika

    from mdq import topology

    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel()
        return await _depths_on(channel, topology.queue_names(exchange, shards))


async def _delete(url: str, exchange: str, shards: int) -> dict[str, Any]:
    import aio_pika

    from mdq import topology

    dead = topology.dead_letter_name(exchange)
    targets = [*((q, "queue") for q in [*topology.queue_names(exchange, shards), dead])]
    targets += [(exchange, "exchange"), (dead, "exchange")]
    result: dict[str, Any] = {"deleted": [], "failed": {}}
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel()
        for name, kind in targets:
            try:
                if kind == "queue":
                    await channel.queue_delete(name)
                else:
                    await channel.exchange_delete(name)
                result["deleted"].append(f"{kind} {name}")
            except Exception as exc:  # a refused delete closes the channel: note it and go on
                result["failed"][f"{kind} {name}"] = f"{type(exc).__name__}: {exc}"
                channel = await connection.channel()
    return result


# -- Redis -------------------------------------------------------------------------------------------------


@dataclass
class RedisReading:
    wall: float
    cpu: float  # used_cpu_user + used_cpu_sys, seconds
    calls: dict[str, int]
    usec: dict[str, int]  # time spent in each command (EXEC's and EVAL's include the commands they run)


def redis_reading(client) -> RedisReading:
    raw = client.execute_command("INFO", "cpu", "commandstats")
    stats = {k.removeprefix("cmdstat_"): v for k, v in raw.items() if k.startswith("cmdstat_")}
    calls = {k: int(v["calls"]) for k, v in stats.items()}
    usec = {k: int(v["usec"]) for k, v in stats.items()}
    cpu = float(raw["used_cpu_user"]) + float(raw["used_cpu_sys"])
    return RedisReading(time.perf_counter(), cpu, calls, usec)


def redis_background(client) -> dict[str, Any]:
    """What other clients make Redis do while nothing of ours runs, over ``BACKGROUND_S``."""
    b0 = redis_reading(client)
    time.sleep(BACKGROUND_S)
    b1 = redis_reading(client)
    calls, seconds = calls_delta(b1, b0), b1.wall - b0.wall
    return {"seconds": seconds, "commands_per_s": sum(calls.values()) / seconds,
            "cores": (b1.cpu - b0.cpu) / seconds, "calls": calls}  # fmt: skip


def calls_delta(after: RedisReading, before: RedisReading) -> dict[str, int]:
    out = {}
    for name, n in after.calls.items():
        d = n - before.calls.get(name, 0)
        if d and name not in EXCLUDED_COMMANDS:
            out[name] = d
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def key_census(client, prefix: str) -> dict[str, int]:
    """Keys under ``prefix:`` by kind (``stats``, ``quote``...; ``raw:NOI`` for raw events)."""
    counts: collections.Counter[str] = collections.Counter()
    for key in client.scan_iter(match=f"{prefix}:*", count=5000):
        parts = key.decode(errors="replace").split(":")
        if len(parts) > 1 and parts[1] == f"{{{prefix}}}":  # a market-wide name: md:{md}:feed:halts
            del parts[1]
        kind = parts[1] if len(parts) > 1 else ""
        if kind in ("raw", "feed", "board", "rank", "hb", "signal") and len(parts) > 2:
            kind = f"{kind}:{parts[2]}"
        counts[kind] += 1
    return dict(sorted(counts.items()))


def seq_census(client, prefix: str) -> dict[str, int]:
    """The channels with a ``seq`` (each symbol's in ``Names.symbol_seq``) by kind: ``quotes.AAPL`` is
    quotes."""
    counts: collections.Counter[str] = collections.Counter()
    for key in client.scan_iter(match=Names(prefix).symbol_seq("*"), count=5000):
        for name in client.hkeys(key):
            counts[name.decode(errors="replace").partition(".")[0]] += 1
    return dict(sorted(counts.items()))


def delete_keys(client, prefix: str) -> int:
    deleted, batch = 0, []
    for key in client.scan_iter(match=f"{prefix}:*", count=5000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += client.unlink(*batch)
            batch = []
    if batch:
        deleted += client.unlink(*batch)
    return deleted


def expected_keys(stream: Stream) -> dict[str, int]:
    """What MDP must leave under the prefix, per kind of key, from the symbols of the stream (and one
    redelivery marker per message)."""
    s = stream.symbols
    empty: set[str] = set()
    return {
        "quote": len(s.get("Q", empty)),
        "trade": len(s.get("T", empty)),
        "trades": len(s.get("T", empty)),
        "stats": len(s.get("T", empty) | s.get("A", empty) | s.get("AM", empty)),
        "bar1s": len(s.get("A", empty)),
        "bars1m": len(s.get("AM", empty)),
        "luld": len(s.get("LULD", empty)),
        "done": len(stream.messages),
    }


def expected_channels(stream: Stream) -> dict[str, int]:
    """The per-symbol channels MDP must have published on (each has its ``seq``), by kind."""
    keys, s = expected_keys(stream), stream.symbols
    bars = s.get("A", set()) | s.get("AM", set())
    return {"quotes": keys["quote"], "trades": keys["trade"], "bars": len(bars), "stats": keys["stats"],
            "luld": keys["luld"]}  # fmt: skip


# -- the naive baseline (a child process) -----------------------------------------------------------------


def naive_child(args: argparse.Namespace) -> int:
    """``--naive-child``: consume every queue of ``--exchange``; for each event one awaited ``SET``."""
    import aio_pika
    from redis.asyncio import Redis

    from mdpipe import runtime
    from mdq import topology

    with open(args.counters, "r+b") as f:
        shared = mmap.mmap(f.fileno(), COUNTER_BYTES)
    counts = memoryview(shared).cast("q")
    prefix = args.prefix

    async def main(stop: asyncio.Event) -> int:
        redis = Redis.from_url(os.environ["REDIS_URL"])
        connection = await aio_pika.connect(os.environ["RABBITMQ_URL"], timeout=10)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=16)

            async def consume(name: str) -> None:
                queue = await channel.get_queue(name)
                async with queue.iterator() as messages:
                    async for message in messages:
                        for event in json.loads(message.body):
                            sym = event.get("sym") or event.get("T") or "-"
                            await redis.set(f"{prefix}:naive:{event.get('ev')}:{sym}", json.dumps(event))
                            counts[0] += 1
                        await message.ack()
                        counts[1] += 1

            queues = topology.queue_names(args.exchange, args.shards)
            tasks = [asyncio.create_task(consume(q)) for q in queues]
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            failed = [t.exception() for t in done if t is not stopper and not t.cancelled() and t.exception()]
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5)
            for task in tasks:  # retrieve what they ended with: closing their iterators may raise
                if task.done() and not task.cancelled():
                    task.exception()
            if failed:
                counts[2] += 1
                print(f"naive consumer failed: {failed[0]!r}", file=sys.stderr)
                return 1
            return 0
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)
            with contextlib.suppress(Exception):
                await redis.aclose()

    try:
        return runtime.serve(main)
    finally:
        counts.release()
        shared.close()


# -- one measurement -------------------------------------------------------------------------------------


def component_env(extra: dict[str, str]) -> dict[str, str]:
    """``child_env`` without any ``MDP_*``/``MDC_*`` of the caller either: the defaults, then ours."""
    env = {k: v for k, v in child_env({}).items() if not k.startswith(("MDP_", "MDC_"))}
    env.update(extra)
    return env


def shown_env(env: dict[str, str]) -> dict[str, str]:
    return {**public_env(env), **{k: v for k, v in env.items() if k.startswith(("MDP_", "MDC_"))}}


@dataclass
class Snapshot:
    wall: float
    subject: float  # CPU seconds
    broker: float
    bench: float
    busy: float
    steal: float
    redis: RedisReading
    counts: dict[str, Any]


def snapshot(subject: Child, brokers: list[int], rclient, counts) -> Snapshot:
    """CPU of every party, Redis's INFO, then the counts (a metrics scrape, or the naive's counters)."""
    busy, steal = machine_busy()
    snap = Snapshot(
        wall=time.perf_counter(), subject=subject.cpu_seconds(), broker=sum(proc_cpu(p) for p in brokers),
        bench=own_cpu(), busy=busy, steal=steal, redis=redis_reading(rclient), counts={},
    )  # fmt: skip
    snap.counts = counts()
    return snap


@dataclass
class Phase:
    name: str
    seconds: float
    events: int
    messages: int
    cpu: float  # cores: the subject
    broker_cpu: float
    bench_cpu: float
    redis_cpu: float
    other_cpu: float  # the rest of the machine
    steal: float
    rss_mb: float
    redis_calls: dict[str, int]
    redis_exec_s: float  # inside EXEC (the transactions and the commands they run)
    detail: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> dict[str, float]:
        s, ev = self.seconds, self.events
        per_event = s * 1e6 / ev if ev else float("nan")
        us = self.cpu * per_event
        calls = sum(self.redis_calls.values())
        return {
            "events_per_s": ev / s,
            "cpu_us_per_event": us,
            "cores": self.cpu,
            "events_per_s_per_core": 1e6 / us if ev and us else 0.0,
            "redis_cpu_us_per_event": self.redis_cpu * per_event,
            "redis_cores": self.redis_cpu,
            "redis_exec_us_per_event": self.redis_exec_s * 1e6 / ev if ev else float("nan"),
            "redis_commands_per_event": calls / ev if ev else float("nan"),
            "redis_commands_per_s": calls / s,
            "exec_per_message": self.redis_calls.get("exec", 0) / self.messages if self.messages else 0.0,
            "messages_per_s": self.messages / s,
            "events_per_message": ev / self.messages if self.messages else 0.0,
            "broker_cores": self.broker_cpu,
            "broker_us_per_message": self.broker_cpu * s * 1e6 / self.messages if self.messages else 0.0,
            "bench_cores": self.bench_cpu,
            "other_cores": self.other_cpu,
            "steal_cores": self.steal,
            "rss_mb": self.rss_mb,
        }


def make_phase(name: str, s0: Snapshot, s1: Snapshot, events: int, messages: int, rss: float) -> Phase:
    dt = s1.wall - s0.wall
    cpu, brk, bench = ((getattr(s1, k) - getattr(s0, k)) / dt for k in ("subject", "broker", "bench"))
    redis = (s1.redis.cpu - s0.redis.cpu) / dt
    busy = (s1.busy - s0.busy) / dt
    return Phase(
        name=name, seconds=dt, events=events, messages=messages, cpu=cpu, broker_cpu=brk, bench_cpu=bench,
        redis_cpu=redis, other_cpu=max(0.0, busy - cpu - brk - bench - redis),
        steal=(s1.steal - s0.steal) / dt, rss_mb=rss, redis_calls=calls_delta(s1.redis, s0.redis),
        redis_exec_s=(s1.redis.usec.get("exec", 0) - s0.redis.usec.get("exec", 0)) / 1e6,
    )  # fmt: skip


FINAL_RESULTS = ("applied", "duplicate", "stale", "malformed", "failed")


def mdp_counts(port: int) -> dict[str, Any]:
    m = scrape(port)
    messages = by_label(m, "mdpipe_mdp_messages_total", "result")
    return {
        "ok": bool(m),
        "events": total(m, "mdpipe_mdp_events_total"),
        "events_by_fold": by_label(m, "mdpipe_mdp_events_total", "fold"),
        "invalid": total(m, "mdpipe_mdp_invalid_events_total"),
        "messages": messages,
        "messages_done": sum(messages.get(r, 0.0) for r in FINAL_RESULTS),
        "dead_letters": by_label(m, "mdpipe_mdp_dead_letters_total", "reason"),
        "redis_errors": by_label(m, "mdpipe_mdp_redis_errors_total", "kind"),
        "leaderboards": total(m, "mdpipe_mdp_leaderboards_published_total"),
        "published": total(m, "mdpipe_mdp_updates_published_total"),
        "symbols_held": total(m, "mdpipe_mdp_symbols_held"),
        "symbols_loaded": total(m, "mdpipe_mdp_symbols_loaded_total"),
        "batch_sum": total(m, "mdpipe_mdp_batch_seconds_sum"),
        "batch_count": total(m, "mdpipe_mdp_batch_seconds_count"),
        "age_sum": total(m, "mdpipe_mdp_message_age_seconds_sum"),
        "age_count": total(m, "mdpipe_mdp_message_age_seconds_count"),
    }


def measure_mdp(args, ctx: dict[str, Any], stream: Stream, plan: dict[str, Any], rclient, progress) -> Phase:
    port = free_port()
    env = component_env({
        **mdq_env(ctx["exchange"], args.shards), "MDC_PREFIX": ctx["prefix"], "MDP_PLUGINS": PLUGINS,
        "MDP_HTTP_PORT": str(port), "MDP_INSTANCE": ctx["exchange"], "RABBITMQ_URL": args.rabbitmq_url,
        "REDIS_URL": ctx["redis_url"], "LOG_LEVEL": "WARNING", "MASSIVE_MARKET": args.market,
        **dict(args.set),
    })  # fmt: skip
    port = int(env["MDP_HTTP_PORT"])  # --set MDP_HTTP_PORT=... wins: poll where it listens
    argv = [sys.executable, "-m", "mdpipe", "mdp"]
    if args.source:  # another checkout first on the path: a candidate patch against the same stream
        path = str(args.source.resolve())
        code = f"import sys; sys.path.insert(0, {path!r}); import mdpipe.cli as c; sys.exit(c.main())"
        argv = [sys.executable, "-c", code, "mdp"]
    mdp = Child("mdp", argv, env, http_port=port)
    ctx["processes"]["mdp"] = {"argv": ["python", *argv[1:]], "env": shown_env(env)}
    brokers = ctx["broker_pids"]
    need_events = stream.events  # applied + invalid
    need_messages = len(stream.messages)  # each written with its redelivery marker, invalid events or not
    profiler: Profiler | None = None
    profile: dict[str, Any] | None = None
    whole0 = redis_reading(rclient)

    def counts() -> dict[str, Any]:
        return mdp_counts(port)

    def finished(c: dict[str, Any]) -> bool:
        return c["events"] + c["invalid"] >= need_events and c["messages_done"] >= need_messages

    try:
        mdp.start(0 if args.pin else None)
        deadline = time.monotonic() + FIRST_EVENT_TIMEOUT_S
        while True:
            mdp.alive()
            c = counts()
            if c["ok"] and c["events"] > 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"mdp: no event applied within {FIRST_EVENT_TIMEOUT_S:.0f}s")
            time.sleep(0.01)
        s0 = s = last = snapshot(mdp, brokers, rclient, counts)
        progress(
            f"mdp applying after {s0.wall - mdp.started:.1f}s "
            f"(first snapshot at {fmt_int(s0.counts['events'])} events)"
        )
        if args.py_spy:
            profiler = Profiler(mdp.pid, args.json.with_name(args.json.stem + ".py-spy.folded"))
        series, stalled_since = [], time.monotonic()
        while not finished(s.counts):
            remaining = need_events - s.counts["events"] - s.counts["invalid"]
            time.sleep(args.poll if remaining > 0.1 * need_events else min(args.poll, 0.02))
            mdp.alive()
            s = snapshot(mdp, brokers, rclient, counts)
            if not s.counts["ok"]:
                raise RuntimeError("mdp: /metrics did not answer")
            dt = s.wall - last.wall
            series.append({
                "t": round(s.wall - s0.wall, 3),
                "events_per_s": (s.counts["events"] - last.counts["events"]) / dt,
                "cores": (s.subject - last.subject) / dt,
                "redis_cores": (s.redis.cpu - last.redis.cpu) / dt,
            })  # fmt: skip
            if (
                s.counts["events"] != last.counts["events"]
                or s.counts["messages_done"] != last.counts["messages_done"]
            ):
                stalled_since = time.monotonic()
            elif time.monotonic() - stalled_since > STALL_TIMEOUT_S:
                progress(f"mdp: no progress for {STALL_TIMEOUT_S:.0f}s; the phase ends short")
                break
            last = s
        if profiler is not None:
            profile = profiler.stop()
            profiler = None
        if s is s0:
            raise RuntimeError("mdp: every event was applied before the first snapshot; use more --events")
        ready = http_get(port, "/readyz")
        rss = mdp.rss_mb()
    finally:
        if profiler is not None:
            profiler.stop()
        mdp.stop()
        ctx["processes"]["mdp"]["log_lines"] = mdp.log_lines()
        mdp.close()
    whole1 = redis_reading(rclient)
    c0, c1 = s0.counts, s.counts
    phase = make_phase(
        "mdp", s0, s, int(c1["events"] - c0["events"]), int(c1["messages_done"] - c0["messages_done"]), rss
    )
    depths = amqp(_depths(args.rabbitmq_url, ctx["exchange"], args.shards), args.rabbitmq_url)
    census = key_census(rclient, ctx["prefix"])
    channels = seq_census(rclient, ctx["prefix"])
    rankings = rclient.scan_iter(match=Names(ctx["prefix"]).ranking("*", "*"), count=1000)
    ranked = {key.decode(): rclient.zcard(key) for key in rankings}
    whole_calls = calls_delta(whole1, whole0)
    rates = [p["events_per_s"] for p in series]
    batches = c1["batch_count"] - c0["batch_count"]
    phase.detail = {
        "events_applied": c1["events"],
        "events_invalid": c1["invalid"],
        "events_by_fold": c1["events_by_fold"],
        "messages": c1["messages"],
        "dead_letters": c1["dead_letters"],
        "redis_errors": c1["redis_errors"],
        "leaderboards_published": c1["leaderboards"],
        "updates_published": c1["published"],
        "symbols_held": c1["symbols_held"],
        "symbols_loaded": c1["symbols_loaded"],
        "groups_total": c1["batch_count"],
        "events_before_window": c0["events"],
        "groups": batches,
        "messages_per_group": phase.messages / batches if batches else None,
        "group_ms": (c1["batch_sum"] - c0["batch_sum"]) * 1000 / batches if batches else None,
        "groups_busy_share": (c1["batch_sum"] - c0["batch_sum"]) / phase.seconds,
        "mean_message_age_s": c1["age_sum"] / c1["age_count"] if c1["age_count"] else None,
        "events_per_s_min": min(rates, default=0.0),
        "events_per_s_max": max(rates, default=0.0),
        "queue_depths_after": depths,
        "redis_keys": census,
        "redis_seq_channels": channels,
        "redis_rankings": ranked,
        "redis_whole_run": {"seconds": whole1.wall - whole0.wall, "calls": whole_calls},
        "readyz": json.loads(ready) if ready else None,
        "series": series,
    }
    if profile is not None:
        phase.detail["profile"] = profile
    return phase


def measure_naive(args, ctx: dict[str, Any], stream: Stream, rclient, progress) -> Phase:
    want = 3 * args.naive_events
    refill, n = [], 0
    for m in stream.messages:
        if n >= want:
            break
        refill.append(m)
        n += m.count
    source = f"{ctx['exchange']}-naive"
    published = amqp(
        _publish(args.rabbitmq_url, ctx["exchange"], args.shards, refill, source), args.rabbitmq_url
    )
    progress(f"naive: queues refilled with {len(refill)} messages, {fmt_int(n)} events")
    with tempfile.NamedTemporaryFile(prefix="mdp-bench-", suffix=".counters") as f:
        f.write(b"\0" * COUNTER_BYTES)
        f.flush()
        shared = mmap.mmap(f.fileno(), COUNTER_BYTES)
        view = memoryview(shared).cast("q")
        try:
            phase = _measure_naive(args, ctx, rclient, progress, f.name, view, n)
        finally:
            view.release()
            shared.close()
    phase.detail.update({"refilled_messages": len(refill), "refilled_events": n, "refill": published})
    return phase


def _measure_naive(args, ctx, rclient, progress, path: str, view, refilled: int) -> Phase:
    argv = [sys.executable, str(Path(__file__).resolve()), "--naive-child", "--exchange", ctx["exchange"],
            "--shards", str(args.shards), "--prefix", ctx["prefix"], "--counters", path]  # fmt: skip
    env = component_env({"RABBITMQ_URL": args.rabbitmq_url, "REDIS_URL": ctx["redis_url"]})
    child = Child("naive", argv, env)
    ctx["processes"]["naive"] = {
        "argv": ["python", Path(__file__).name, *argv[2:-1], "<counters file>"],
        "env": shown_env(env),
    }
    brokers = ctx["broker_pids"]

    def counts() -> dict[str, Any]:
        return dict(zip(COUNTERS, view.tolist(), strict=True))

    try:
        child.start(0 if args.pin else None)
        deadline = time.monotonic() + FIRST_EVENT_TIMEOUT_S
        while view[0] == 0:
            child.alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"naive: no event within {FIRST_EVENT_TIMEOUT_S:.0f}s")
            time.sleep(0.01)
        progress(f"naive consuming after {time.perf_counter() - child.started:.1f}s")
        time.sleep(args.warmup)
        s0 = s = snapshot(child, brokers, rclient, counts)
        while True:
            time.sleep(0.05)
            child.alive()
            s = snapshot(child, brokers, rclient, counts)
            done = s.counts["events"] - s0.counts["events"]
            if done >= args.naive_events or s.wall - s0.wall >= args.naive_seconds:
                break
            if s.counts["events"] >= refilled:
                progress("naive: drained the refill before the end of its window")
                break
        rss = child.rss_mb()
    finally:
        child.stop()
        ctx["processes"]["naive"]["log_lines"] = child.log_lines()
        child.close()
    c0, c1 = s0.counts, s.counts
    phase = make_phase(
        "naive", s0, s, c1["events"] - c0["events"], c1["messages"] - c0["messages"], rss
    )  # fmt: skip
    phase.detail = {"errors": c1["errors"], "events_total": c1["events"], "messages_total": c1["messages"]}
    return phase


# -- optional profile ----------------------------------------------------------------------------------


class Profiler:
    """py-spy sampling MDP (without pausing it) for the whole window, raw samples to ``folded``."""

    def __init__(self, pid: int, folded: Path) -> None:
        self.folded = folded
        self.proc: subprocess.Popen[str] | None = None
        self.error: str | None = None
        exe = pyspy.exe()
        if exe is None:
            self.error = pyspy.NOT_FOUND
            return
        folded.parent.mkdir(parents=True, exist_ok=True)
        folded.unlink(missing_ok=True)
        cmd = [exe, "record", "-p", str(pid), "-r", "100", "-f", "raw", "-o", str(folded), "--nonblocking"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> dict[str, Any]:
        proc = self.proc
        if proc is None:
            return {"error": self.error or "not started"}
        self.proc = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        if not self.folded.exists():
            lines = (output or "no output").strip().splitlines()
            return {"error": f"py-spy failed: {lines[0][:300] if lines else ''}"}
        summary = pyspy.summarize(self.folded.read_text(), PROFILE_RULES, top_lines=20, top_functions=30)
        return {**summary, "folded": str(self.folded)}


# -- report --------------------------------------------------------------------------------------------


def checks_for(
    stream: Stream, plan: dict[str, Any], phase: Phase | None, private: bool, interval: float
) -> dict[str, Any]:
    from mdp.service import RANKS_EVERY_S

    if phase is None:
        return {}
    d = phase.detail
    msgs = d["messages"]
    keys = d["redis_keys"]
    volume = [n for key, n in d["redis_rankings"].items() if key.endswith(":volume")]
    out = {
        "messages_handled": {
            "expected": len(stream.messages),
            "measured": msgs.get("applied", 0.0) + msgs.get("duplicate", 0.0),
        },
        "stale_failed_malformed_retried": {
            "expected": 0,
            "measured": sum(msgs.get(r, 0.0) for r in ("stale", "failed", "malformed", "retried")),
        },
        "events_applied": {"expected": stream.events - d["events_invalid"], "measured": d["events_applied"]},
        "events_invalid": {"expected": plan["invalid"], "measured": d["events_invalid"]},
        "events_by_fold": {"expected": plan["events_by_fold"], "measured": d["events_by_fold"]},
        "queues_empty": {"expected": 0, "measured": sum(d["queue_depths_after"].values())},
        "symbols_held": {"expected": plan["symbols"], "measured": d["symbols_held"]},
        "ranking_volume": {"expected": [expected_keys(stream)["stats"]], "measured": volume},
    }
    for kind, n in expected_keys(stream).items():
        out[f"redis_keys_{kind}"] = {"expected": n, "measured": keys.get(kind, 0)}
    for kind, n in expected_channels(stream).items():
        out[f"seq_channels_{kind}"] = {"expected": n, "measured": d["redis_seq_channels"].get(kind, 0)}
    for item in out.values():
        item["expected"], item["measured"] = _whole(item["expected"]), _whole(item["measured"])
        item["ok"] = item["expected"] == item["measured"]
    # Ranges. Each symbol is loaded once from the empty Redis, or once per queue at most (the queues'
    # groups run side by side, and each loads what is not held yet); more means state dropped and
    # loaded again. Redis, over the whole run: one transaction per group written (another for a retry,
    # none for a group of repeats only); the leaderboards once per interval; at most two EVALs in a
    # transaction. On a shared Redis other clients add theirs: only the lower bounds hold.
    calls = d["redis_whole_run"]["calls"]
    groups = d["groups_total"]
    for name, least, most, text, measured, server_wide in (
        ("symbols_loaded", plan["symbols"], plan["symbols_per_queue"], "symbols..sum per queue",
         d["symbols_loaded"], False),
        # MDP writes pending rankings in a transaction of their own when no group carries them
        ("redis_exec_calls", groups, groups + d["redis_whole_run"]["seconds"] / RANKS_EVERY_S + 2,
         "groups written, + ranking flushes while quiet and at the stop", calls.get("exec", 0), True),
        ("redis_evalsha_calls", 1, d["redis_whole_run"]["seconds"] / interval + 3,
         "leaderboard intervals + 3", calls.get("evalsha", 0), True),
        ("redis_eval_calls", 0, 2 * groups, "2 per group", calls.get("eval", 0), True),
    ):  # fmt: skip
        bounded = private or not server_wide
        out[name] = {
            "expected": f"{least:.0f}..{most:.0f} ({text})" + ("" if bounded else ", or more: shared Redis"),
            "measured": _whole(measured),
            "ok": least <= measured and (not bounded or measured <= most),
        }
    return out


def _whole(value: Any) -> Any:
    """Counts from /metrics are floats: as integers, to compare with what was planned."""
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in sorted(value.items()) if v}
    return int(value) if isinstance(value, float) and value.is_integer() else value


def report(args, stream: Stream, plan: dict[str, Any], phases: dict[str, Phase], ctx: dict[str, Any]):
    figures = {name: p.figures() for name, p in phases.items()}
    mdp, base = figures.get("mdp"), figures.get("naive")
    lines = [
        f"mdp_throughput: {fmt_int(stream.events)} {'' if args.market == MARKET else f'{args.market} '}"
        f"events ({args.symbols} symbols, {len(stream.messages)} "
        f"messages of up to {args.batch} events) from RabbitMQ into Redis, {os.cpu_count()} CPUs, "
        f"Redis {'private' if args.private_redis else mask_url(ctx['redis_url'])}",
        "",
        "| processor | events/s | vs naive | CPU µs/event (process) | Redis CPU µs/event "
        "| Redis commands/event | EXEC/message | cores | events/s per core | messages/s | RabbitMQ cores "
        "| other cores |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, f in figures.items():
        ratio = (
            f"{f['events_per_s'] / base['events_per_s']:,.1f}x" if base and base["events_per_s"] else "n/a"
        )
        broker = f"{f['broker_cores']:.2f}" if ctx["broker_pids"] else "n/a"
        lines.append(
            f"| {PHASES[name]} | {fmt_int(f['events_per_s'])} | {ratio} | {f['cpu_us_per_event']:.2f} "
            f"| {f['redis_cpu_us_per_event']:.2f} | {f['redis_commands_per_event']:.3f} "
            f"| {f['exec_per_message']:.2f} | {f['cores']:.2f} | {fmt_int(f['events_per_s_per_core'])} "
            f"| {fmt_int(f['messages_per_s'])} | {broker} | {f['other_cores']:.2f} |"
        )
    types = ", ".join(f"{k} {fmt_int(v)}" for k, v in sorted(stream.by_type.items(), key=lambda kv: -kv[1]))
    pu = plan["us_per_event"]
    lines += [
        "",
        "events/s: events applied over the window (MDP: `mdpipe_mdp_events_total`, from its first applied "
        "event to the last; naive: SETs completed). CPU µs/event and cores: the process's user+system "
        "time (/proc/PID/stat); events/s per core = 10^6 / CPU µs per event. Redis: `INFO cpu` and "
        "`INFO commandstats` deltas (the commands run inside MULTI/EXEC and EVAL included); EXEC/message: "
        "transactions per AMQP message. other: the rest of the machine (this script and Redis excluded).",
        f"Stream: {types}; {stream.market_seconds:.1f} s of market time, "
        f"{stream.body_bytes / 1e6:.1f} MB of JSON; events/class: "
        + ", ".join(f"{k} {fmt_int(v)}" for k, v in stream.by_class.items())
        + ".",
        f"Applied offline one message at a time (this process, one core, MDP's planner and merge, a fresh "
        f"state in memory): {plan['commands'] / max(plan['transactions'], 1):,.0f} commands per transaction "
        f"({plan['commands'] / max(stream.events, 1):.3f} per event, {plan['evals']} EVALs in all), "
        f"{plan['payload_bytes'] / max(stream.events, 1):.0f} bytes of RESP per event, "
        f"{fmt_int(plan['publishes'])} updates published, {plan['symbols']} symbols held, "
        f"{plan['invalid']} invalid; decode {pu['decode']:.2f} + plan {pu['plan']:.2f} + "
        f"merge {pu['merge']:.2f} + encode {pu['encode']:.2f} = {pu['total']:.2f} µs/event of pure Python "
        "before any I/O.",
    ]
    summary: dict[str, Any] = {}
    default_interval = MdpSettings.model_fields["mdp_leaders_interval_s"].default
    interval = float(dict(args.set).get("MDP_LEADERS_INTERVAL_S", default_interval))
    checks = checks_for(stream, plan, phases.get("mdp"), args.private_redis, interval)
    if mdp:
        p = phases["mdp"]
        d = p.detail
        calls = p.redis_calls
        total_calls = sum(calls.values())
        top = ", ".join(f"{k} {v / p.events:.3f}" for k, v in list(calls.items())[:8])
        lines += [
            "",
            f"MDP: {fmt_int(p.events)} events in {p.seconds:.2f} s (+{fmt_int(d['events_before_window'])} "
            f"before the first snapshot); per-poll rate {fmt_int(d['events_per_s_min'])}.."
            f"{fmt_int(d['events_per_s_max'])} events/s; {fmt_int(d['groups'])} groups (transactions) of "
            f"{d['messages_per_group'] or 0:.1f} messages on average, {d['group_ms'] or 0:.1f} ms each from "
            f"planned to written ({d['groups_busy_share']:.2f} in flight on average: one per queue at most); "
            f"{d['symbols_held']:.0f} symbols held, {d['symbols_loaded']:.0f} loaded from Redis; "
            f"RSS {p.rss_mb:.0f} MB.",
            f"- Redis: {fmt_int(total_calls / p.seconds)} commands/s, per event: {top}; "
            f"{mdp['redis_cores']:.2f} cores; inside EXEC {mdp['redis_exec_us_per_event']:.2f} µs/event "
            "(commandstats, wall time: Redis runs one transaction at a time, and besides reads and queues "
            "the commands and writes the replies).",
            f"- RabbitMQ {mdp['broker_us_per_message']:.0f} µs CPU/message; "
            f"{d['leaderboards_published']:.0f} leaderboards published, {fmt_int(d['updates_published'])} "
            f"updates on per-symbol channels; dead letters: {_counts_text(d['dead_letters'])}; Redis errors: "
            f"{_counts_text(d['redis_errors'])}.",
            "- Redis keys under the prefix after the run: "
            + ", ".join(f"{k} {fmt_int(v)}" for k, v in d["redis_keys"].items())
            + "; channels with a seq: "
            + ", ".join(f"{k} {fmt_int(v)}" for k, v in d["redis_seq_channels"].items())
            + ".",
        ]
        eps = mdp["events_per_s"]
        redis_us, exec_us = mdp["redis_cpu_us_per_event"], mdp["redis_exec_us_per_event"]
        ratio = eps / base["events_per_s"] if base and base["events_per_s"] else None
        targets = {
            "redis_cpu_us_per_event": (TARGET_REDIS_US, redis_us, redis_us <= TARGET_REDIS_US),
            "events_per_s": (TARGET_EVENTS_PER_S, eps, eps >= TARGET_EVENTS_PER_S),
        }
        if ratio is not None:
            targets["ratio_mdp_vs_naive"] = (TARGET_RATIO, ratio, ratio >= TARGET_RATIO)
        summary["targets"] = {k: {"target": t, "measured": m, "ok": ok} for k, (t, m, ok) in targets.items()}
        met = {k: "met" if ok else "NOT met" for k, (_, _, ok) in targets.items()}
        headline = f"{ratio:,.1f}x: {met['ratio_mdp_vs_naive']}" if ratio is not None else "no naive phase"
        lines += [
            "",
            f"Targets: ≥ {TARGET_RATIO}x the naive consumer's events/s: {headline}; Redis ≤ "
            f"{TARGET_REDIS_US:g} µs CPU/event: {redis_us:.2f}: {met['redis_cpu_us_per_event']}; "
            f"≥ {fmt_int(TARGET_EVENTS_PER_S)} events/s per MDP process (issue): {fmt_int(eps)}: "
            f"{met['events_per_s']}. MDP used {mdp['cores']:.2f} cores: its own CPU "
            f"({mdp['cpu_us_per_event']:.2f} µs/event) allows {fmt_int(mdp['events_per_s_per_core'])} "
            f"events/s on a whole core; Redis's ({redis_us:.2f} µs/event; {exec_us:.2f} inside EXEC) "
            f"{fmt_int(1e6 / redis_us if redis_us else 0)} on a whole Redis core. A queue's next group is "
            "planned while its previous one is written, so the two overlap; a group takes the messages "
            "already waiting (MDP_GROUP_EVENTS), so a backlog merges each symbol's events into fewer writes.",
        ]
        if ratio is not None:
            summary["ratio_mdp_vs_naive"] = ratio
            summary["cpu_ratio_naive_vs_mdp"] = base["cpu_us_per_event"] / mdp["cpu_us_per_event"]
            redis_ratio = base["redis_cpu_us_per_event"] / redis_us if redis_us else None
            summary["redis_cpu_ratio_naive_vs_mdp"] = redis_ratio
            lines.append(
                f"vs naive: {ratio:,.1f}x the events/s, {summary['cpu_ratio_naive_vs_mdp']:,.1f}x less "
                f"process CPU per event, {redis_ratio or 0:,.1f}x less Redis CPU per event; "
                f"Redis commands per event {mdp['redis_commands_per_event']:.2f} vs "
                f"{base['redis_commands_per_event']:.2f} (one transaction per group of messages, "
                f"{mdp['events_per_message'] * (d['messages_per_group'] or 1):.0f} events, against one round "
                "trip per event)."
            )
        if "profile" in d:
            prof = d["profile"]
            if "error" in prof:
                lines.append(f"Profile: {prof['error']}")
            else:
                lines.append(
                    f"MDP profile (py-spy during the window, {prof['samples']} samples, share of busy):"
                )
                lines += [f"- {v * 100:4.1f}% {k}" for k, v in prof["categories"].items()]
    if base:
        p = phases["naive"]
        per_event = {k: v / max(p.events, 1) for k, v in list(p.redis_calls.items())[:3]}
        lines.append(
            f"naive: {fmt_int(p.events)} events in {p.seconds:.1f}s, {fmt_int(base['redis_commands_per_s'])} "
            f"Redis commands/s ({_counts_text(per_event, 3)} per event)."
        )
    bg = ctx.get("redis_background", {})  # before and after the run
    if bg:
        seen = [
            f"{when} the run {b['commands_per_s']:,.0f} commands/s, {b['cores']:.3f} cores"
            for when, b in bg.items()
        ]
        lines.append(f"Redis background (other clients; server-wide figures include it): {'; '.join(seen)}.")
        busiest = max(b["commands_per_s"] for b in bg.values())
        if mdp and busiest > BACKGROUND_WARN * mdp["redis_commands_per_s"]:
            lines.append(
                "WARNING: the shared Redis is busy with other clients: its figures are skewed "
                "(use --private-redis)."
            )
    if checks:
        bad = [k for k, c in checks.items() if not c["ok"]]
        lines.append(
            "Checks: all passed (" + ", ".join(checks) + ")."
            if not bad
            else "Checks FAILED: "
            + "; ".join(
                f"{k}: expected {checks[k]['expected']}, measured {checks[k]['measured']}" for k in bad
            )
        )
    lines += health_notes(ctx["processes"], figures, " (events/s most)")
    print("\n".join(lines))
    machine = machine_info()
    for name in ("redis", "hiredis", "py-spy"):
        try:
            machine["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            machine["packages"][name] = None
    machine["redis_server"] = ctx.get("redis_server")
    return {
        "benchmark": "mdp_throughput",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "machine": machine,
        "settings": {
            "market": args.market,
            "events": args.events,
            "batch": args.batch,
            "symbols": args.symbols,
            "shards": args.shards,
            "seed": args.seed,
            "start": args.start,
            "rate": args.rate,
            "tick_ms": args.tick_ms,
            "poll": args.poll,
            "naive_events": args.naive_events,
            "naive_seconds": args.naive_seconds,
            "warmup": args.warmup,
            "phases": list(phases),
            "pin": args.pin,
            "py_spy": args.py_spy,
            "source": str(args.source) if args.source else None,
            "exchange": ctx["exchange"],
            "prefix": ctx["prefix"],
            "queue_arguments": ctx["queue_arguments"],
            "rabbitmq_url": mask_url(args.rabbitmq_url),
            "redis_url": mask_url(ctx["redis_url"]),
            "redis_private": args.private_redis,
            "broker_pids": ctx["broker_pids"],
        },
        "stream": {
            "events": stream.events,
            "messages": len(stream.messages),
            "by_type": stream.by_type,
            "by_class": stream.by_class,
            "symbols_by_type": {k: len(v) for k, v in stream.symbols.items()},
            "market_seconds": stream.market_seconds,
            "body_bytes": stream.body_bytes,
            "generate_s": stream.generate_s,
            "prefill": ctx.get("prefill"),
        },
        "plan": plan,
        "redis_background": bg,
        "processes": ctx["processes"],
        "cleanup": ctx.get("cleanup"),
        "phases": {
            name: {
                "label": PHASES[name],
                **p.figures(),
                "seconds": p.seconds,
                "events": p.events,
                "messages": p.messages,
                "redis_calls": p.redis_calls,
                "detail": p.detail,
            }
            for name, p in phases.items()
        },
        "checks": checks,
        **summary,
    }


def _counts_text(counts: dict[str, float], digits: int = 0) -> str:
    return ", ".join(f"{k} {v:,.{digits}f}" for k, v in sorted(counts.items())) or "none"


def market_row(data: dict[str, Any]) -> dict[str, float]:
    """MDP's figures in one market's run, for the comparison of markets."""
    f, stream = data["phases"].get("mdp"), data["stream"]
    if f is None:
        return {"events/s per core": 0.0}
    return {
        "events/s": f["events_per_s"],
        "CPU µs/event": f["cpu_us_per_event"],
        "cores": f["cores"],
        "events/s per core": f["events_per_s_per_core"],
        "Redis CPU µs/event": f["redis_cpu_us_per_event"],
        "Redis commands/event": f["redis_commands_per_event"],
        "bytes/event (JSON)": stream["body_bytes"] / max(stream["events"], 1),
        "offline µs/event": data["plan"]["us_per_event"]["total"],
    }


# -- orchestration -------------------------------------------------------------------------------------


def run_bench(args: argparse.Namespace, results: dict[str, Any] | None = None) -> int:
    """One market's run; its JSON document also goes into ``results[args.market]`` when given."""
    import redis

    from mdq import topology

    signal.signal(signal.SIGTERM, terminate)
    began = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - began:5.1f}s] {message}", file=sys.stderr, flush=True)

    token = secrets.token_hex(4)
    exchange = f"bench-{token}"
    ctx: dict[str, Any] = {
        "exchange": exchange,
        "prefix": f"bench-{token}",
        "queue_arguments": topology.queue_arguments(mdq_settings(exchange, args.shards)),
        "broker_pids": broker_pids(args.rabbitmq_url),
        "processes": {},
        "redis_url": args.redis_url,
    }
    stream = build_stream(args, exchange)
    progress(
        f"stream: {fmt_int(stream.events)} events, {len(stream.messages)} messages, "
        f"{stream.body_bytes / 1e6:.1f} MB, generated in {stream.generate_s:.1f}s"
    )
    plan = plan_offline(stream, args.market)
    progress(
        f"applied offline: {fmt_int(plan['commands'])} commands in {plan['transactions']} transactions, "
        f"{plan['invalid']} invalid events, {plan['us_per_event']['total']:.2f} µs/event of pure Python"
    )
    phases: dict[str, Phase] = {}
    redis_server: Child | None = None
    rclient = None
    declared = False
    try:
        if args.private_redis:
            redis_server, ctx["redis_url"] = start_private_redis()
            ctx["processes"]["redis"] = {"argv": redis_server.argv, "env": {}}
        rclient = redis.Redis.from_url(ctx["redis_url"], socket_timeout=10, socket_connect_timeout=5)
        try:
            server = rclient.info("server")
        except redis.RedisError as exc:
            raise RuntimeError(f"Redis at {mask_url(ctx['redis_url'])} does not answer ({exc})") from None
        ctx["redis_server"] = {k: server.get(k) for k in ("redis_version", "process_id", "io_threads_active")}
        declared = True
        ctx["prefill"] = amqp(
            _publish(args.rabbitmq_url, exchange, args.shards, stream.messages, exchange), args.rabbitmq_url
        )
        queued = sum(ctx["prefill"]["depths"].values())
        progress(f"queues filled in {ctx['prefill']['seconds']:.1f}s: {queued} messages waiting")
        if queued != len(stream.messages):
            raise RuntimeError(f"{queued} messages queued of {len(stream.messages)} published")
        ctx["redis_background"] = {"before": redis_background(rclient)}
        for name in args.phases:
            if name == "mdp":
                phase = measure_mdp(args, ctx, stream, plan, rclient, progress)
            else:
                phase = measure_naive(args, ctx, stream, rclient, progress)
            phases[name] = phase
            f = phase.figures()
            progress(
                f"{name}: {fmt_int(f['events_per_s'])} events/s, {f['cpu_us_per_event']:.2f} µs CPU/event, "
                f"{f['redis_cpu_us_per_event']:.2f} µs Redis CPU/event, "
                f"{f['redis_commands_per_event']:.3f} Redis commands/event over {phase.seconds:.2f}s"
            )
        ctx["redis_background"]["after"] = redis_background(rclient)
    finally:
        if declared:
            try:
                ctx["cleanup"] = asyncio.run(_delete(args.rabbitmq_url, exchange, args.shards))
            except Exception as exc:
                ctx["cleanup"] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"mdp_throughput: could not delete {exchange}* ({exc})", file=sys.stderr)
        if rclient is not None and "redis_server" in ctx:  # it answered: our keys may be there
            try:
                ctx.setdefault("cleanup", {})["redis_keys_deleted"] = delete_keys(rclient, ctx["prefix"])
            except redis.RedisError as exc:
                print(f"mdp_throughput: could not delete {ctx['prefix']}:* ({exc})", file=sys.stderr)
            rclient.close()
        if redis_server is not None:
            redis_server.close()
    progress("done")
    data = report(args, stream, plan, phases, ctx)
    if results is not None:
        results[args.market] = data
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_json_safe(data), indent=2, default=list) + "\n")
    print(f"\nJSON: {args.json}")
    empty = [name for name, p in phases.items() if p.events <= 0]
    if empty:
        print(f"mdp_throughput: nothing applied by {', '.join(empty)}", file=sys.stderr)
        return 1
    if not all(c["ok"] for c in data["checks"].values()):
        return 1
    if args.strict and not all(c["ok"] for c in data.get("targets", {}).values()):
        return 1
    return 0


def _setting(text: str) -> tuple[str, str]:
    name, eq, value = text.partition("=")
    if not eq or not name.startswith(("MDP_", "MDC_")):
        raise argparse.ArgumentTypeError(f"expected MDP_NAME=VALUE or MDC_NAME=VALUE, got {text!r}")
    return name, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mdpipe.settings import SimSettings, parse_start

    defaults = SimSettings.model_fields
    parser = argparse.ArgumentParser(
        prog="python bench/mdp_throughput.py",
        description=__doc__.split("\n\n")[0],
        epilog="Writes a Markdown table to stdout, progress to stderr, and JSON to --json. Exit status 1 if "
        "a phase applied nothing or failed, or a check failed (and with --strict, if a target is missed).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--market", default=MARKET,
                        help="the stream's market (MDP's MASSIVE_MARKET), or several comma-separated, "
                        "run one after the other and compared: " + ", ".join(MARKETS))  # fmt: skip
    parser.add_argument("--events", type=int, default=600_000, help="events in the stream (MDP's backlog)")
    parser.add_argument("--batch", type=int, default=500,
                        help="events per MDQ message (MDL batches up to 2000 when backed up)")  # fmt: skip
    parser.add_argument("--symbols", type=int, default=defaults["sim_symbols"].default, help="symbols")
    parser.add_argument("--shards", type=int, default=1,
                        help="MDQ_SHARDS: queues per class (one MDP consumes them all)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 30,000 events, 500 symbols, naive 5,000 events/3 s")  # fmt: skip
    parser.add_argument("--naive-events", type=int, default=30_000, help="the naive window's events")
    parser.add_argument("--naive-seconds", type=float, default=10.0, help="the naive window's longest")
    parser.add_argument("--warmup", type=float, default=0.5,
                        help="seconds between the naive's first event and its window")  # fmt: skip
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between two scrapes of /metrics")
    parser.add_argument(
        "--phases", default="mdp,naive", help=f"comma-separated, in order: {', '.join(PHASES)}"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        type=_setting,
        metavar="MDP_X=VALUE",
        help="an MDP_/MDC_ setting for the measured processor (repeatable)",
    )
    parser.add_argument("--pin", action="store_true", help="the measured process on CPU 0")
    parser.add_argument("--py-spy", action="store_true",
                        help="sample MDP with py-spy during its window (a little CPU)")  # fmt: skip
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a target is missed (vs naive, Redis CPU, events/s)")  # fmt: skip
    parser.add_argument("--rabbitmq-url", default=argparse.SUPPRESS,
                        help=f"RabbitMQ (default: $RABBITMQ_URL, else {DEFAULT_RABBITMQ_URL})")  # fmt: skip
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL,
                        help="Redis for the state (a database nothing else uses)")  # fmt: skip
    parser.add_argument("--private-redis", action="store_true",
                        help="a throw-away redis-server: clean server-wide figures")  # fmt: skip
    parser.add_argument("--seed", type=int, default=defaults["sim_seed"].default, help="market seed")
    parser.add_argument("--start", default=START, help="the market clock, fixed")
    parser.add_argument("--rate", type=int, default=0,
                        help="the market's trades+quotes per market second (0: the emulator's flat-out "
                        "nominal 50,000); sets how many bars there are per trade")  # fmt: skip
    parser.add_argument("--tick-ms", type=int, default=defaults["sim_tick_ms"].default, help="market tick")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    parser.add_argument("--source", type=Path,
                        help="run `mdpipe mdp` from this source tree (to measure a patch)")  # fmt: skip
    parser.add_argument("--naive-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--exchange", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--counters", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.naive_child:
        return args
    args.markets = parse_markets(parser, args.market, MARKETS)
    args.market = args.markets[0]
    if args.quick:
        args.events, args.symbols = min(args.events, 30_000), min(args.symbols, 500)
        args.naive_events, args.naive_seconds = min(args.naive_events, 5_000), min(args.naive_seconds, 3.0)
        args.rate = args.rate or 5_000  # 6 s of market time: second and minute bars, imbalances too
    args.rabbitmq_url = (
        getattr(args, "rabbitmq_url", None) or os.environ.get("RABBITMQ_URL") or DEFAULT_RABBITMQ_URL
    )
    try:
        parse_start(args.start)
    except ValueError as exc:
        parser.error(f"--start: {exc}")
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown or not args.phases or len(set(args.phases)) != len(args.phases):
        parser.error(f"--phases: known {', '.join(PHASES)}, each at most once")
    if args.events < 1 or args.batch < 1 or args.symbols < 1 or args.naive_events < 1:
        parser.error("--events, --batch, --symbols and --naive-events must be positive")
    if not 1 <= args.shards <= 256:
        parser.error("--shards must be from 1 to 256")
    if args.naive_seconds <= 0 or args.poll <= 0 or args.warmup < 0 or args.rate < 0:
        parser.error("--naive-seconds and --poll must be positive, --warmup and --rate >= 0")
    if args.tick_ms <= 0 or 1000 % args.tick_ms:
        parser.error("--tick-ms must divide 1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.naive_child:
        return naive_child(args)
    return run_markets(
        "mdp_throughput",
        args,
        run_bench,
        market_row,
        "processes stopped, bench queues and Redis keys deleted",
    )


if __name__ == "__main__":
    sys.exit(main())
