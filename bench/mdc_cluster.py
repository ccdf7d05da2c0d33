"""Updates/s through MDC on one Redis against a 3-master Redis Cluster, through the real processor
(``mdpipe mdp``), on this machine, in one run, as a ratio.

What is measured
----------------
One stream, built once by ``bench/mdp_throughput.py``'s ``build_stream`` (``--events`` events of
``sim.market.SyntheticMarket`` over ``--symbols`` symbols, about 85% quotes, cut per MDQ class into
messages of ``--batch`` events), is applied by ``mdpipe mdp`` to three Redis layouts, each started by the
bench and private to it (nothing else runs on them, so their ``INFO cpu`` is ours):

- ``one Redis``: one ``redis-server`` (``mdl_throughput.start_private_redis``), ``PUBLISH``;
- ``cluster 3m``: 3 masters, no replica (``tests/cluster_support.py``'s ``LocalCluster(3, 0)``), MDP with
  ``REDIS_CLUSTER_NODES``: per-slot MULTI/EXEC, one pipeline per master, ``SPUBLISH``. UNREPLICATED:
  with no replica attached MDP sends no ``WAIT`` at all (``mdc.clusterpipe``: it asks for no more
  replicas than ``ROLE`` lists) and counts every group in ``mdpipe_mdp_unreplicated_groups_total``;
- ``cluster 3m+3r``: 3 masters and 3 replicas (``LocalCluster(3, 1)``): ``WAIT 1 200`` after each
  master's transactions, the durable setting.

Each layout is measured with one MDP process (every class, as deployed) and, unless ``--procs 1``, with
two (``MDP_CLASSES``: one takes ``quotes``, the other ``trades,aggregates,halts,imbalances,values,other``;
quotes are ~85% of the events, so the quotes process carries most of the load). Every case starts from
empty state: its own exchange and queues (``bench-<random>-<case>``, filled with the whole stream before
MDP starts, as ``mdp_throughput`` does) and its own ``MDC_PREFIX``, on Redis nodes emptied with
``FLUSHALL`` first. The window runs from the first applied event (``mdpipe_mdp_events_total`` > 0) to
every event applied or refused and every message done, summed over the processes.

Per case: events/s; updates published/s (``mdpipe_mdp_updates_published_total``: what MDP published on
per-symbol channels; MDP merges a symbol's events within a group, so it is fewer than the events and
depends on the grouping); MDP CPU µs/event (/proc, every MDP process); Redis CPU µs/event (``INFO cpu``
deltas) summed over the masters, of the busiest master, and of the replicas; the ratio of events/s to
``one Redis`` with the same number of MDP processes; and the cores each party used, from which the bench
says what limited the case.

What this does NOT measure: the cluster's capacity. On a 2-core machine the cluster's 3 (or 6)
``redis-server`` processes, RabbitMQ, the bench and MDP share the same two cores, so a cluster cannot go
faster here than one Redis does: the ratio is the cluster path's overhead (per-slot transactions,
routing, ``WAIT``, more processes on the same cores), not scale-out. One MDP process (one Python thread)
is the expected limit in every case; a master's share of Redis CPU per event is the figure that carries
to a real cluster (docs/capacity.md turns per-event costs into cores and shards).

Checks (exit status 1 when one fails): per case every event applied or refused as planned offline
(``mdp_throughput.plan_offline``), every message handled, none failed, the queues empty after, and Redis
(summed over the masters) holds one ``quote`` per quoted symbol, one ``stats`` per traded or barred
symbol, one ``done`` marker per message and a ``seq`` per per-symbol channel. The bench's queues are
deleted and its Redis servers stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from mdl_throughput import _json_safe, broker_pids, fmt_int, machine_info, scrape, start_private_redis, total
from mdp_throughput import (
    PLUGINS,
    START,
    RedisReading,
    _delete,
    _depths,
    _publish,
    amqp,
    build_stream,
    component_env,
    expected_channels,
    expected_keys,
    key_census,
    mdp_counts,
    mdq_env,
    plan_offline,
    redis_reading,
    seq_census,
    shown_env,
)
from procs import ROOT, Child, free_port, guarded, health_notes, machine_busy, own_cpu, proc_cpu, terminate

sys.path.insert(0, str(ROOT))  # tests.cluster_support: the test suite's local cluster

from mdc.names import Names
from mdpipe.settings import SimSettings, mask_url, parse_start
from mdq import topology
from tests.cluster_support import LocalCluster

DEFAULT_JSON = ROOT / "bench" / "results" / "mdc_cluster.json"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
FIRST_EVENT_TIMEOUT_S = 60.0
STALL_TIMEOUT_S = 30.0
LAYOUTS = {  # name -> (masters, replicas per master); 0 masters: one plain redis-server
    "one Redis": (0, 0),
    "cluster 3m (unreplicated)": (3, 0),
    "cluster 3m+3r (WAIT 1 200)": (3, 1),
}
SPLITS = {
    1: [""],  # every class (MDP_CLASSES left at its default: all of them)
    2: ["quotes", "trades,aggregates,halts,imbalances,values,other"],
}
BUSY = 0.75  # an MDP process (one asyncio thread) at this many cores: its own CPU is the limit
MACHINE_FULL = 0.85  # share of the machine's cores busy: the shared cores are a limit too


@dataclass
class Layout:
    name: str
    url: str
    seeds: str  # REDIS_CLUSTER_NODES, empty for one Redis
    masters: list[int]
    replicas: list[int]
    close: Any

    def clients(self) -> dict[int, redis.Redis]:
        return {p: redis.Redis(port=p, socket_timeout=10) for p in self.masters + self.replicas}


@dataclass
class Reading:
    wall: float
    mdp: float  # CPU seconds, every MDP process
    per_mdp: list[float]
    broker: dict[int, float]  # beam.smp pid -> CPU seconds (NaN once gone)
    bench: float
    busy: float
    nodes: dict[int, RedisReading]
    counts: list[dict[str, Any]]


def start_layout(name: str) -> Layout:
    masters, replicas = LAYOUTS[name]
    if not masters:
        server, url = start_private_redis()
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        return Layout(name, url, "", [port], [], server.close)
    cluster = LocalCluster(masters, replicas).start()
    up = cluster.masters_now()
    ports = [p for _, p in cluster.startup_nodes]
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes)
    return Layout(name, cluster.url, seeds, up, [p for p in ports if p not in up], cluster.stop)


def read(mdps: list[Child], ports: list[int], brokers: list[int], nodes: dict[int, redis.Redis]) -> Reading:
    busy, _ = machine_busy()
    per = [m.cpu_seconds() for m in mdps]
    r = Reading(
        wall=time.perf_counter(), mdp=sum(per), per_mdp=per, broker={p: proc_cpu(p) for p in brokers},
        bench=own_cpu(), busy=busy, nodes={p: redis_reading(c) for p, c in nodes.items()}, counts=[],
    )  # fmt: skip
    r.counts = [mdp_counts(p) for p in ports]
    return r


def summed(counts: list[dict[str, Any]], key: str) -> float:
    return sum(c[key] for c in counts)


def run_case(args, ctx, stream, plan, layout: Layout, procs: int, progress) -> dict[str, Any]:
    case = f"{layout.name}, {procs} MDP"
    token = f"{ctx['token']}-{len(ctx['cases'])}"
    exchange = prefix = f"bench-{token}"
    nodes = layout.clients()
    for port in layout.masters:  # empty state (replicas follow their master)
        nodes[port].flushall()
    mdps: list[Child] = []
    try:
        # the stream was cut for one exchange's queues: the same messages, to this case's queues
        queue = {cls: topology.class_queues(exchange, cls, 1)[0] for cls in topology.CLASSES}
        messages = [dataclasses.replace(m, queue=queue[m.cls]) for m in stream.messages]
        prefill = amqp(_publish(args.rabbitmq_url, exchange, 1, messages, exchange), args.rabbitmq_url)
        queued = sum(prefill["depths"].values())
        if queued != len(stream.messages):
            raise RuntimeError(f"{case}: {queued} messages queued of {len(stream.messages)} published")
        ports = []
        for i, classes in enumerate(SPLITS[procs]):
            port = free_port()
            env = component_env({
                **mdq_env(exchange, 1), "MDC_PREFIX": prefix, "MDP_PLUGINS": PLUGINS,
                **({"MDP_CLASSES": classes} if classes else {}), "MDP_HTTP_PORT": str(port),
                "MDP_INSTANCE": f"{exchange}-{i}", "RABBITMQ_URL": args.rabbitmq_url, "REDIS_URL": layout.url,
                "REDIS_CLUSTER_NODES": layout.seeds, "LOG_LEVEL": "WARNING",
            })  # fmt: skip
            mdps.append(Child(f"mdp{i}", [sys.executable, "-m", "mdpipe", "mdp"], env, http_port=port))
            ctx["processes"][f"{case}: mdp{i}"] = {
                "argv": ["python", "-m", "mdpipe", "mdp"],
                "env": shown_env(env),
            }
            ports.append(port)
        for m in mdps:
            m.start()
        deadline = time.monotonic() + FIRST_EVENT_TIMEOUT_S
        while True:
            for m in mdps:
                m.alive()
            if sum(mdp_counts(p)["events"] for p in ports) > 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{case}: no event applied within {FIRST_EVENT_TIMEOUT_S:.0f}s")
            time.sleep(0.01)
        brokers = ctx["broker_pids"]
        s0 = s = last = read(mdps, ports, brokers, nodes)
        need_events, need_messages = stream.events, len(stream.messages)
        done_at = dict.fromkeys(range(procs), 0.0)  # process -> its last progress, seconds into the window
        stalled = time.monotonic()
        while summed(s.counts, "events") + summed(s.counts, "invalid") < need_events or (
            summed(s.counts, "messages_done") < need_messages
        ):
            left = need_events - summed(s.counts, "events") - summed(s.counts, "invalid")
            time.sleep(args.poll if left > 0.1 * need_events else min(args.poll, 0.02))
            for m in mdps:
                m.alive()
            s = read(mdps, ports, brokers, nodes)
            for i, c in enumerate(s.counts):
                if c["events"] != last.counts[i]["events"]:
                    done_at[i] = s.wall - s0.wall
            if summed(s.counts, "events") != summed(last.counts, "events"):
                stalled = time.monotonic()
            elif time.monotonic() - stalled > STALL_TIMEOUT_S:
                progress(f"{case}: no progress for {STALL_TIMEOUT_S:.0f}s; the case ends short")
                break
            last = s
        if s is s0:
            raise RuntimeError(f"{case}: every event applied before the first snapshot; use more --events")
        unreplicated = sum(total(scrape(p), "mdpipe_mdp_unreplicated_groups_total") for p in ports)
        rss = [m.rss_mb() for m in mdps]
    finally:
        for m in mdps:
            m.stop()
        for i, m in enumerate(mdps):
            ctx["processes"][f"{case}: mdp{i}"]["log_lines"] = m.log_lines()
            m.close()
        if True:  # the exchange may be declared, even when publishing failed part way
            try:
                depths = amqp(_depths(args.rabbitmq_url, exchange, 1), args.rabbitmq_url)
            except RuntimeError:
                depths = {"?": -1}
            try:
                ctx["cleanup"][exchange] = amqp(_delete(args.rabbitmq_url, exchange, 1), args.rabbitmq_url)
            except RuntimeError as exc:
                ctx["cleanup"][exchange] = {"error": str(exc)}
                print(f"mdc_cluster: could not delete {exchange}* ({exc})", file=sys.stderr)
    census: collections.Counter[str] = collections.Counter()
    channels: collections.Counter[str] = collections.Counter()
    for port in layout.masters:
        census.update(key_census(nodes[port], prefix))
        # a cluster's per-slot markers of each group (mdp.writes.slot_marker), apart from the messages'
        slots = sum(1 for _ in nodes[port].scan_iter(match=Names(prefix).done("{*"), count=5000))
        census.update({"done": -slots, "done:slot": slots})
        channels.update(seq_census(nodes[port], prefix))
    for c in nodes.values():
        c.close()
    return figures(
        case, layout, procs, stream, plan, s0, s, done_at, unreplicated, rss, depths, census, channels
    )


def figures(case, layout, procs, stream, plan, s0, s1, done_at, unreplicated, rss, depths, census, channels):
    dt = s1.wall - s0.wall
    events = summed(s1.counts, "events") - summed(s0.counts, "events")
    published = summed(s1.counts, "published") - summed(s0.counts, "published")
    us = dt * 1e6 / events
    node_cores = {p: (s1.nodes[p].cpu - s0.nodes[p].cpu) / dt for p in s1.nodes}
    masters = {p: node_cores[p] for p in layout.masters}
    replicas = sum(node_cores[p] for p in layout.replicas)
    mdp_cores = [(b - a) / dt for a, b in zip(s0.per_mdp, s1.per_mdp, strict=True)]
    busy = (s1.busy - s0.busy) / dt
    broker = sum(s1.broker[p] - s0.broker[p] for p in s0.broker if s1.broker[p] == s1.broker[p]) / dt
    broker = broker if broker == broker else 0.0  # a broker gone before the window: nothing of ours
    bench = (s1.bench - s0.bench) / dt
    exec_calls = sum(s1.nodes[p].calls.get("exec", 0) - s0.nodes[p].calls.get("exec", 0) for p in masters)
    wait_calls = sum(s1.nodes[p].calls.get("wait", 0) - s0.nodes[p].calls.get("wait", 0) for p in masters)
    cpus = os.cpu_count() or 1
    busiest = max(masters, key=masters.get)
    limits = []
    for i, cores in enumerate(mdp_cores):
        if cores >= BUSY:
            which = f"MDP {SPLITS[procs][i] or 'all classes'}" if procs > 1 else "MDP"
            limits.append(f"{which}'s thread ({cores:.2f} cores)")
    if masters[busiest] >= BUSY:
        limits.append(f"busiest Redis master at {masters[busiest]:.2f} cores")
    if busy >= MACHINE_FULL * cpus:
        limits.append(f"the machine's {cpus} shared cores ({busy:.2f} busy)")
    if not limits:
        limits.append("waits: nothing saturated (MDP waits on Redis" + (", WAIT)" if replicas else ")"))
    if procs > 1:
        first = min(done_at, key=done_at.get)
        if done_at[first] < 0.9 * dt:
            alone = ", ".join(SPLITS[procs][i] for i in done_at if i != first)
            limits.append(f"MDP {alone} alone after {done_at[first]:.1f}s of {dt:.1f}s")
    msgs = collections.Counter()
    for c in s1.counts:
        msgs.update(c["messages"])
    folds = collections.Counter()
    for c in s1.counts:
        folds.update(c["events_by_fold"])
    applied, invalid = summed(s1.counts, "events"), summed(s1.counts, "invalid")
    want_keys, want_channels = expected_keys(stream), expected_channels(stream)
    checks = {
        "events_applied": (stream.events - plan["invalid"], applied),
        "events_invalid": (plan["invalid"], invalid),
        "events_by_fold": (dict(sorted(plan["events_by_fold"].items())),
                           {k: int(v) for k, v in sorted(folds.items()) if v}),
        "messages_handled": (len(stream.messages), msgs.get("applied", 0) + msgs.get("duplicate", 0)),
        "failed_stale_retried": (0, sum(msgs.get(r, 0) for r in ("stale", "failed", "malformed", "retried"))),
        "queues_empty": (0, sum(depths.values())),
        **{f"keys_{k}": (want_keys[k], census.get(k, 0)) for k in ("quote", "stats", "done")},
        **{f"seq_{k}": (n, channels.get(k, 0)) for k, n in want_channels.items()},
    }  # fmt: skip
    checks = {k: {"expected": e, "measured": m, "ok": e == m} for k, (e, m) in checks.items()}
    return {
        "case": case,
        "layout": layout.name,
        "mdp_processes": procs,
        "mdp_classes": SPLITS[procs],
        "seconds": dt,
        "events": events,
        "events_per_s": events / dt,
        "updates_published": published,
        "updates_per_s": published / dt,
        "mdp_cpu_us_per_event": (s1.mdp - s0.mdp) * 1e6 / events,
        "mdp_cores": mdp_cores,
        "redis_masters_us_per_event": sum(masters.values()) * us,
        "redis_busiest_master_us_per_event": masters[busiest] * us,
        "redis_replicas_us_per_event": replicas * us,
        "redis_master_cores": masters,
        "redis_replica_cores": replicas,
        "broker_cores": broker,
        "bench_cores": bench,
        "machine_busy_cores": busy,
        "other_cores": max(0.0, busy - sum(mdp_cores) - sum(node_cores.values()) - broker - bench),
        "exec_calls": exec_calls,
        "wait_calls": wait_calls,
        "unreplicated_groups": unreplicated,
        "drained_at_s": done_at,
        "rss_mb": rss,
        "limits": limits,
        "redis_keys": dict(census),
        "redis_seq_channels": dict(channels),
        "checks": checks,
    }


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per case, the run of median events/s (the lower of the two middle ones for an even count), with
    every run's events/s beside it."""
    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_case.setdefault(r["case"], []).append(r)
    out = []
    for same in by_case.values():
        ranked = sorted(same, key=lambda r: r["events_per_s"])
        out.append({**ranked[(len(ranked) - 1) // 2], "events_per_s_runs": [r["events_per_s"] for r in same]})
    return out


def report(args, stream, plan, runs: list[dict[str, Any]], ctx: dict[str, Any]) -> dict[str, Any]:
    rows = medians(runs)
    base = {r["mdp_processes"]: r for r in rows if r["layout"] == "one Redis"}
    cpus = os.cpu_count() or 1
    lines = [
        f"mdc_cluster: {fmt_int(stream.events)} events ({args.symbols} symbols, {len(stream.messages)} "
        f"messages of up to {args.batch} events) through `mdpipe mdp` into one Redis and a 3-master cluster, "
        f"{cpus} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| case | events/s | x one Redis | updates/s | MDP CPU µs/event | MDP cores "
        "| Redis µs/event: masters | busiest master | replicas | busiest master cores | machine busy cores "
        "| other cores | unreplicated groups | limited by |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        b = base.get(r["mdp_processes"])
        ratio = f"{r['events_per_s'] / b['events_per_s']:.2f}" if b else "n/a"
        cores = " + ".join(f"{c:.2f}" for c in r["mdp_cores"])
        spread = "..".join(fmt_int(f(r["events_per_s_runs"])) for f in (min, max))
        eps = fmt_int(r["events_per_s"]) + (f" ({spread})" if len(r["events_per_s_runs"]) > 1 else "")
        lines.append(
            f"| {r['case']} | {eps} | {ratio} | {fmt_int(r['updates_per_s'])} "
            f"| {r['mdp_cpu_us_per_event']:.2f} | {cores} | {r['redis_masters_us_per_event']:.2f} "
            f"| {r['redis_busiest_master_us_per_event']:.2f} | {r['redis_replicas_us_per_event']:.2f} "
            f"| {max(r['redis_master_cores'].values()):.2f} | {r['machine_busy_cores']:.2f} "
            f"| {r['other_cores']:.2f} "
            f"| {fmt_int(r['unreplicated_groups'])} | {'; '.join(r['limits'])} |"
        )
    lines += [
        "",
        f"events/s: the median of {args.repeat} rounds (min..max), the other figures that run's. "
        "other cores: the machine's busy time outside MDP, the Redis nodes, RabbitMQ and the bench. "
        f"limited by: an MDP process at {BUSY} cores or more (one asyncio thread: the rest of its time "
        f"it waits on Redis and RabbitMQ, or is preempted), a master at {BUSY} or more, the machine at "
        f"{MACHINE_FULL:.0%} of its cores or more; else waits. "
        "x one Redis: events/s against `one Redis` with the same number of MDP processes. updates/s: "
        "`mdpipe_mdp_updates_published_total` over the window (a symbol's events in one group publish once). "
        "Redis µs/event: `INFO cpu` deltas over the window per node, summed over the masters, the busiest "
        "master, summed over the replicas. unreplicated groups: `mdpipe_mdp_unreplicated_groups_total` (the "
        "3m layout has no replica: no WAIT is sent and every group is counted; on 3m+3r, groups whose WAIT "
        f"timed out). 2 MDP: MDP_CLASSES `{SPLITS[2][0]}` | `{SPLITS[2][1]}`.",
        f"On {cpus} cores every party shares the same cores (MDP, RabbitMQ, 1, 3 or 6 redis-servers, the "
        "bench): the ratio is the cluster path's overhead on this machine, not a cluster's capacity. A "
        "master's µs/event is what carries to a real cluster (docs/capacity.md).",
    ]
    failed = [(r["case"], k, c) for r in runs for k, c in r["checks"].items() if not c["ok"]]
    lines.append(
        "Checks: all passed (per case: " + ", ".join(rows[0]["checks"]) + ")."
        if not failed
        else "Checks FAILED: "
        + "; ".join(
            f"{case}: {k}: expected {c['expected']}, measured {c['measured']}" for case, k, c in failed
        )
    )
    notes = {r["case"]: {"other_cores": r["other_cores"]} for r in rows}
    lines += health_notes(ctx["processes"], notes, " (events/s most)")
    print("\n".join(lines))
    settings = {
        k: getattr(args, k) for k in ("events", "batch", "symbols", "seed", "start", "rate", "tick_ms")
    }
    settings.update(procs=args.procs, repeat=args.repeat, rabbitmq_url=mask_url(args.rabbitmq_url))
    return {
        "benchmark": "mdc_cluster",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "machine": machine_info(),
        "settings": {**settings, "splits": SPLITS, "layouts": LAYOUTS},
        "stream": {
            "events": stream.events,
            "messages": len(stream.messages),
            "by_type": stream.by_type,
            "by_class": stream.by_class,
            "body_bytes": stream.body_bytes,
        },
        "plan": plan,
        "processes": ctx["processes"],
        "cleanup": ctx["cleanup"],
        "cases": rows,
        "runs": runs,
        "ratios_vs_one_redis": {
            r["case"]: r["events_per_s"] / base[r["mdp_processes"]]["events_per_s"]
            for r in rows
            if r["mdp_processes"] in base
        },
        "ok": not failed,
    }


def run_bench(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, terminate)
    began = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - began:5.1f}s] {message}", file=sys.stderr, flush=True)

    ctx: dict[str, Any] = {
        "token": secrets.token_hex(4), "broker_pids": broker_pids(args.rabbitmq_url), "processes": {},
        "cleanup": {}, "cases": [],
    }  # fmt: skip
    stream = build_stream(args, f"bench-{ctx['token']}")
    plan = plan_offline(stream)
    progress(f"stream: {fmt_int(stream.events)} events, {len(stream.messages)} messages; planned offline")
    layouts: list[Layout] = []
    try:  # every layout up for the whole run: the rounds interleave the cases (a busy machine's drift)
        for name in LAYOUTS:
            layouts.append(start_layout(name))
            progress(f"{name}: masters {layouts[-1].masters}, replicas {layouts[-1].replicas}")
        for n in range(args.repeat):
            for layout in layouts:
                for procs in args.procs:
                    row = run_case(args, ctx, stream, plan, layout, procs, progress)
                    row["round"] = n
                    ctx["cases"].append(row)
                    progress(
                        f"round {n + 1}/{args.repeat}, {row['case']}: {fmt_int(row['events_per_s'])} "
                        f"events/s, {row['mdp_cpu_us_per_event']:.2f} µs MDP, "
                        f"{row['redis_masters_us_per_event']:.2f} µs Redis masters per event; "
                        f"limited by {'; '.join(row['limits'])}"
                    )
    finally:
        for layout in layouts:
            layout.close()
    data = report(args, stream, plan, ctx["cases"], ctx)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_json_safe(data), indent=2, default=list) + "\n")
    print(f"\nJSON: {args.json}")
    return 0 if data["ok"] else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = SimSettings.model_fields
    parser = argparse.ArgumentParser(
        prog="python bench/mdc_cluster.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=600_000, help="events in the stream")
    parser.add_argument("--batch", type=int, default=500, help="events per MDQ message")
    parser.add_argument("--symbols", type=int, default=defaults["sim_symbols"].default, help="symbols")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 30,000 events, 500 symbols")
    parser.add_argument("--procs", default="1,2", help="MDP processes per layout: 1, 2 or 1,2")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every case (the median is shown)")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between two scrapes of /metrics")
    parser.add_argument("--rabbitmq-url", default=os.environ.get("RABBITMQ_URL") or DEFAULT_RABBITMQ_URL)
    parser.add_argument("--seed", type=int, default=defaults["sim_seed"].default, help="market seed")
    parser.add_argument("--start", default=START, help="the market clock, fixed")
    parser.add_argument(
        "--rate", type=int, default=0, help="market trades+quotes per market second (0: nominal)"
    )
    parser.add_argument("--tick-ms", type=int, default=defaults["sim_tick_ms"].default, help="market tick")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    args = parser.parse_args(argv)
    args.shards = 1  # build_stream's: one queue per class
    if args.quick:
        args.events, args.symbols = min(args.events, 30_000), min(args.symbols, 500)
        args.repeat = 1
        args.rate = args.rate or 5_000  # 6 s of market time: second and minute bars, imbalances too
    try:
        parse_start(args.start)
        args.procs = sorted({int(p) for p in args.procs.split(",")})
    except ValueError as exc:
        parser.error(str(exc))
    if not args.procs or not set(args.procs) <= set(SPLITS):
        parser.error("--procs: 1, 2 or 1,2")
    if min(args.events, args.batch, args.symbols, args.repeat) < 1 or args.poll <= 0:
        parser.error("--events, --batch, --symbols, --repeat and --poll must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return guarded(
        "mdc_cluster", lambda: run_bench(args), "MDP and Redis servers stopped, bench queues deleted"
    )


if __name__ == "__main__":
    sys.exit(main())
