"""Snapshots/s and event-loop stall of ``mdc.reader.Reader.snapshots`` on one Redis against a 3-master
Redis Cluster, on this machine, in one run.

What is measured
----------------
``--concurrency`` tasks each call ``Reader.snapshots`` in a loop for ``--seconds``, on one event loop (uvloop
unless ``--loop asyncio``), as WDS does for its clients' subscriptions. One call reads the six typical
channels of a random symbol among ``--symbols``: ``stats.SYM``, ``quotes.SYM``, ``trades.SYM``,
``bars.SYM``, ``leaders.volume`` and ``halts`` (on a cluster: two slots, the symbol's and the
market-wide ``{prefix}`` one). Beside them a ticker task sleeps 1 ms in a loop; how late it wakes is the
loop's stall: what every other task of the process (a WebSocket client's frames, pings) waits meanwhile.

Paths (``--paths``, every one by default):

- ``one Redis``: ``Reader(Redis)``, one redis-py MULTI/EXEC pipeline, on a private ``redis-server``;
- ``cluster redis-py``: ``Reader(RedisCluster)``, redis-py 8.2's ``pipeline(transaction=True)`` per slot,
  whose asyncio TransactionStrategy runs each queued command in a thread it starts and joins, blocking
  the loop meanwhile;
- ``cluster wire``: ``Reader(RedisCluster, cluster=ClusterPipeline)``, per slot MULTI/EXEC on
  ``mdc.wire`` pipelines, one per master (what WDS runs on a cluster).

Both layouts are started by the bench (``LocalCluster(3, 0)`` from tests/cluster_support.py, and one
``redis-server``) and hold the same keys, written with ``mdc.names.Names``. Per path and number of
callers (``--concurrency 1,32``: a lone caller shows the stall on an idle loop, 32 a loop that is busy
anyway): snapshots/s (calls x channels), call latency p50/p99, ticker lag p50/p99/max, and the bench
process's CPU per snapshot.
Rounds are interleaved (``--repeat``); the median round is shown, every round is in the JSON
(``bench/results/cluster_snapshots.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import redis as redis_sync
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from cluster_support import LocalCluster  # noqa: E402
from mdl_throughput import _json_safe, machine_info, start_private_redis  # noqa: E402

from mdc.clusterpipe import ClusterPipeline  # noqa: E402
from mdc.connect import Target  # noqa: E402
from mdc.names import Names  # noqa: E402
from mdc.reader import Reader  # noqa: E402
from mdc.wire import KEEPALIVE  # noqa: E402

DEFAULT_JSON = ROOT / "bench" / "results" / "cluster_snapshots.json"
PATHS = ("one Redis", "cluster redis-py", "cluster wire")
PREFIX = "benchsnap"
TICK_S = 0.001


def channels_of(sym: str) -> list[str]:
    return [f"stats.{sym}", f"quotes.{sym}", f"trades.{sym}", f"bars.{sym}", "leaders.volume", "halts"]


def fill(client: redis_sync.Redis | redis_sync.RedisCluster, names: Names, symbols: list[str]) -> None:
    """Typical state for every symbol and the market-wide channels (sizes as MDP keeps them, roughly)."""
    t0 = 1_760_000_000_000
    for i, sym in enumerate(symbols):
        pipe = client.pipeline(transaction=False)
        trades = [
            {"t": t0 + k, "q": k, "p": 100 + k / 100, "s": 100, "x": 4, "c": [], "i": str(k)}
            for k in range(20)
        ]
        pipe.set(names.trade(sym), orjson.dumps(trades[-1]))
        pipe.zadd(names.trades(sym), {orjson.dumps(t): t["t"] for t in trades})
        pipe.set(names.quote(sym), orjson.dumps({"t": t0, "q": 1, "bp": 99.9, "bs": 2, "ap": 100.1, "as": 3}))
        pipe.set(
            names.stats(sym),
            orjson.dumps({"last": 100.0, "open": 99, "high": 101, "low": 98, "volume": 10**6}),
        )
        bar = {"o": 100, "h": 101, "l": 99, "c": 100.5, "v": 1000}
        pipe.set(names.bar_second(sym), orjson.dumps({"t": t0, **bar}))
        pipe.zadd(
            names.bars_minute(sym),
            {orjson.dumps({"t": t0 + 60_000 * m, **bar}): t0 + 60_000 * m for m in range(30)},
        )
        pipe.zadd(
            names.history(sym),
            {orjson.dumps({"t": t0 - 60_000 * m, **bar}): t0 - 60_000 * m for m in range(1, 61)},
        )
        pipe.hset(names.symbol_seq(sym), mapping={c: i + 1 for c in channels_of(sym)[:4]})
        pipe.execute()
    rows = [{"sym": s, "volume": 10**6 - k} for k, s in enumerate(symbols[:10])]
    client.set(names.board("volume"), orjson.dumps({"board": "volume", "day": "2025-11-21", "rows": rows}))
    client.hset(names.halted(), mapping={s: orjson.dumps({"halted": True, "t": t0}) for s in symbols[:3]})
    client.zadd(
        names.feed("halts"),
        {orjson.dumps({"sym": s, "t": t0 + k}): t0 + k for k, s in enumerate(symbols[:20])},
    )
    client.hset(names.seq(), mapping={"leaders.volume": 7, "halts": 9})  # fmt: skip


async def measure(
    reader: Reader, symbols: list[str], concurrency: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """One round: ``concurrency`` callers of ``reader.snapshots`` and the 1 ms ticker, for ``seconds``."""
    clock = time.perf_counter  # uvloop's loop.time() has millisecond resolution
    stop_at = clock() + warmup + seconds
    measuring_from = clock() + warmup
    lags: list[float] = []
    latencies: list[float] = []
    calls = errors = 0

    async def ticker() -> None:
        while clock() < stop_at:
            before = clock()
            await asyncio.sleep(TICK_S)
            if before >= measuring_from:
                lags.append(clock() - before - TICK_S)

    async def caller(rng: random.Random) -> None:
        nonlocal calls, errors
        while clock() < stop_at:
            chans = channels_of(rng.choice(symbols))
            started = clock()
            try:
                snaps = await reader.snapshots(chans, minute_bars=30)
            except Exception:
                errors += 1
                continue
            if started >= measuring_from:
                calls += 1
                latencies.append(clock() - started)
                assert snaps[0].data is not None, snaps
                assert snaps[5].data["halted"], snaps

    cpu0 = os.times()
    wall0 = time.monotonic()
    await asyncio.gather(ticker(), *(caller(random.Random(k)) for k in range(concurrency)))
    cpu1, wall = os.times(), time.monotonic() - wall0
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    lags.sort()
    latencies.sort()

    def q(xs: list[float], p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000 if xs else float("nan")

    snapshots = calls * 6
    return {
        "calls": calls,
        "errors": errors,
        "snapshots_per_s": snapshots / seconds,
        "latency_ms": {"p50": q(latencies, 0.5), "p99": q(latencies, 0.99)},
        "lag_ms": {
            "p50": q(lags, 0.5),
            "p99": q(lags, 0.99),
            "max": lags[-1] * 1000 if lags else float("nan"),
        },
        "ticks": len(lags),
        "cpu_us_per_snapshot": cpu / max(snapshots, 1) * 1e6 * (seconds / wall)
        if snapshots
        else float("nan"),
    }


def wire_supported() -> bool:
    return "cluster" in inspect.signature(Reader).parameters


async def run_rounds(
    args: argparse.Namespace, single_url: str, cluster: LocalCluster, symbols: list[str]
) -> dict[str, list[dict[str, Any]]]:
    names = Names(PREFIX)
    target = Target(cluster.url, tuple(cluster.startup_nodes))
    single = Redis.from_url(single_url)
    rc = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster.startup_nodes])
    pipeline = ClusterPipeline(target, "bench-snapshots", 5.0, KEEPALIVE)
    readers: dict[str, Reader] = {"one Redis": Reader(single, names), "cluster redis-py": Reader(rc, names)}
    if wire_supported():
        readers["cluster wire"] = Reader(rc, names, cluster=pipeline)  # type: ignore[call-arg]
    cases = [(path, c) for c in args.concurrency for path in args.paths if path in readers]
    rounds: dict[str, list[dict[str, Any]]] = {f"{path} x{c}": [] for path, c in cases}
    try:
        for r in range(args.repeat):
            for path, c in cases:
                result = await measure(readers[path], symbols, c, args.seconds, args.warmup)
                rounds[f"{path} x{c}"].append(result)
                print(f"  round {r + 1} {path} x{c}: {result['snapshots_per_s']:,.0f} snapshots/s, "
                      f"lag max {result['lag_ms']['max']:.1f} ms", file=sys.stderr)  # fmt: skip
    finally:
        await pipeline.close()
        await rc.aclose()
        await single.aclose()
    return rounds


def median_round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_rate = sorted(runs, key=lambda r: r["snapshots_per_s"])
    return by_rate[len(by_rate) // 2]


def report(medians: dict[str, dict[str, Any]]) -> str:
    head = ["path x callers", "snapshots/s", "call p50 ms", "call p99 ms", "loop lag p50 ms", "lag p99 ms",
            "lag max ms", "CPU µs/snapshot", "errors"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for path, m in medians.items():
        lat, lag = m["latency_ms"], m["lag_ms"]
        figures = [lat["p50"], lat["p99"], lag["p50"], lag["p99"]]
        cells = [path, f"{m['snapshots_per_s']:,.0f}", *(f"{x:.2f}" for x in figures), f"{lag['max']:.1f}",
                 f"{m['cpu_us_per_snapshot']:.0f}", str(m["errors"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--concurrency", default="1,32", help="concurrent callers, one case each (default 1,32)"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per round (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per path, interleaved (default 3)")
    parser.add_argument("--symbols", type=int, default=200, help="symbols written (default 200)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"subset of: {', '.join(PATHS)}")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = set(args.paths) - set(PATHS)
    if unknown:
        parser.error(f"unknown paths: {', '.join(sorted(unknown))}")
    symbols = [f"S{k:03d}" for k in range(args.symbols)]
    names = Names(PREFIX)
    server, single_url = start_private_redis()
    cluster = LocalCluster(masters=3, replicas=0)
    try:
        cluster.start()
        fill(redis_sync.Redis.from_url(single_url), names, symbols)
        nodes = [redis_sync.cluster.ClusterNode(h, p) for h, p in cluster.startup_nodes]
        fill(redis_sync.RedisCluster(startup_nodes=nodes), names, symbols)
        if args.loop == "uvloop":
            import uvloop

            rounds = uvloop.run(run_rounds(args, single_url, cluster, symbols))
        else:
            rounds = asyncio.run(run_rounds(args, single_url, cluster, symbols))
    finally:
        cluster.stop()
        server.close()
    medians = {path: median_round(runs) for path, runs in rounds.items()}
    print(f"\ncallers {args.concurrency}, 6 channels a call, {args.seconds:g} s x {args.repeat} rounds "
          f"(median round by snapshots/s), {args.loop}\n")  # fmt: skip
    print(report(medians))
    for c in args.concurrency:
        base = medians.get(f"one Redis x{c}")
        for path in args.paths:
            m = medians.get(f"{path} x{c}")
            if base and m and path != "one Redis":
                ratio = m["snapshots_per_s"] / base["snapshots_per_s"]
                print(f"{path} x{c} / one Redis x{c}: {ratio:.2f}x snapshots/s")
    data = {
        "machine": machine_info(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "median": medians,
        "rounds": rounds,
        "median_p50_lag_ms": {
            p: statistics.median(r["lag_ms"]["p50"] for r in runs) for p, runs in rounds.items()
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_json_safe(data), indent=2, default=list) + "\n")
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
