"""Hydration from the vendor's REST snapshot: how long from a processor's start to a hydrated state, how
many REST calls a processor makes in steady state, and what a hydration costs the stream.

What is measured
----------------
For each ``--symbols`` count: the emulator (``mdpipe sim``, ``SIM_SYMBOLS`` symbols, ``SIM_RATE`` events
per market second, ``SIM_SPEED`` times real time) runs alone for ``--warmup`` seconds, so the day so
far (``--warmup`` x speed seconds of market) exists only on its REST side; then a listener (``mdpipe
mdl``) and a processor (``mdpipe mdp``, the vendor key and ``MASSIVE_REST_URL`` pointed at the emulator)
start, as after a restart mid-day. Figures:

- **start to hydrated**: from spawning ``mdpipe mdp`` to its ``/readyz`` showing a hydration done (the
  process's start, its first message, the snapshot, the merge and the writes), and the hydration's own
  figures: the snapshot request (``fetch``), the whole (``hydration``), tickers and symbols merged;
- **steady state**: REST calls over ``--steady`` seconds with nothing lost (``mdpipe_rest_requests_total``
  on the processor's ``/metrics``), as calls per hour;
- **stream while hydrating**: ``--reconnects`` vendor reconnects asked of the listener (its control
  message in Redis), each followed by a hydration; events applied per second over each hydration's
  window against the same length of quiet stream before it, and the processor's stale messages (0: no
  message outlived the queue TTL while it hydrated).

Run from the repository root: ``python bench/hydration.py`` (about two minutes); JSON in
``bench/results/hydration.json``. RabbitMQ and Redis at their usual URLs (``--rabbitmq-url``,
``--redis-url``); an exchange and a key prefix of the bench's own, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import redis

from bench.procs import ROOT, Child, child_env, free_port, guarded, http_get, terminate

KEY = "bench-key"


def metric(port: int, name: str, labels: str = "") -> float:
    """Sum of a metric's samples whose labels contain ``labels``."""
    text = (http_get(port, "/metrics") or b"").decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and labels in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def hydration(port: int) -> dict[str, Any]:
    body = http_get(port, "/readyz")
    return orjson.loads(body)["hydration"] if body else {}


def asked_by(port: int) -> dict[str, float]:
    """Why the processor's hydrations were asked for, since its start."""
    whys = ("session", "gap", "stale", "restart", "reconnect", "day")
    return {why: metric(port, "mdpipe_mdp_hydrations_wanted_total", f'why="{why}"') for why in whys}


def started(port: int, done: int) -> bool:
    """A hydration is running, or one more than ``done`` is done."""
    state = hydration(port)
    return state.get("status") == "running" or state.get("done", 0) > done


def wait(condition, timeout: float, what: str, *children: Child) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for child in children:
            child.alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.05)


def run_one(args: argparse.Namespace, symbols: int) -> dict[str, Any]:
    sim_port, sim_http, mdl_http, mdp_http = free_port(), free_port(), free_port(), free_port()
    exchange, prefix = f"bench-{uuid.uuid4().hex[:8]}", f"bench-{uuid.uuid4().hex[:8]}"
    common = {"RABBITMQ_URL": args.rabbitmq_url, "REDIS_URL": args.redis_url, "MDQ_EXCHANGE": exchange,
              "MDC_PREFIX": prefix}  # fmt: skip
    sim = Child("sim", [sys.executable, "-m", "mdpipe", "sim"], child_env({
        "SIM_PORT": str(sim_port), "SIM_HTTP_PORT": str(sim_http), "SIM_API_KEY": KEY,
        "SIM_SYMBOLS": str(symbols), "SIM_RATE": str(args.rate), "SIM_SPEED": str(args.speed),
        "SIM_TICK_MS": "1000", "SIM_BUFFER_FRAMES": "100000",
    }), http_port=sim_http)  # fmt: skip
    mdl = Child("mdl", [sys.executable, "-m", "mdpipe", "mdl"], child_env({
        **common, "MASSIVE_API_KEY": KEY, "MASSIVE_FEED": f"127.0.0.1:{sim_port}", "MASSIVE_TLS": "false",
        "MDL_HTTP_PORT": str(mdl_http),
    }), http_port=mdl_http)  # fmt: skip
    mdp = Child("mdp", [sys.executable, "-m", "mdpipe", "mdp"], child_env({
        **common, "MASSIVE_API_KEY": KEY, "MASSIVE_REST_URL": f"http://127.0.0.1:{sim_http}",
        "MDP_HTTP_PORT": str(mdp_http), "MDP_HYDRATE_INTERVAL_S": "0.5",
    }, strip=("MDP_", "MDC_")), http_port=mdp_http)  # fmt: skip
    out: dict[str, Any] = {"symbols": symbols, "rate_per_market_s": args.rate, "speed": args.speed}
    try:
        sim.start().wait_ready()
        time.sleep(args.warmup)
        out["market_minutes_before_start"] = round(args.warmup * args.speed / 60, 1)
        mdl.start().wait_ready()
        mdp.start()
        began = time.perf_counter()
        wait(lambda: hydration(mdp_http).get("done", 0) >= 1, 120, "first hydration", mdp, mdl, sim)
        out["start_to_hydrated_s"] = round(time.perf_counter() - began, 2)
        out["first"] = hydration(mdp_http).get("last", {})

        time.sleep(5)  # what asked at start (each queue's first message) is served before steady state
        calls = metric(mdp_http, "mdpipe_rest_requests_total")
        done = hydration(mdp_http)["done"]
        time.sleep(args.steady)
        steady_calls = metric(mdp_http, "mdpipe_rest_requests_total") - calls
        out["steady"] = {"seconds": args.steady, "rest_calls": steady_calls,
                         "rest_calls_per_hour": round(steady_calls * 3600 / args.steady, 1),
                         "hydrations": hydration(mdp_http)["done"] - done,
                         "asked_by": asked_by(mdp_http)}  # fmt: skip

        client = redis.Redis.from_url(args.redis_url)
        windows = []
        for _ in range(args.reconnects):
            done = hydration(mdp_http)["done"]
            stale = metric(mdp_http, "mdpipe_mdp_messages_total", 'result="stale"')
            client.publish("mdl:stocks:control", b'{"action":"reconnect"}')
            # the window: from the hydration's start (the reconnect's own gap in the feed is before it)
            wait(lambda d=done: started(mdp_http, d), 60, "a hydration after a reconnect", mdp)
            e0, t0 = metric(mdp_http, "mdpipe_mdp_events_total"), time.perf_counter()
            hydrated = lambda d=done: hydration(mdp_http).get("done", 0) > d  # noqa: E731
            wait(hydrated, 60, "hydration after a reconnect", mdp)
            e1, t1 = metric(mdp_http, "mdpipe_mdp_events_total"), time.perf_counter()
            span = max(t1 - t0, 0.5)
            time.sleep(2.0)  # caught up
            q0, s0 = metric(mdp_http, "mdpipe_mdp_events_total"), time.perf_counter()
            time.sleep(span)  # the same length of stream with no hydration, for the comparison
            e2, t2 = metric(mdp_http, "mdpipe_mdp_events_total"), time.perf_counter()
            windows.append({
                "hydration_s": hydration(mdp_http)["last"].get("seconds"),
                "window_s": round(span, 2),
                "events_per_s_hydrating": round((e1 - e0) / (t1 - t0)),
                "events_per_s_quiet": round((e2 - q0) / (t2 - s0)),
                "stale_messages": metric(mdp_http, "mdpipe_mdp_messages_total", 'result="stale"') - stale,
            })  # fmt: skip
        client.close()
        out["reconnects"] = windows
        out["mdp_rss_mb"] = round(mdp.rss_mb(), 1)
        return out
    finally:
        for child in (mdp, mdl, sim):
            child.close()
        _cleanup(args, exchange, prefix)


def _cleanup(args: argparse.Namespace, exchange: str, prefix: str) -> None:
    client = redis.Redis.from_url(args.redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=5000))
    for i in range(0, len(keys), 1000):
        client.unlink(*keys[i : i + 1000])
    client.close()

    async def delete() -> None:
        import aio_pika

        from mdq import topology

        connection = await aio_pika.connect(args.rabbitmq_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            dead = topology.dead_letter_name(exchange)
            for name in [*topology.queue_names(exchange, 1), dead]:
                await channel.queue_delete(name)
            for name in (exchange, dead):
                await channel.exchange_delete(name)

    asyncio.run(delete())


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| symbols | market min before start | start to hydrated | snapshot fetch | hydration | tickers | "
        "symbols merged | REST calls/h steady | events/s hydrating | events/s quiet | stale |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        first, w = r["first"], r["reconnects"]
        hyd = "/".join(str(round(x["events_per_s_hydrating"])) for x in w)
        quiet = "/".join(str(round(x["events_per_s_quiet"])) for x in w)
        lines.append(
            f"| {r['symbols']:,} | {r['market_minutes_before_start']} | {r['start_to_hydrated_s']} s | "
            f"{first.get('fetch_s')} s | {first.get('seconds')} s | {first.get('tickers'):,} | "
            f"{first.get('symbols'):,} | {r['steady']['rest_calls_per_hour']} | {hyd} | {quiet} | "
            f"{sum(x['stale_messages'] for x in w):.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", default="3000,10000", help="symbol counts, comma-separated")
    parser.add_argument("--rate", type=int, default=500, help="events per market second")
    parser.add_argument("--speed", type=float, default=20, help="market seconds per wall second")
    parser.add_argument("--warmup", type=float, default=30, help="wall seconds the market runs before")
    parser.add_argument("--steady", type=float, default=20, help="wall seconds of steady state")
    parser.add_argument("--reconnects", type=int, default=3)
    parser.add_argument(
        "--rabbitmq-url", default=os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "hydration.json"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, terminate)

    def run() -> int:
        results = [run_one(args, int(n)) for n in args.symbols.split(",")]
        print(table(results))
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
        print(f"\nJSON: {path}")
        return 0

    return guarded("hydration", run, "every child stopped, the bench's queues and keys deleted")


if __name__ == "__main__":
    sys.exit(main())
