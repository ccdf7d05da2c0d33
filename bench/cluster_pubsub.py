"""MDC's write pattern on one Redis against a 3-master Redis Cluster: ``python -m bench.cluster_pubsub``.

Per update, what a processor does for a symbol (``md:stats:{SYM}`` written, its ``seq`` counted,
``md:stats.{SYM}`` published; keys and channels hash-tagged by symbol so that a symbol's all live on one
node), sent in pipelines of ``--batch`` updates, over ``--symbols`` symbols; one subscriber holds a
subscription to every channel (so each publish is delivered once). Three cases, in one run:

- ``single``: one Redis (a private ``redis-server`` of the bench's own), ``PUBLISH``;
- ``cluster-spublish``: the cluster (3 masters, 3 replicas), sharded pub/sub: ``SPUBLISH`` and
  ``SSUBSCRIBE`` (a message goes only to the shard owning its slot);
- ``cluster-publish``: the cluster with classic ``PUBLISH``: every message is sent to every node over
  the cluster bus, whoever subscribed.

It prints updates/s (the client, one Python process, is the limit here, not Redis) and the Redis CPU per
update summed over every node (``INFO cpu`` before and after: masters and replicas), which is what a
capacity plan needs, and writes ``bench/results/cluster_pubsub-<label>.json``. The cluster's six nodes
share this machine's cores with the client: its updates/s are not a cluster's throughput; the CPU per
update, and how it splits across masters, is the figure to read.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from mdpipe import private_services
from tests.cluster_support import LocalCluster

RESULTS = Path(__file__).parent / "results"
DOC = b'{"sym":"SYM","last":190.12,"volume":1234567,"high":191.0,"low":188.5,"vwap":189.9,"trades":4321}'


def cpu_s(ports: list[int]) -> dict[int, float]:
    out = {}
    for port in ports:
        info = redis.Redis(port=port).info("cpu")
        out[port] = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return out


class Counter:
    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self, _message: Any) -> None:
        with self.lock:
            self.n += 1


def run_case(
    name: str, client: Any, ports: list[int], masters: list[int], symbols: list[str], updates: int, batch: int
) -> dict:
    sharded = name == "cluster-spublish"
    channels = [f"md:stats.{{{s}}}" for s in symbols]
    counter = Counter()
    pubsub = client.pubsub()
    if sharded:
        pubsub.ssubscribe(**dict.fromkeys(channels, counter))
        thread = pubsub.run_in_thread(sleep_time=0.001, sharded_pubsub=True)
    else:
        pubsub.subscribe(**dict.fromkeys(channels, counter))
        thread = pubsub.run_in_thread(sleep_time=0.001)
    time.sleep(1.0)
    before, started = cpu_s(ports), time.perf_counter()
    sent = 0
    while sent < updates:
        pipe = client.pipeline(transaction=False)
        for i in range(sent, min(sent + batch, updates)):
            sym = symbols[i % len(symbols)]
            pipe.set(f"md:stats:{{{sym}}}", DOC, ex=3600)
            pipe.incr(f"md:seq:{{{sym}}}")
            channel = f"md:stats.{{{sym}}}"
            pipe.execute_command("SPUBLISH" if sharded else "PUBLISH", channel, DOC)
        pipe.execute()
        sent = min(sent + batch, updates)
    deadline = time.monotonic() + 60
    while counter.n < updates and time.monotonic() < deadline:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    after = cpu_s(ports)
    thread.stop()
    per_node = {p: round((after[p] - before[p]) / updates * 1e6, 2) for p in ports}
    return {
        "case": name,
        "updates": updates,
        "delivered": counter.n,
        "per_s": round(updates / elapsed),
        "redis_cpu_us_per_update": round(sum(per_node.values()), 2),
        "masters_us_per_update": round(sum(v for p, v in per_node.items() if p in masters), 2),
        "busiest_master_us_per_update": max(v for p, v in per_node.items() if p in masters),
        "per_node_us": per_node,
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    symbols = [f"S{i:05d}" for i in range(args.symbols)]
    rows = []
    folder = tempfile.mkdtemp(prefix="bench-redis-")
    made = private_services.redis(folder, {})  # as mdpipe up starts one: nothing kept on disk
    if made is None:
        raise SystemExit("redis-server is not installed (scripts/ensure-services installs it)")
    (spec,), url = made
    single = subprocess.Popen(spec.argv, stdout=subprocess.DEVNULL)
    port = private_services.address(url)[1]
    cluster = LocalCluster(3, args.replicas)
    try:
        deadline = time.monotonic() + spec.ready_timeout_s
        while not spec.ready():
            if single.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the private redis-server did not start")
            time.sleep(0.05)
        client = redis.Redis.from_url(url)
        rows.append(run_case("single", client, [port], [port], symbols, args.updates, args.batch))
        cluster.start()
        nodes = [ClusterNode(h, p) for h, p in cluster.startup_nodes]
        for name in ("cluster-spublish", "cluster-publish"):
            cc = RedisCluster(startup_nodes=nodes)
            ports = [p for _, p in cluster.startup_nodes]
            masters = cluster.masters_now()  # each node's pipelines hold --batch updates, as on one Redis
            rows.append(run_case(name, cc, ports, masters, symbols, args.updates, args.batch * len(masters)))
            cc.close()
    finally:
        single.kill()
        single.wait()
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return {"label": args.label, "symbols": args.symbols, "updates": args.updates, "rows": rows}


def table(rows: list[dict[str, Any]]) -> str:
    base = rows[0]
    lines = [
        "| case | updates/s | delivered | Redis CPU us/update: all nodes | masters | busiest master "
        "| x single |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        busiest = r["busiest_master_us_per_update"]
        ratio = busiest / base["busiest_master_us_per_update"]
        lines.append(
            f"| {r['case']} | {r['per_s']:,} | {r['delivered']:,} | {r['redis_cpu_us_per_update']} "
            f"| {r['masters_us_per_update']} | {busiest} | {ratio:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--replicas", type=int, default=1, help="replicas per master")
    parser.add_argument("--label", default="local")
    result = main(parser.parse_args())
    print(table(result["rows"]))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"cluster_pubsub-{result['label']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
