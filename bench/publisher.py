"""Signals published per second from outside the pipeline: ``python -m bench.publisher [--label L]``.

Against the local Redis (``--redis``), under a prefix of its own, for ``--n`` updates of a small
document (a breakout, about 90 bytes of JSON) on ``--channels`` channels, each case with a subscriber
counting what arrives (so a case is done when every update was delivered, not merely sent):

- ``naive``: what a hand-written publisher does: per update, one awaited round trip (EVALSHA of the same
  script: the seq, the recent list and the PUBLISH), as a loop of ``await publish(...)``;
- ``publisher``: ``mdc.publisher.Publisher``: ``publish`` queues, a task sends batches of up to 200 in
  one script call;
- ``blocking``: ``BlockingPublisher`` from a plain thread.

Prints a table (updates/s, the ratio to ``naive``, Redis CPU µs per update from ``INFO cpu``) and writes
``bench/results/publisher-<label>.json``. Ratios hold on a noisy machine; absolute rates do not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from mdc.names import Names
from mdc.publisher import _SCRIPT, BlockingPublisher, Publisher, prepare, script_call
from mdc.subscriber import Subscriber

RESULTS = Path(__file__).parent / "results"
DOC = {"sym": "AAPL", "side": "up", "close": 191.23, "level": 190.87, "bars": 5, "t": 1_764_000_000_000}


async def redis_cpu_s(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def case(name: str, url: str, n: int, channels: int) -> dict[str, Any]:
    prefix = f"bench{secrets.token_hex(4)}"
    redis = Redis.from_url(url)
    sub = Subscriber(url, prefix, max_pending=n + 10)
    received = 0
    all_in = asyncio.Event()

    def count(_update: Any) -> None:
        nonlocal received
        received += 1
        if received >= n:
            all_in.set()

    sub.on("signals.bench*", count)
    stop = asyncio.Event()
    task = asyncio.create_task(sub.run(stop))
    await sub.confirmed()
    suffixes = [f"S{i}" for i in range(channels)]
    cpu0, started = await redis_cpu_s(redis), time.perf_counter()
    if name == "naive":
        script = redis.register_script(_SCRIPT)
        names, src = Names(prefix), b'"bench"'
        for i in range(n):
            signal = prepare("bench", DOC, suffix=suffixes[i % channels], type="breakout")
            keys, args = script_call(names, [signal], int(time.time() * 1000), src, 20, 86_400)
            await script(keys=keys, args=args)
    elif name == "publisher":
        async with Publisher(url, "bench", prefix=prefix, heartbeat=False, max_pending=n) as pub:
            for i in range(n):
                pub.publish(DOC, suffix=suffixes[i % channels], type="breakout")
            await pub.flush()
    else:

        def send() -> None:
            with BlockingPublisher(url, "bench", prefix=prefix, heartbeat=False, max_pending=n) as pub:
                for i in range(n):
                    pub.publish(DOC, suffix=suffixes[i % channels], type="breakout")
                pub.flush(120)

        await asyncio.to_thread(send)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_in.wait(), 120)
    elapsed = time.perf_counter() - started
    cpu = await redis_cpu_s(redis) - cpu0
    stop.set()
    await task
    names_left = [k async for k in redis.scan_iter(match=f"{prefix}:*")]
    if names_left:
        await redis.delete(*names_left)
    await redis.aclose()
    return {
        "case": name,
        "updates": n,
        "received": received,
        "seconds": round(elapsed, 3),
        "per_s": round(received / elapsed),
        "redis_cpu_us_per_update": round(cpu / max(received, 1) * 1e6, 2),
        "gaps": sub.stats["gaps"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    base = next(r["per_s"] for r in rows if r["case"] == "naive")
    lines = [
        "| case | updates | received | updates/s | x naive | Redis CPU µs/update |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['updates']} | {r['received']} | {r['per_s']:,} | {r['per_s'] / base:.1f} "
            f"| {r['redis_cpu_us_per_update']} |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rows = [
        await case(name, args.redis, args.n, args.channels) for name in ("naive", "publisher", "blocking")
    ]
    return {"label": args.label, "n": args.n, "channels": args.channels, "rows": rows}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--label", default="local")
    result = asyncio.run(main(parser.parse_args()))
    print(table(result["rows"]))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"publisher-{result['label']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
