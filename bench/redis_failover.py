"""How long a Redis Cluster shard is unavailable when its master dies: ``python -m bench.redis_failover``.

Each trial starts a fresh local cluster (``tests.cluster_support.LocalCluster``: 3 masters, 3 replicas,
real ``redis-server`` nodes on loopback, ``cluster-node-timeout`` 1000 ms), and two redis-py asyncio
``RedisCluster`` clients, as two mdpipe processes would have:

- a writer, every 10 ms: ``SET md:stats:{SYM} <n> GET`` then ``SPUBLISH md:stats.{SYM} <n>``, ``n``
  counting up; a write is acknowledged when ``SET`` returned;
- a sharded subscriber: ``ssubscribe("md:stats.{SYM}")`` and a loop on ``get_sharded_message``.

SYM is a symbol whose slot lives on a master; once both run, that master gets ``kill -9``. Measured
from the kill:

- **promoted**: a surviving master's ``CLUSTER SLOTS`` names another node as the slot's master (polled
  every 10 ms). Here 2-3 s: the node timeout (1000 ms) to mark the master failed, then the
  replica's election (a random 500-1000 ms delay plus a vote). The detection part scales with
  ``cluster-node-timeout``: at the production default of 15000 ms expect 15-20 s, not 2.
- **write**: the first write acknowledged after the kill. The client learns the new owner from a
  ``MOVED`` or a failed connection followed by a slot-cache refresh, so this also holds redis-py's retry
  and backoff.
- **heard**: the first message the subscriber receives of those published after the kill (a message in
  flight at the kill does not count).
- **lost**: acknowledged writes lost. Replication is asynchronous: a write the dead master acknowledged
  may not have reached its replica. The first acknowledged write after the kill is ``SET ... GET``,
  which returns what the new master held before it: every acknowledged pre-kill write with a larger
  ``n`` is lost. Zero here is expected on loopback (the replica is microseconds behind), not promised.

What we found about redis-py 8.2's ``ClusterPubSub``: it re-subscribes sharded channels by itself after
a failover. A poll that fails on the dead node puts that node in a 1 s cool-off and schedules a
slot-cache refresh (at most every 5 s, ``SHARD_TOPOLOGY_REPAIR_INTERVAL_SECONDS``); the refresh moves the
channel's subscription to the new owner. So a subscriber needs no code of its own for this, but the first
refresh comes right after the kill, before any promotion, and finds nothing to move: the next one is 5 s
later. Heard is therefore about 5.07 s in every trial here (promotion at about 2 s), while the writer's
client is back within a second of the promotion; with a 15000 ms node timeout expect heard at the first
5 s tick after the promotion (up to 5 s after it). If nothing is heard ``--resubscribe-after`` seconds
(default 10) after the promotion, the bench does what a client would: a fresh pubsub on a refreshed
client, ``ssubscribe`` again; each trial's ``resubscribed`` says who did it (``redis-py`` or ``bench``).

Prints a Markdown table (median and max over the trials) and writes ``bench/results/redis_failover.json``
with every trial.

    python -m bench.redis_failover [--trials 10] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from mdc.connect import Target
from mdc.subscriber import Subscriber as MdcSubscriber
from tests.cluster_support import NODE_TIMEOUT_MS, LocalCluster

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "bench" / "results" / "redis_failover.json"
SYMBOL = "AAPL"
PERIOD_S = 0.010
FIGURES = ("promoted_s", "write_s", "heard_s", "mdc_heard_s")
# RedisClusterUnreachableError (a topology refresh that reached no node) is not a RedisError
ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)


def key(sym: str) -> str:
    return f"md:stats:{{{sym}}}"


def channel(sym: str) -> str:
    return f"md:stats.{{{sym}}}"


def client(cluster: LocalCluster) -> RedisCluster:
    nodes = [ClusterNode(host, port) for host, port in cluster.startup_nodes]
    return RedisCluster(startup_nodes=nodes, socket_timeout=0.5, socket_connect_timeout=0.5)


@dataclass
class Writer:
    """Writes every ``PERIOD_S``; notes each acknowledged write as ``(acked_at, n, previous value)``."""

    rc: RedisCluster
    sym: str
    acked: list[tuple[float, int, int | None]] = field(default_factory=list)
    failed: int = 0
    n: int = 0  # the last write started

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.n = n = self.n + 1
            started = loop.time()
            try:
                old = await self.rc.set(key(self.sym), n, get=True)
                self.acked.append((loop.time(), n, None if old is None else int(old)))
                await self.rc.execute_command("SPUBLISH", channel(self.sym), n)
            except ERRORS:
                self.failed += 1
            await asyncio.sleep(max(0.0, started + PERIOD_S - loop.time()))

    def first_after(self, t: float) -> tuple[float, int, int | None] | None:
        return next((a for a in self.acked if a[0] > t), None)

    def last_before(self, t: float) -> int:
        return max((n for at, n, _ in self.acked if at <= t), default=0)


@dataclass
class Subscriber:
    """A sharded subscriber; notes each message's arrival time and counter."""

    rc: RedisCluster
    sym: str
    heard: list[tuple[float, int]] = field(default_factory=list)
    errors: int = 0
    pubsub: Any = None

    async def subscribe(self) -> None:
        self.pubsub = self.rc.pubsub()
        await self.pubsub.ssubscribe(channel(self.sym))

    async def resubscribe(self) -> None:
        """What a client does when its subscription went quiet: a fresh pubsub on a refreshed topology."""
        with contextlib.suppress(redis.RedisError, OSError):
            await self.pubsub.aclose()
        await self.rc.nodes_manager.initialize()
        await self.subscribe()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                message = await self.pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=0.1)
            except ERRORS:
                self.errors += 1
                await asyncio.sleep(0.05)
                continue
            if message is not None:
                self.heard.append((loop.time(), int(message["data"])))

    def first_after(self, n: int) -> float | None:
        """When the first message published after write ``n`` arrived (not one in flight at the kill)."""
        return next((t for t, m in self.heard if m > n), None)


@dataclass
class Gateway:
    """``mdc.subscriber`` in cluster mode, as WDS runs it (its own RESP wire, raw callbacks): notes each
    message's arrival and when it resubscribed (on a lost node, ``MOVED`` or an unasked ``sunsubscribe``)."""

    cluster: LocalCluster
    sym: str
    heard: list[tuple[float, int]] = field(default_factory=list)
    resubscribed: list[float] = field(default_factory=list)

    def start(self, stop: asyncio.Event) -> asyncio.Task:
        loop = asyncio.get_running_loop()
        target = Target("redis://", tuple(self.cluster.startup_nodes))
        # the subscriber's own backoff, as WDS runs it: the figure is the gateway's as shipped
        self.sub = MdcSubscriber(target, "md", on_resubscribed=lambda: self.resubscribed.append(loop.time()))

        def heard(_channel: str, data: bytes, *_skipped: int) -> None:
            self.heard.append((loop.time(), int(data)))

        self.sub.on(f"stats.{self.sym}", heard, raw=True)
        return asyncio.create_task(self.sub.run(stop))

    def first_after(self, n: int) -> float | None:
        return next((t for t, m in self.heard if m > n), None)


async def slot_master(port: int, slot: int) -> int | None:
    """The port of the master of ``slot`` as the node on ``port`` sees it (``CLUSTER SLOTS``)."""
    node = redis.asyncio.Redis(port=port, socket_timeout=0.5)
    try:
        for start, end, master, *_ in await node.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
    except (redis.RedisError, OSError):
        return None
    finally:
        await node.aclose()
    return None


async def bounded(awaitable, what: str, within: float = 5.0) -> Any:
    """``await`` with a limit: redis-py calls can wait on a dead node for longer than a trial."""
    try:
        return await asyncio.wait_for(awaitable, within)
    except TimeoutError:
        print(f"  {what}: no answer within {within} s", file=sys.stderr, flush=True)
        return None


async def until(predicate, within: float, step: float = PERIOD_S) -> float | None:
    """``loop.time()`` when the (async) predicate first holds, or None after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await predicate():
            return loop.time()
        await asyncio.sleep(step)
    return None


async def trial(number: int, args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    cluster = LocalCluster(masters=3, replicas=1).start()
    writer_rc, subscriber_rc = client(cluster), client(cluster)
    tasks: list[asyncio.Task] = []
    stop = asyncio.Event()
    try:
        victim = cluster.master_of(key(SYMBOL))
        witness = next(p for p in cluster.masters_now() if p != victim)
        slot = redis.cluster.key_slot(key(SYMBOL).encode())
        writer, subscriber = Writer(writer_rc, SYMBOL), Subscriber(subscriber_rc, SYMBOL)
        gateway = Gateway(cluster, SYMBOL)
        await bounded(subscriber.subscribe(), "ssubscribe")
        tasks = [asyncio.create_task(writer.run()), asyncio.create_task(subscriber.run())]
        tasks.append(gateway.start(stop))
        await bounded(gateway.sub.confirmed(), "mdc.subscriber's subscription")
        await asyncio.sleep(0.5)
        if not (subscriber.heard and writer.acked and gateway.heard):
            raise RuntimeError("no write or message before the kill")

        killed_at, last_sent = loop.time(), writer.n
        cluster.kill(victim)

        async def promoted() -> bool:
            return (await slot_master(witness, slot)) not in (None, victim)

        promoted_at = await until(promoted, 30)
        resubscribed = "redis-py"

        async def heard() -> bool:
            return subscriber.first_after(last_sent) is not None

        if promoted_at is not None and await until(heard, args.resubscribe_after) is None:
            resubscribed = "bench"
            await bounded(subscriber.resubscribe(), "resubscribing")
            await until(heard, 10)

        async def written() -> bool:
            return writer.first_after(killed_at) is not None

        async def gateway_heard() -> bool:
            return gateway.first_after(last_sent) is not None

        await until(written, 10)
        await until(gateway_heard, 15)
        row = summarize(number, (killed_at, last_sent), promoted_at, writer, subscriber, resubscribed)
        mdc_heard = gateway.first_after(last_sent)
        row["mdc_heard_s"] = None if mdc_heard is None else round(mdc_heard - killed_at, 4)
        row["mdc_resubscribed_s"] = [round(t - killed_at, 4) for t in gateway.resubscribed if t > killed_at]
        return row
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for rc in (writer_rc, subscriber_rc):
            with contextlib.suppress(Exception):
                await bounded(rc.aclose(), "closing a client")
        cluster.stop()


def summarize(
    number: int,
    kill: tuple[float, int],
    promoted_at: float | None,
    writer: Writer,
    subscriber: Subscriber,
    by: str,
) -> dict[str, Any]:
    killed_at, last_sent = kill

    def since_kill(t: float | None) -> float | None:
        return None if t is None else round(t - killed_at, 4)

    first_write = writer.first_after(killed_at)
    last_acked = writer.last_before(killed_at)
    survived = None if first_write is None else (first_write[2] or 0)
    lost = None if survived is None else max(0, last_acked - survived)
    return {
        "trial": number,
        "promoted_s": since_kill(promoted_at),
        "write_s": since_kill(None if first_write is None else first_write[0]),
        "heard_s": since_kill(subscriber.first_after(last_sent)),
        "last_acked_before_kill": last_acked,
        "value_on_new_master": survived,
        "acked_writes_lost": lost,
        "failed_writes": writer.failed,
        "subscriber_errors": subscriber.errors,
        "resubscribed": by,
    }


def stats(trials: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FIGURES:
        values = [t[name] for t in trials if t[name] is not None]
        missing = len(trials) - len(values)
        out[name] = {
            "median": round(statistics.median(values), 4) if values else None,
            "max": round(max(values), 4) if values else None,
            "missing": missing,
        }
    lost = [t["acked_writes_lost"] for t in trials]
    out["acked_writes_lost"] = sum(n for n in lost if n is not None)
    out["lost_unknown"] = sum(1 for n in lost if n is None)
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    trials = []
    for n in range(1, args.trials + 1):
        started = time.monotonic()
        row = await trial(n, args)
        trials.append(row)
        took = time.monotonic() - started
        print(
            f"trial {n}: promoted {row['promoted_s']} s, write {row['write_s']} s, heard {row['heard_s']} s, "
            f"lost {row['acked_writes_lost']}, resubscribed by {row['resubscribed']} ({took:.1f} s)",
            flush=True,
        )
    return {
        "bench": "redis_failover",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
            "redis_py": redis.__version__,
        },
        "settings": {
            "cluster_node_timeout_ms": NODE_TIMEOUT_MS,
            "masters": 3,
            "replicas_per_master": 1,
            "write_period_ms": PERIOD_S * 1000,
            "resubscribe_after_s": args.resubscribe_after,
        },
        "trials": trials,
        "summary": stats(trials),
    }


def report(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = ["| from kill -9 to | median (s) | max (s) | missing |", "| --- | ---: | ---: | ---: |"]
    labels = {
        "promoted_s": "replica promoted (CLUSTER SLOTS)",
        "write_s": "first acknowledged write",
        "heard_s": "first message heard (redis-py cluster pubsub)",
        "mdc_heard_s": "first message heard (mdc.subscriber, as WDS)",
    }
    for name in FIGURES:
        f = s[name]
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {labels[name]} | {fmt(f['median'])} | {fmt(f['max'])} | {f['missing']} |")
    by = sorted({t["resubscribed"] for t in result["trials"]})
    lines.append("")
    lines.append(
        f"{len(result['trials'])} trials, "
        f"cluster-node-timeout {result['settings']['cluster_node_timeout_ms']} ms; "
        f"acknowledged writes lost: {s['acked_writes_lost']} (unknown in {s['lost_unknown']} trials); "
        f"subscription restored by: {', '.join(by)}."
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 trials")
    parser.add_argument("--resubscribe-after", type=float, default=10.0, help="seconds after the promotion")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    if args.quick:
        args.trials = 3
    result = asyncio.run(bench(args))
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False)
    result["machine"]["redis_server"] = version.stdout.strip()
    print(report(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
