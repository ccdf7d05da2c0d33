"""How many events per second the listener (MDL) moves from the Massive emulator into RabbitMQ, and at what
CPU cost per event, against a naive per-event publisher.

What is measured
----------------
One emulator (``mdpipe sim`` flat-out: ``SIM_RATE=0``, each client cycles through a pool of pre-encoded
frames) feeds, one after the other, in the same run:

- ``mdl``: the listener, ``mdpipe mdl`` as deployed (``MASSIVE_FEED=127.0.0.1:PORT``, every stocks event
  type subscribed, its own ``MDQ_EXCHANGE=bench-<pid>`` so nothing else's queues are touched). It runs
  until it has published ``--events`` events (default 2,000,000) in the measured window, which starts
  ``--warmup`` seconds (default 1) after its first publish. Figures come from its Prometheus ``/metrics``
  (``mdpipe_mdl_events_published_total``, ``mdpipe_mdl_messages_published_total``,
  ``mdpipe_mdl_dropped_frames_total{cause}``...), polled every ``--poll`` seconds;
- ``naive-confirms``: a baseline written in this file (not product code), in its own process: the real
  ``massive`` client (raw, ``max_size=None``) and, for every event, one AMQP message published the way
  tutorials do: ``channel = await connection.channel()`` (aio-pika turns publisher confirms on by default)
  and ``await channel.default_exchange.publish(aio_pika.Message(json.dumps(event).encode()),
  routing_key=queue)``, into a queue bounded like MDL's. Measured for ``--naive-seconds`` (default 10)
  after ``--warmup``;
- ``naive-noconfirms``: the same with ``connection.channel(publisher_confirms=False)``.

The naive client reads far slower than the emulator sends. In flat-out mode the emulator never closes a
slow reader (only paced sources have a ring to fall off), it just waits for the socket to drain, so the
naive runs read the same flat-out emulator without being kicked.

Nothing consumes the queues: each is bounded (``x-message-ttl``, ``x-max-length``,
``x-max-length-bytes``, ``x-overflow=drop-head``, the MDQ defaults), so RabbitMQ drops the oldest
messages. The exchange and queues are deleted at the end, whatever happens (but not when the bench is
killed with SIGKILL: then ``bench-<pid>*`` stays behind, bounded, until deleted by hand).

How
---
Every process is separate so that its CPU time can be read from ``/proc/PID/stat`` (user + system, all
threads): the subject (MDL or the naive publisher), the emulator, RabbitMQ (``beam.smp``, when the broker
is on this machine), this script, and the rest of the machine (``/proc/stat``), over the measured
window. CPU microseconds per event = subject CPU seconds / events published. A 2-core machine runs
the subject, the emulator and RabbitMQ at once, so the subject may not get a whole core: events/s per
core (10^6 / CPU µs per event) is the rate it would reach with a core to itself. Results go to stdout as
Markdown and to ``bench/results/mdl_throughput.json``.

Markets: ``--market`` (default ``stocks``) is the emulator's ``SIM_MARKET`` and MDL's ``MASSIVE_MARKET``,
with every event type of that market subscribed (``options``: ``Q.*,T.*,A.*,AM.*``; the naive client too).
``--market stocks,options`` runs the whole bench once per market, one after the other (each its own
emulator, MDL and JSON: ``<stem>.<market>.json`` for a market other than stocks), then prints a table of
MDL's figures per market with the ratio of events/s per core to the first market's (and writes it to
``<stem>.markets.json``).

MDL's control loop needs Redis. By default the bench starts a private ``redis-server`` (no persistence,
a free port) for it: a desired state or a control message meant for another listener of the same market
(pub/sub channels are shared by every database of a Redis) must not pause, resubscribe or reconnect the
measured one. With ``--redis-url`` it uses that Redis instead, and refuses to start if it holds a desired
state for the stocks listener.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mmap
import os
import platform
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyspy
from procs import (
    ROOT,
    Child,
    child_env,
    free_port,
    guarded,
    health_notes,
    http_get,
    machine_busy,
    own_cpu,
    proc_cpu,
    public_env,
    terminate,
)

from mdpipe.settings import mask_url

DEFAULT_JSON = ROOT / "bench" / "results" / "mdl_throughput.json"
MARKET = "stocks"  # the default market
# Every event type of each market the emulator has a synthetic stream for (SIM_MARKET) that the bench runs.
MARKET_SUBSCRIPTIONS = {"stocks": "T.*,Q.*,A.*,AM.*,LULD.*,NOI.*", "options": "Q.*,T.*,A.*,AM.*"}
START = "2026-11-20T14:30:00Z"  # fixed market clock: the same events on every run
API_KEY = "bench-key"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
FIRST_EVENT_TIMEOUT_S = 20.0
COUNTERS = ("published", "frames", "events_read")  # the naive child's counters, shared through mmap
COUNTER_BYTES = 8 * len(COUNTERS)

# The targets.
TARGET_EVENTS_PER_S = 500_000
TARGET_US_PER_EVENT = 1e6 / TARGET_EVENTS_PER_S
TARGET_RATIO = 50.0

PHASES = {
    "mdl": "MDL (`mdpipe mdl`)",
    "naive-confirms": "naive per-event publish, confirms",
    "naive-noconfirms": "naive per-event publish, no confirms",
}
NAIVE = ("naive-confirms", "naive-noconfirms")

# py-spy frames -> what MDL spends its time on (the first rule matching from the leaf up wins).
PROFILE_RULES = (
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("route: orjson.loads + per-event loop (Router.route)", ("Router.route ",)),
    ("batch: orjson.dumps + headers (Batcher)", ("Batcher.", "mdq/message.py")),
    ("publish: aiormq/pamqp + socket writes", ("Publisher.publish ", "aiormq/", "pamqp/", "StreamWriter.")),
    ("read: massive client + websockets", ("WebSocketClient.connect ", "websockets/")),
    ("hand-off (Listener._on_frame)", ("Listener._on_frame ",)),
    (
        "publish loop bookkeeping (Listener._publish_loop/_route)",
        ("Listener._publish_loop ", "Listener._route "),
    ),
)


# -- the naive baseline (a child process) -------------------------------------------------------------


def naive_child(args: argparse.Namespace) -> int:
    """``--naive-child confirms|noconfirms``: read the emulator, publish every event alone, until SIGTERM."""
    import aio_pika
    from massive import WebSocketClient

    from mdpipe import runtime

    confirms = args.naive_child == "confirms"
    url = os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL)
    with open(args.counters, "r+b") as f:
        shared = mmap.mmap(f.fileno(), COUNTER_BYTES)
    counts = memoryview(shared).cast("q")

    async def main(stop: asyncio.Event) -> int:
        connection = await aio_pika.connect(url)
        try:
            # As the tutorials do: a channel (confirms on unless told otherwise), one message per event.
            channel = await connection.channel(publisher_confirms=confirms)
            exchange = channel.default_exchange
            queue = args.queue

            async def processor(frame: str) -> None:
                counts[1] += 1
                for event in json.loads(frame):
                    if event.get("ev") == "status":
                        continue
                    counts[2] += 1
                    await exchange.publish(aio_pika.Message(json.dumps(event).encode()), routing_key=queue)
                    counts[0] += 1

            client = WebSocketClient(
                api_key=API_KEY, feed=args.feed, market=args.market, raw=True, secure=False,
                subscriptions=MARKET_SUBSCRIPTIONS[args.market].split(","), max_reconnects=0,
            )  # fmt: skip
            task = asyncio.create_task(client.connect(processor, max_size=None))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if task.done():
                exc = None if task.cancelled() else task.exception()
                print(f"naive client ended early: {exc!r}", file=sys.stderr)
                return 1
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 3)
            for _ in range(60):  # Python 3.11's wait_for inside the client can swallow a cancellation
                if task.done():
                    break
                task.cancel()
                await asyncio.sleep(0.05)
            return 0
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)

    try:
        return runtime.serve(main)
    finally:
        counts.release()
        shared.close()


# -- processes ----------------------------------------------------------------------------------------


def broker_pids(url: str) -> list[int]:
    """RabbitMQ's Erlang VM (``beam.smp``) when the broker is on this machine, else nothing."""
    if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == "beam.smp":
                    pids.append(int(entry))
    return pids


# -- Prometheus text -------------------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int | None) -> Samples:
    """Every sample of a ``/metrics`` page: (name, sorted labels) -> value; empty when it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    body = http_get(port, "/metrics")
    if body is None:
        return {}
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        if n == name:
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + v
    return out


def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


# -- one measurement -----------------------------------------------------------------------------------


@dataclass
class Snapshot:
    wall: float
    subject: float  # CPU seconds
    emulator: float
    broker: float
    bench: float
    busy: float
    steal: float
    counts: dict[str, Any]


def snapshot(subject: Child, emulator: Child, brokers: list[int], counts) -> Snapshot:
    """CPU of every party, then the counts (``counts()``: a metrics scrape, or the naive's counters)."""
    busy, steal = machine_busy()
    snap = Snapshot(
        wall=time.perf_counter(), subject=subject.cpu_seconds(), emulator=emulator.cpu_seconds(),
        broker=sum(proc_cpu(p) for p in brokers), bench=own_cpu(), busy=busy, steal=steal, counts={},
    )  # fmt: skip
    snap.counts = counts()
    return snap


@dataclass
class Phase:
    name: str
    seconds: float
    events: int  # published in the window
    messages: int
    cpu: float  # cores: the subject
    emulator_cpu: float
    broker_cpu: float
    bench_cpu: float
    other_cpu: float  # the rest of the machine
    steal: float
    rss_mb: float
    detail: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> dict[str, float]:
        s, ev = self.seconds, self.events
        us = self.cpu * s * 1e6 / ev if ev else float("nan")
        return {
            "events_per_s": ev / s,
            "cpu_us_per_event": us,
            "cores": self.cpu,
            "events_per_s_per_core": 1e6 / us if ev else 0.0,
            "events_per_message": ev / self.messages if self.messages else 0.0,
            "messages_per_s": self.messages / s,
            "emulator_cores": self.emulator_cpu,
            "broker_cores": self.broker_cpu,
            "broker_us_per_message": self.broker_cpu * s * 1e6 / self.messages if self.messages else 0.0,
            "bench_cores": self.bench_cpu,
            "other_cores": self.other_cpu,
            "steal_cores": self.steal,
            "rss_mb": self.rss_mb,
        }


def make_phase(name: str, s0: Snapshot, s1: Snapshot, events: int, messages: int, rss: float) -> Phase:
    dt = s1.wall - s0.wall
    cpu, emu, brk, bench = (
        (getattr(s1, k) - getattr(s0, k)) / dt for k in ("subject", "emulator", "broker", "bench")
    )
    busy = (s1.busy - s0.busy) / dt
    return Phase(
        name=name, seconds=dt, events=events, messages=messages, cpu=cpu, emulator_cpu=emu, broker_cpu=brk,
        bench_cpu=bench, other_cpu=max(0.0, busy - cpu - emu - brk - bench), steal=(s1.steal - s0.steal) / dt,
        rss_mb=rss,
    )  # fmt: skip


def mdl_counts(mdl_port: int, sim_port: int) -> dict[str, Any]:
    m, sim = scrape(mdl_port), scrape(sim_port)
    return {
        "published": total(m, "mdpipe_mdl_events_published_total"),
        "published_by_class": by_label(m, "mdpipe_mdl_events_published_total", "class"),
        "messages": total(m, "mdpipe_mdl_messages_published_total"),
        "messages_by_class": by_label(m, "mdpipe_mdl_messages_published_total", "class"),
        "frames": total(m, "mdpipe_mdl_frames_total"),
        "events_routed": total(m, "mdpipe_mdl_events_total"),
        "dropped_frames": by_label(m, "mdpipe_mdl_dropped_frames_total", "cause"),
        "dropped_events": by_label(m, "mdpipe_mdl_dropped_events_total", "cause"),
        "malformed": total(m, "mdpipe_mdl_malformed_frames_total"),
        "reconnects": by_label(m, "mdpipe_mdl_reconnects_total", "cause"),
        "handoff_frames": total(m, "mdpipe_mdl_handoff_frames"),
        "latency_buckets": by_label(m, "mdpipe_mdl_publish_latency_seconds_bucket", "le"),
        "latency_sum": total(m, "mdpipe_mdl_publish_latency_seconds_sum"),
        "latency_count": total(m, "mdpipe_mdl_publish_latency_seconds_count"),
        "sim_events_sent": total(sim, "mdpipe_sim_events_sent_total"),
        "sim_frames_sent": total(sim, "mdpipe_sim_frames_sent_total"),
        "sim_bytes_sent": total(sim, "mdpipe_sim_bytes_sent_total"),
        "ok": bool(m),
    }


def latency_summary(c0: dict[str, Any], c1: dict[str, Any]) -> dict[str, Any]:
    """Mean and bucket-bounded p50/p99 of MDL's publish latency (socket read to message written)."""
    n = c1["latency_count"] - c0["latency_count"]
    if n <= 0:
        return {}
    buckets = sorted(
        (
            (float(le), c1["latency_buckets"][le] - c0["latency_buckets"].get(le, 0.0))
            for le in c1["latency_buckets"]
        ),
        key=lambda b: b[0],
    )

    def quantile(q: float) -> float:
        return next((le for le, cum in buckets if cum >= q * n), float("inf"))

    return {
        "mean_ms": (c1["latency_sum"] - c0["latency_sum"]) / n * 1000,
        "p50_le_ms": quantile(0.5) * 1000,
        "p99_le_ms": quantile(0.99) * 1000,
        "messages": n,
    }


def measure_mdl(args: argparse.Namespace, ctx: dict[str, Any], emulator: Child, progress) -> Phase:
    port = free_port()
    env = child_env({
        "MASSIVE_API_KEY": API_KEY, "MASSIVE_FEED": f"127.0.0.1:{ctx['sim_port']}",
        "MASSIVE_MARKET": args.market, "MASSIVE_SUBSCRIPTIONS": MARKET_SUBSCRIPTIONS[args.market],
        "MDL_HTTP_PORT": str(port), "MDL_INSTANCE": ctx["exchange"],
        "MDQ_EXCHANGE": ctx["exchange"], "RABBITMQ_URL": args.rabbitmq_url, "REDIS_URL": args.redis_url,
    })  # fmt: skip
    if args.batch_events:
        env["MDL_BATCH_EVENTS"] = str(args.batch_events)
    mdl = Child("mdl", [sys.executable, "-m", "mdpipe", "mdl"], env, http_port=port)
    ctx["processes"]["mdl"] = {"argv": ["python", "-m", "mdpipe", "mdl"], "env": public_env(env)}
    try:
        mdl.start(0 if args.pin else None)
        mdl.wait_ready()
        progress(f"mdl ready after {mdl.ready_s:.1f}s (vendor and broker connected)")

        def counts() -> dict[str, Any]:
            return mdl_counts(port, emulator.http_port)  # type: ignore[arg-type]

        deadline = time.monotonic() + FIRST_EVENT_TIMEOUT_S
        while counts()["published"] == 0:
            mdl.alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"mdl: nothing published within {FIRST_EVENT_TIMEOUT_S:.0f}s")
            time.sleep(0.1)
        time.sleep(args.warmup)
        brokers = ctx["broker_pids"]
        s0 = s = snapshot(mdl, emulator, brokers, counts)
        series, handoff_max, last = [], s0.counts["handoff_frames"], s0
        while True:
            time.sleep(args.poll)
            mdl.alive()
            s = snapshot(mdl, emulator, brokers, counts)
            if not s.counts["ok"]:
                raise RuntimeError("mdl: /metrics did not answer")
            handoff_max = max(handoff_max, s.counts["handoff_frames"])
            dt = s.wall - last.wall
            series.append({
                "t": round(s.wall - s0.wall, 3),
                "events_per_s": (s.counts["published"] - last.counts["published"]) / dt,
                "cores": (s.subject - last.subject) / dt,
                "handoff_frames": s.counts["handoff_frames"],
            })  # fmt: skip
            last = s
            done = s.counts["published"] - s0.counts["published"]
            if done >= args.events or s.wall - s0.wall >= args.max_seconds:
                break
        ready = http_get(port, "/readyz")
        rss = mdl.rss_mb()
        folded = args.json.with_name(args.json.stem + ".py-spy.folded")
        profile = run_py_spy(mdl.pid, args.py_spy, folded, progress) if args.py_spy else None
    finally:
        mdl.stop()
        ctx["processes"]["mdl"]["log_lines"] = mdl.log_lines()
        mdl.close()
    c0, c1 = s0.counts, s.counts
    phase = make_phase(
        "mdl", s0, s, int(c1["published"] - c0["published"]), int(c1["messages"] - c0["messages"]), rss
    )
    rates = [p["events_per_s"] for p in series]
    phase.detail = {
        "frames_read": c1["frames"] - c0["frames"],
        "events_routed": c1["events_routed"] - c0["events_routed"],
        "events_sent_by_emulator": c1["sim_events_sent"] - c0["sim_events_sent"],
        "frames_sent_by_emulator": c1["sim_frames_sent"] - c0["sim_frames_sent"],
        "bytes_sent_by_emulator": c1["sim_bytes_sent"] - c0["sim_bytes_sent"],
        "published_by_class": diff(c1["published_by_class"], c0["published_by_class"]),
        "messages_by_class": diff(c1["messages_by_class"], c0["messages_by_class"]),
        "dropped_frames": diff(c1["dropped_frames"], c0["dropped_frames"]),
        "dropped_events": diff(c1["dropped_events"], c0["dropped_events"]),
        "malformed_frames": c1["malformed"] - c0["malformed"],
        "reconnects": diff(c1["reconnects"], c0["reconnects"]),
        "handoff_frames_max": handoff_max,
        "latency": latency_summary(c0, c1),
        "events_per_s_min": min(rates, default=0.0),
        "events_per_s_max": max(rates, default=0.0),
        "target_events": args.events,
        "reached_target_events": phase.events >= args.events,
        "readyz": json.loads(ready) if ready else None,
        "series": series,
    }
    if profile is not None:
        phase.detail["profile"] = profile
    return phase


def measure_naive(
    variant: str, args: argparse.Namespace, ctx: dict[str, Any], emulator: Child, progress
) -> Phase:
    with tempfile.NamedTemporaryFile(prefix="mdl-bench-", suffix=".counters") as f:
        f.write(b"\0" * COUNTER_BYTES)
        f.flush()
        shared = mmap.mmap(f.fileno(), COUNTER_BYTES)
        view = memoryview(shared).cast("q")
        try:
            return _measure_naive(variant, args, ctx, emulator, progress, f.name, view)
        finally:
            view.release()
            shared.close()


def _measure_naive(variant, args, ctx, emulator: Child, progress, path: str, view) -> Phase:
    mode = variant.removeprefix("naive-")
    argv = [sys.executable, str(Path(__file__).resolve()), "--naive-child", mode, "--feed",
            f"127.0.0.1:{ctx['sim_port']}", "--queue", ctx["naive_queue"], "--market", args.market,
            "--counters", path]  # fmt: skip
    env = child_env({"RABBITMQ_URL": args.rabbitmq_url})
    child = Child(variant, argv, env)
    ctx["processes"][variant] = {
        "argv": ["python", Path(__file__).name, *argv[2:-1], "<counters file>"],
        "env": public_env(env),
    }

    def counts() -> dict[str, Any]:
        return dict(zip(COUNTERS, view.tolist(), strict=True))

    try:
        child.start(0 if args.pin else None)
        deadline = time.monotonic() + FIRST_EVENT_TIMEOUT_S
        while view[0] == 0:
            child.alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{variant}: nothing published within {FIRST_EVENT_TIMEOUT_S:.0f}s")
            time.sleep(0.05)
        progress(f"{variant} publishing after {time.perf_counter() - child.started:.1f}s")
        time.sleep(args.warmup)
        brokers = ctx["broker_pids"]
        s0 = snapshot(child, emulator, brokers, counts)
        time.sleep(args.naive_seconds)
        s1 = snapshot(child, emulator, brokers, counts)
        child.alive()
        rss = child.rss_mb()
    finally:
        child.stop()
        ctx["processes"][variant]["log_lines"] = child.log_lines()
        child.close()
    events = s1.counts["published"] - s0.counts["published"]
    phase = make_phase(variant, s0, s1, events, events, rss)
    phase.detail = {
        "frames_read": s1.counts["frames"] - s0.counts["frames"],
        "events_read": s1.counts["events_read"] - s0.counts["events_read"],
        "publisher_confirms": mode == "confirms",
    }
    return phase


# -- optional profile ----------------------------------------------------------------------------------


def run_py_spy(pid: int, seconds: float, folded: Path, progress) -> dict[str, Any]:
    """Sample MDL with py-spy for ``seconds`` (whole) after the measured window (it costs CPU too); the
    raw samples go to ``folded`` (flamegraph input)."""
    progress(f"profiling mdl with py-spy for {max(1, round(seconds))}s")
    error = pyspy.record(pid, seconds, folded)
    if error:
        return {"error": error}
    return {**pyspy.summarize(folded.read_text(), PROFILE_RULES, top_lines=12), "folded": str(folded)}


# -- RabbitMQ and Redis ----------------------------------------------------------------------------------


def mdq_settings():
    from mdpipe.settings import MdqSettings

    return MdqSettings.model_construct()  # the defaults MDL runs with: the children get no MDQ_* of ours


async def _declare_naive_queue(url: str, queue: str) -> None:
    import aio_pika

    from mdq import topology

    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True, arguments=topology.queue_arguments(mdq_settings()))


async def _delete(url: str, exchange: str, queues: list[str]) -> dict[str, Any]:
    import aio_pika

    connection = await aio_pika.connect(url, timeout=10)
    result: dict[str, Any] = {"deleted": [], "failed": {}}
    async with connection:
        channel = await connection.channel()
        for name, kind in [*((q, "queue") for q in queues), (exchange, "exchange")]:
            try:
                if kind == "queue":
                    await channel.queue_delete(name)
                else:
                    await channel.exchange_delete(name)
                result["deleted"].append(name)
            except Exception as exc:  # a refused delete closes the channel: note it and go on
                result["failed"][name] = f"{type(exc).__name__}: {exc}"
                channel = await connection.channel()
    return result


def redis_desired_state(url: str, market: str = MARKET) -> str | None:
    """The desired state another party left in MDL's Redis database, if any (it would override ours)."""
    import redis

    from mdc import names

    try:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            value = client.get(names.mdl_desired(market))
        finally:
            client.close()
    except redis.RedisError as exc:
        raise RuntimeError(f"Redis at {mask_url(url)} does not answer ({exc}); MDL needs it") from None
    return None if value is None else value.decode(errors="replace")


def start_private_redis() -> tuple[Child, str]:
    """A throw-away ``redis-server`` on a free port, for MDL's control loop alone."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found: give MDL a Redis with --redis-url (a database no other "
                           "listener of the stocks market uses)")  # fmt: skip
    port = free_port()
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--logfile", "", "--loglevel", "warning"]  # fmt: skip
    server = Child("redis", argv, {"PATH": os.environ.get("PATH", "")}).start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        server.alive()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return server, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    server.close()
    raise RuntimeError(f"private redis-server not answering on port {port}:\n{server.log_tail()}")


# -- report --------------------------------------------------------------------------------------------


def fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    packages = {}
    for name in ("mdpipe", "massive", "websockets", "aio-pika", "aiormq", "pamqp", "orjson", "uvloop",
                 "prometheus-client"):  # fmt: skip
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_before": list(os.getloadavg()),
        "packages": packages,
    }


def _counts_text(counts: dict[str, float]) -> str:
    return ", ".join(f"{k} {fmt_int(v)}" for k, v in sorted(counts.items())) or "none"


def report(args: argparse.Namespace, phases: dict[str, Phase], ctx: dict[str, Any]) -> dict[str, Any]:
    figures = {name: p.figures() for name, p in phases.items()}
    mdl = figures.get("mdl")
    base = figures.get("naive-confirms")
    lines = [
        f"mdl_throughput: emulator flat-out{'' if args.market == MARKET else f' ({args.market})'} -> "
        f"{'MDL / ' if mdl else ''}naive publishers -> RabbitMQ, "
        f"{os.cpu_count()} CPUs, {args.warmup:g} s warm-up each"
        + (f"; MDL window {phases['mdl'].seconds:.1f} s" if mdl else "")
        + (f"; naive windows {args.naive_seconds:g} s" if any(n in phases for n in NAIVE) else ""),
        "",
        "| publisher | events/s | CPU µs/event | cores | events/s per core | events/message | messages/s "
        "| emulator cores | RabbitMQ cores | other cores | vs naive (confirms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, f in figures.items():
        ratio = (
            f"{f['events_per_s'] / base['events_per_s']:,.1f}x" if base and base["events_per_s"] else "n/a"
        )
        broker = f"{f['broker_cores']:.2f}" if ctx["broker_pids"] else "n/a"
        lines.append(
            f"| {PHASES[name]} | {fmt_int(f['events_per_s'])} | {f['cpu_us_per_event']:.2f} "
            f"| {f['cores']:.2f} | {fmt_int(f['events_per_s_per_core'])} | {f['events_per_message']:.1f} "
            f"| {fmt_int(f['messages_per_s'])} | {f['emulator_cores']:.2f} | {broker} "
            f"| {f['other_cores']:.2f} | {ratio} |"
        )
    lines += [
        "",
        "events/s: events published over the window (MDL: `mdpipe_mdl_events_published_total`; naive: "
        "publishes completed). CPU µs/event and cores: the publisher process's user+system time "
        "(/proc/PID/stat); events/s per core = 10^6 / CPU µs per event. RabbitMQ: `beam.smp`. "
        "other: the rest of the machine (this script excluded).",
        "Nothing consumes the queues: each is bounded (x-message-ttl, x-max-length, x-max-length-bytes, "
        "drop-head), so RabbitMQ drops the oldest messages.",
    ]
    summary: dict[str, Any] = {}
    if mdl:
        p = phases["mdl"]
        d = p.detail
        lat = d["latency"]
        lines += [
            "",
            f"MDL: {fmt_int(p.events)} events published in {p.seconds:.1f} s "
            f"({'reached' if d['reached_target_events'] else 'SHORT OF'} --events {fmt_int(args.events)}); "
            f"per-poll rate {fmt_int(d['events_per_s_min'])}..{fmt_int(d['events_per_s_max'])} events/s.",
            f"- read: {fmt_int(d['events_sent_by_emulator'] / p.seconds)} events/s sent by the emulator, "
            f"{fmt_int(d['frames_read'] / p.seconds)} frames/s read "
            f"({d['events_routed'] / max(d['frames_read'], 1):.1f} events/frame), "
            f"{fmt_int(d['events_routed'] / p.seconds)} events/s routed.",
            f"- dropped frames: {_counts_text(d['dropped_frames'])}; dropped events: "
            f"{_counts_text(d['dropped_events'])}; malformed frames: {fmt_int(d['malformed_frames'])}; "
            f"reconnects: {_counts_text(d['reconnects'])}; hand-off at most "
            f"{fmt_int(d['handoff_frames_max'])} frames at the polls.",
            "- events/message by class: "
            + ", ".join(
                f"{cls} {n / d['messages_by_class'][cls]:.0f}"
                for cls, n in sorted(d["published_by_class"].items(), key=lambda kv: -kv[1])
                if d["messages_by_class"].get(cls)
            )
            + f" (MDL_BATCH_EVENTS {args.batch_events or 'default'}).",
        ]
        if lat:
            lines.append(
                f"- publish latency (MDL's histogram: from MDL's read of the frame to the message written, "
                f"so not the time frames wait unread in the socket): mean {lat['mean_ms']:.2f} ms, "
                f"p50 ≤ {lat['p50_le_ms']:g} ms, p99 ≤ {lat['p99_le_ms']:g} ms."
            )
        lines.append(
            f"- RabbitMQ {p.broker_cpu * p.seconds * 1e6 / max(p.messages, 1):.0f} µs CPU/message; emulator "
            f"{p.emulator_cpu * p.seconds * 1e6 / max(d['events_sent_by_emulator'], 1):.2f} µs CPU/event; "
            f"MDL RSS {p.rss_mb:.0f} MB."
        )
        ratio = mdl["events_per_s"] / base["events_per_s"] if base and base["events_per_s"] else None
        cpu_ratio = base["cpu_us_per_event"] / mdl["cpu_us_per_event"] if base and p.events else None
        checks = {
            "events_per_s": {
                "target": TARGET_EVENTS_PER_S, "measured": mdl["events_per_s"],
                "ok": mdl["events_per_s"] >= TARGET_EVENTS_PER_S,
            },
            "cpu_us_per_event": {
                "target": TARGET_US_PER_EVENT, "measured": mdl["cpu_us_per_event"],
                "ok": mdl["cpu_us_per_event"] <= TARGET_US_PER_EVENT,
            },
        }  # fmt: skip
        if ratio is not None:
            checks["ratio_vs_naive"] = {
                "target": TARGET_RATIO,
                "measured": ratio,
                "ok": ratio >= TARGET_RATIO,
            }
        summary["targets"] = checks
        summary["ratio_mdl_vs_naive_confirms"] = ratio
        summary["cpu_ratio_naive_confirms_vs_mdl"] = cpu_ratio
        if "naive-noconfirms" in figures and figures["naive-noconfirms"]["events_per_s"]:
            summary["ratio_mdl_vs_naive_noconfirms"] = (
                mdl["events_per_s"] / figures["naive-noconfirms"]["events_per_s"]
            )

        def verdict(key: str) -> str:
            return "met" if checks[key]["ok"] else "NOT met"

        lines += [
            "",
            "Targets (issue):",
            f"- ≥ {fmt_int(TARGET_EVENTS_PER_S)} events/s: {fmt_int(mdl['events_per_s'])} "
            f"at {mdl['cores']:.2f} cores: {verdict('events_per_s')}.",
            f"- ≤ {TARGET_US_PER_EVENT:g} µs CPU/event (the same on one whole core): "
            f"{mdl['cpu_us_per_event']:.2f} µs, i.e. {fmt_int(mdl['events_per_s_per_core'])} events/s "
            f"per core: {verdict('cpu_us_per_event')}.",
        ]
        if ratio is not None:
            lines.append(
                f"- ≥ {TARGET_RATIO:g}x the naive publisher (confirms): {ratio:,.1f}x the events/s "
                f"({cpu_ratio:,.1f}x less CPU per event): {verdict('ratio_vs_naive')}."
            )
        if "profile" in d:
            prof = d["profile"]
            if "error" in prof:
                lines.append(f"Profile: {prof['error']}")
            else:
                lines.append(
                    f"MDL profile (py-spy, {prof['samples']} samples after the window, share of busy):"
                )
                lines += [f"- {v * 100:4.1f}% {k}" for k, v in prof["categories"].items()]
    for name, f in figures.items():
        if name in NAIVE:
            d = phases[name].detail
            lines.append(
                f"{PHASES[name]}: {fmt_int(phases[name].events)} events in {phases[name].seconds:.1f} s, "
                f"RabbitMQ {f['broker_us_per_message']:.0f} µs CPU/message; "
                f"{fmt_int(d['frames_read'] / phases[name].seconds)} frames/s read."
            )
    lines += health_notes(
        ctx["processes"], figures, " (events/s most, CPU µs/event too: cores and caches are shared)"
    )
    print("\n".join(lines))
    return {
        "benchmark": "mdl_throughput",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "machine": machine_info(),
        "settings": {
            "events": args.events,
            "warmup": args.warmup,
            "max_seconds": args.max_seconds,
            "naive_seconds": args.naive_seconds,
            "poll": args.poll,
            "phases": list(phases),
            "pin": args.pin,
            "batch_events": args.batch_events,
            "symbols": args.symbols,
            "seed": args.seed,
            "start": args.start,
            "tick_ms": args.tick_ms,
            "frame_events": args.frame_events,
            "pool_events": args.pool_events,
            "market": args.market,
            "subscriptions": MARKET_SUBSCRIPTIONS[args.market],
            "exchange": ctx["exchange"],
            "naive_queue": ctx["naive_queue"],
            "queue_arguments": ctx["queue_arguments"],
            "rabbitmq_url": mask_url(args.rabbitmq_url),
            "redis_url": mask_url(args.redis_url),
            "redis_private": "redis" in ctx["processes"],
            "broker_pids": ctx["broker_pids"],
        },
        "processes": ctx["processes"],
        "cleanup": ctx.get("cleanup"),
        "phases": {
            name: {
                "label": PHASES[name],
                **p.figures(),
                "seconds": p.seconds,
                "events": p.events,
                "messages": p.messages,
                "detail": p.detail,
            }
            for name, p in phases.items()
        },
        **summary,
    }


def _json_safe(value: Any) -> Any:
    """NaN (a figure with nothing to divide by, a process gone) as null: strict JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# -- several markets in one run ----------------------------------------------------------------------


def parse_markets(parser: argparse.ArgumentParser, text: str, known) -> list[str]:
    """``--market stocks,options``: the markets in order, each known and at most once."""
    markets = [m.strip() for m in text.split(",") if m.strip()]
    if not markets or set(markets) - set(known) or len(set(markets)) != len(markets):
        parser.error(f"--market: known {', '.join(known)}, each at most once")
    return markets


def market_json(path: Path, market: str) -> Path:
    """Where a market's JSON goes: the stocks market's at ``path``, another's at ``<stem>.<market>.json``."""
    return path if market == MARKET else path.with_name(f"{path.stem}.{market}{path.suffix}")


def run_markets(name: str, args: argparse.Namespace, run, row, cleaned: str) -> int:
    """``run(args, results)`` for each market of ``args.markets`` in turn (its own JSON, see
    ``market_json``); with more than one, a table comparing them, ``row(data)`` giving each market's
    figures (``events/s per core`` among them), with the ratio of events/s per core to the first
    market's, on stdout and in ``<stem>.markets.json``."""
    results: dict[str, Any] = {}
    status = 0
    for market in args.markets:
        one = argparse.Namespace(**vars(args))  # a run may change its copy (a private Redis's URL)
        one.market, one.json = market, market_json(args.json, market)
        if len(args.markets) > 1:
            print(f"\n## {market}\n", flush=True)
        code = guarded(name, lambda one=one: run(one, results), cleaned)
        status = max(status, code)
        if code == 130:
            return code
    if len(args.markets) < 2 or not results:
        return status
    rows = {market: row(data) for market, data in results.items()}
    first = next(iter(rows))
    base = rows[first]["events/s per core"]
    headers = list(rows[first])
    lines = [
        "",
        f"{name}: markets compared ({os.cpu_count()} CPUs)",
        "",
        "| market | " + " | ".join(headers) + f" | events/s per core vs {first} |",
        "| --- |" + " ---: |" * (len(headers) + 1),
    ]
    for market, figures in rows.items():
        ratio = figures["events/s per core"] / base if base else float("nan")
        figures["ratio_per_core"] = ratio
        cells = [fmt_int(v) if abs(v) >= 100 else f"{v:.2f}" for k, v in figures.items() if k in headers]
        lines.append(f"| {market} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    print("\n".join(lines))
    path = args.json.with_name(f"{args.json.stem}.markets{args.json.suffix}")
    doc = {"benchmark": name, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": [Path(sys.argv[0]).name, *sys.argv[1:]], "markets": rows,
           "json": {m: str(market_json(args.json, m)) for m in results}}  # fmt: skip
    path.write_text(json.dumps(_json_safe(doc), indent=2) + "\n")
    print(f"\nJSON: {path}")
    return status


def market_row(data: dict[str, Any]) -> dict[str, float]:
    """MDL's figures in one market's run, for the comparison of markets."""
    f = data["phases"].get("mdl")
    if f is None:
        return {"events/s per core": 0.0}
    d = f["detail"]
    return {
        "events/s": f["events_per_s"],
        "CPU µs/event": f["cpu_us_per_event"],
        "cores": f["cores"],
        "events/s per core": f["events_per_s_per_core"],
        "events/message": f["events_per_message"],
        "bytes/event (wire)": d["bytes_sent_by_emulator"] / max(d["events_sent_by_emulator"], 1),
        "events/frame": d["events_routed"] / max(d["frames_read"], 1),
        "RabbitMQ cores": f["broker_cores"],
    }


# -- orchestration -------------------------------------------------------------------------------------


def run_bench(args: argparse.Namespace, results: dict[str, Any] | None = None) -> int:
    """One market's run; its JSON document also goes into ``results[args.market]`` when given."""
    signal.signal(signal.SIGTERM, terminate)
    began = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - began:5.1f}s] {message}", file=sys.stderr, flush=True)

    from mdq import topology

    exchange = f"bench-{os.getpid()}"
    ctx: dict[str, Any] = {
        "exchange": exchange,
        "naive_queue": f"{exchange}.naive",
        "queue_arguments": topology.queue_arguments(mdq_settings()),
        "broker_pids": broker_pids(args.rabbitmq_url),
        "processes": {},
    }
    if "mdl" in args.phases and args.redis_url:
        desired = redis_desired_state(args.redis_url, args.market)
        if desired is not None:
            raise RuntimeError(
                f"Redis {mask_url(args.redis_url)} holds a desired state for the {args.market} listener "
                f"({desired[:200]}) that would override the bench's subscriptions: use another --redis-url "
                "database"
            )
    phases: dict[str, Phase] = {}
    sim_port, sim_http = free_port(), free_port()
    ctx["sim_port"] = sim_port
    env = child_env({
        "SIM_API_KEY": API_KEY, "SIM_PORT": str(sim_port), "SIM_HTTP_PORT": str(sim_http), "SIM_RATE": "0",
        "SIM_START": args.start, "SIM_SEED": str(args.seed), "SIM_SYMBOLS": str(args.symbols),
        "SIM_TICK_MS": str(args.tick_ms), "SIM_FRAME_EVENTS": str(args.frame_events),
        "SIM_POOL_EVENTS": str(args.pool_events), "SIM_MARKET": args.market,
    })  # fmt: skip
    emulator = Child("emulator", [sys.executable, "-m", "mdpipe", "sim"], env, http_port=sim_http)
    ctx["processes"]["emulator"] = {"argv": ["python", "-m", "mdpipe", "sim"], "env": public_env(env)}
    declared = False
    redis_server: Child | None = None
    try:
        if "mdl" in args.phases and not args.redis_url:
            redis_server, args.redis_url = start_private_redis()
            ctx["processes"]["redis"] = {"argv": redis_server.argv, "env": {}}
        emulator.start(1 if args.pin else None)
        if any(p in NAIVE for p in args.phases):
            asyncio.run(_declare_naive_queue(args.rabbitmq_url, ctx["naive_queue"]))
            declared = True
        emulator.wait_ready()
        ctx["processes"]["emulator"]["ready_after_s"] = round(emulator.ready_s, 2)
        progress(
            f"emulator ready after {emulator.ready_s:.1f}s "
            f"(flat-out pool of {fmt_int(args.pool_events)} events)"
        )
        for name in args.phases:
            if name == "mdl":
                declared = True  # MDL declares its exchange and queues
                phase = measure_mdl(args, ctx, emulator, progress)
            else:
                phase = measure_naive(name, args, ctx, emulator, progress)
            phases[name] = phase
            f = phase.figures()
            progress(
                f"{name}: {fmt_int(f['events_per_s'])} events/s, {f['cpu_us_per_event']:.2f} µs CPU/event, "
                f"{f['cores']:.2f} cores over {phase.seconds:.1f}s"
            )
    finally:
        emulator.stop()
        ctx["processes"]["emulator"]["log_lines"] = emulator.log_lines()
        emulator.close()
        if redis_server is not None:
            redis_server.close()
        if declared:  # after every publisher is gone: a live MDL would declare them again
            queues = [*topology.queue_names(exchange, 1), ctx["naive_queue"]]
            try:
                ctx["cleanup"] = asyncio.run(_delete(args.rabbitmq_url, exchange, queues))
            except Exception as exc:
                ctx["cleanup"] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"mdl_throughput: could not delete {exchange}* ({exc})", file=sys.stderr)
    progress("done")
    data = report(args, phases, ctx)
    if results is not None:
        results[args.market] = data
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_json_safe(data), indent=2) + "\n")
    print(f"\nJSON: {args.json}")
    empty = [name for name, p in phases.items() if p.events <= 0]
    if empty:
        print(f"mdl_throughput: nothing published by {', '.join(empty)}", file=sys.stderr)
        return 1
    if args.strict and not all(c["ok"] for c in data.get("targets", {}).values()):
        return 1
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mdpipe.settings import SimSettings, parse_start

    defaults = SimSettings.model_fields
    parser = argparse.ArgumentParser(
        prog="python bench/mdl_throughput.py",
        description=__doc__.split("\n\n")[0],
        epilog="Writes a Markdown table to stdout, progress to stderr, and JSON to --json. Exit status 1 "
        "if a phase published nothing or failed (and with --strict, if a target is missed).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--market", default=MARKET,
                        help="the emulator's market (SIM_MARKET) and MDL's (MASSIVE_MARKET), or several "
                        "comma-separated, run one after the other and compared: "
                        + ", ".join(MARKET_SUBSCRIPTIONS))  # fmt: skip
    parser.add_argument("--events", type=int, default=2_000_000,
                        help="events MDL must publish in its measured window")  # fmt: skip
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="MDL's window ends here even short of --events")  # fmt: skip
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds between a publisher's first publish and its window")  # fmt: skip
    parser.add_argument("--naive-seconds", type=float, default=10.0, help="each naive publisher's window")
    parser.add_argument(
        "--poll", type=float, default=0.5, help="seconds between two scrapes of MDL's /metrics"
    )
    parser.add_argument("--phases", default="mdl,naive-confirms,naive-noconfirms",
                        help=f"comma-separated, in order: {', '.join(PHASES)}")  # fmt: skip
    parser.add_argument("--batch-events", type=int, default=0,
                        help="MDL_BATCH_EVENTS for MDL (0: its default)")  # fmt: skip
    parser.add_argument("--pin", action="store_true",
                        help="publisher (MDL or naive) on CPU 0, emulator on CPU 1")  # fmt: skip
    parser.add_argument("--py-spy", type=float, default=0.0, metavar="SECONDS",
                        help="after MDL's window, profile MDL with py-spy this long (0: not)")  # fmt: skip
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target of the issue is missed")
    parser.add_argument("--rabbitmq-url", default=argparse.SUPPRESS,
                        help=f"RabbitMQ (default: $RABBITMQ_URL, else {DEFAULT_RABBITMQ_URL})")  # fmt: skip
    parser.add_argument("--redis-url", default="",
                        help="Redis for MDL's control loop (default: a private redis-server)")  # fmt: skip
    parser.add_argument("--symbols", type=int, default=defaults["sim_symbols"].default, help="SIM_SYMBOLS")
    parser.add_argument("--seed", type=int, default=defaults["sim_seed"].default, help="SIM_SEED")
    parser.add_argument("--start", default=START, help="SIM_START: the market clock, fixed")
    parser.add_argument("--tick-ms", type=int, default=defaults["sim_tick_ms"].default, help="SIM_TICK_MS")
    parser.add_argument("--frame-events", type=int, default=defaults["sim_frame_events"].default,
                        help="SIM_FRAME_EVENTS")  # fmt: skip
    parser.add_argument("--pool-events", type=int, default=defaults["sim_pool_events"].default,
                        help="SIM_POOL_EVENTS")  # fmt: skip
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    parser.add_argument("--naive-child", choices=("confirms", "noconfirms"), help=argparse.SUPPRESS)
    parser.add_argument("--feed", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    parser.add_argument("--counters", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.naive_child:
        return args
    args.markets = parse_markets(parser, args.market, MARKET_SUBSCRIPTIONS)
    args.market = args.markets[0]
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
    if (
        args.events < 1
        or args.max_seconds <= 0
        or args.naive_seconds <= 0
        or args.warmup < 0
        or args.poll <= 0
    ):
        parser.error("--events, --max-seconds, --naive-seconds and --poll must be positive, --warmup >= 0")
    if args.batch_events < 0 or args.py_spy < 0:
        parser.error("--batch-events and --py-spy must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.naive_child:
        return naive_child(args)
    return run_markets(
        "mdl_throughput", args, run_bench, market_row, "processes stopped, bench exchange and queues deleted"
    )


if __name__ == "__main__":
    sys.exit(main())
