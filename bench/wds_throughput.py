"""How many updates per second one WDS process (``mdpipe wds``) delivers to K WebSocket clients, at what
CPU cost per delivery and latency, and what an idle connection costs in memory, against a naive gateway
that sends every update to each subscribed client in turn.

What is measured
----------------
Redis (``--redis-url``, database 14 of the local server) gets real MDC updates on ``--channels`` channels
``stats.B0`` .. ``stats.B<C-1>``: a publisher thread of the bench runs, ``--rate`` times a second spread
evenly over the channels, a Lua script doing what the processors' scripts do (``HINCRBY`` of the channel's
``seq``, ``SET`` of its state, ``PUBLISH`` of the MDC envelope ``{"type","channel","seq","ts","sent","src",
"data"}``) under ``MDC_PREFIX=bench-<random>``. The script stamps the update's data with Redis's clock
(``TIME``, µs, field ``p``): the latency is from that publish to the client's receive (``time.time_ns``
when ``recv`` returned; same machine, same clock).

Then, one after the other, each gateway in a child process of its own:

- ``idle``: a fresh ``mdpipe wds``; a warm-up of 200 connections comes and goes, its RSS is read (0
  clients), then ``--idle`` connections (default 10,000; client processes of 5,000 each) authenticate
  (``?token=``) and subscribe to one channel each, no update flowing; RSS again: (after - before) /
  connections = memory per idle connection (user space: the kernel's socket buffers are not in RSS);
- ``wds``: a fresh ``mdpipe wds`` (``WDS_CONNECTIONS_PER_TOKEN``, ``WDS_ACTIONS_PER_S`` and
  ``WDS_MAX_SUBSCRIPTIONS`` raised, every other ``WDS_*``/``MDC_*`` at its default, ``LOG_LEVEL=WARNING``)
  and ``--clients`` clients (``--client-procs`` processes, separate from the gateway), each subscribed
  to ``--per-client`` channels (client i: channels i*S .. i*S+S-1 modulo C, so every channel has
  K*S/C subscribers); offered deliveries/s = rate x K*S/C;
- ``naive``: a baseline written in this file (not product code): a ``websockets`` server that accepts
  any token, answers ``subscribe`` with ``subscribed`` (no snapshot), and on every Redis message
  (``redis.asyncio`` pub/sub on ``<prefix>:*``) builds the ``update`` event once and awaits
  ``ws.send`` for each subscribed client in turn: no conflation, no batching, no writer per client.

The clients are ``websockets`` asyncio clients on uvloop that parse only what they must: deliveries are
counted with ``bytes.count(b'"event":"update"')`` on each message, conflated ones with
``'"conflated":true'``; every ``--sample-every``-th message of the window is parsed for the latency of
each update in it. After the clients are subscribed the publisher starts; ``--warmup`` s later the
window opens, ``--seconds`` long. Figures over the window: deliveries/s received by the clients, the
gateway's CPU (``/proc/PID/stat``) per delivery, per message and in cores, p50/p99 latency, conflated
share, messages per second and updates per message, the gateway's RSS at the end; the clients' CPU,
Redis's (``INFO cpu``, server-wide) and the rest of the machine are shown so that a client-bound run is
seen as one.
WDS's own ``/metrics`` (deliveries, messages, conflated) are read at both ends of the window as a check.

``--py-spy S``: after the wds window, S seconds of py-spy on WDS under the same load, summarized (where
its CPU goes); raw samples in ``bench/results/wds_throughput.py-spy.folded``.

Children are stopped and every key under the prefix deleted at the end, whatever happens (but not when
the bench is killed with SIGKILL: delete ``bench-<random>*`` by hand).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pyspy
from mdl_throughput import _json_safe, fmt_int, machine_info, scrape, total
from mdp_throughput import delete_keys, redis_reading
from procs import (
    ROOT,
    Child,
    SharedInts,
    child_env,
    free_port,
    guarded,
    health_notes,
    machine_busy,
    own_cpu,
    proc_cpu,
    public_env,
    terminate,
)

from mdpipe.settings import mask_url

DEFAULT_JSON = ROOT / "bench" / "results" / "wds_throughput.json"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
SYMBOL = "B"  # channels stats.B0 .. stats.B<C-1>
SECRET_BYTES = 32  # the bench's HS256 secret: 64 hex characters
TOKEN_TTL_S = 3600
IDLE_PER_PROCESS = 5000  # idle connections per client process
WARMUP_CONNECTIONS = 200  # come and go before the idle phase's first RSS reading
CONNECT_CONCURRENCY = 100  # handshakes in flight per client process
READY_TIMEOUT_S = 60.0
STALL_S = 15.0  # no new subscribed client this long: the phase goes on with those it has
PUBLISH_TICK_S = 0.002
PUBLISH_MAX_BATCH = 500

# The targets.
TARGET_DELIVERIES_PER_S = 100_000
TARGET_IDLE_CONNECTIONS = 10_000
TARGET_IDLE_KB = 20.0

GATEWAYS = {"wds": "WDS (`mdpipe wds`)", "naive": "naive: send to each client in turn"}

# Shared counters (mmap of int64): a header (the window flag), then one slot per client process.
HEADER = 8
FLAG = 0  # 0: warming up, 1: window (sample latencies), 2: dump samples and exit
FIELDS = ("connected", "subscribed", "updates", "conflated", "messages", "bytes", "closed", "failed")
SLOT = len(FIELDS)
F = {name: i for i, name in enumerate(FIELDS)}

# As mdp/lua/prelude.lua publishes (seq, state, update in one atomic step); the data gets Redis's clock.
PUBLISH_LUA = """
local seq = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local t = redis.call('TIME')
local us = string.sub('000000' .. t[2], -6)
local ms = t[1] .. string.sub(us, 1, 3)
local doc = '{"sym":"' .. ARGV[2] .. '","n":' .. seq .. ',' .. ARGV[3] .. ',"p":' .. t[1] .. us .. '}'
redis.call('SET', KEYS[2], doc)
redis.call('PUBLISH', KEYS[3], '{"type":"stats","channel":"' .. ARGV[1] .. '","seq":' .. seq ..
  ',"ts":' .. ms .. ',"sent":' .. ms .. ',"src":"bench","data":' .. doc .. '}')
return seq
"""
# The rest of a day-stats document, so updates weigh what real ones do (about 300 bytes on the wire).
STATS_FIELDS = (
    '"last":190.57,"open":189.12,"high":191.24,"low":188.73,"prev_close":188.95,"volume":12345678,'
    '"trades":45678,"vwap":190.11,"change":1.62,"change_pct":0.857,"gap_pct":0.09,"t":1763649000123'
)

# py-spy frames -> what WDS spends its time on (the first rule matching from the leaf up wins).
PROFILE_RULES = (
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    (
        "outbox and session: offer, conflate, take (wds/outbox.py, wds/session.py, wds/conflation.py)",
        ("wds/outbox.py", "wds/session.py", "wds/conflation.py"),
    ),
    (
        "protocol and frames: update_frame, framing (wds/protocol.py, wds/frames.py)",
        ("wds/protocol.py", "wds/frames.py"),
    ),
    ("websockets: framing and send (websockets/)", ("websockets/",)),
    ("redis-py: pub/sub read and parse (redis/)", ("redis/",)),
    ("subscriber: queue and dispatch (mdc/subscriber.py)", ("mdc/subscriber.py",)),
    ("fan-out loop (Gateway._on_update)", ("_on_update (",)),
    ("flush to the clients (wds/writer.py)", ("wds/writer.py",)),
    ("mdc wire: pub/sub read and parse (mdc/wire.py)", ("mdc/wire.py",)),
    ("gateway, other (wds/server.py)", ("wds/server.py",)),
    ("asyncio", ("asyncio/",)),
)


# -- shared counters ---------------------------------------------------------------------------------------


class Counters(SharedInts):
    """The counters file: the bench creates it, client processes open it by path, both read and write."""

    def __init__(self, slots: int, path: str | None = None) -> None:
        super().__init__(HEADER + SLOT * max(slots, 1), path)
        self.slots = slots

    def flag(self, value: int) -> None:
        self.view[FLAG] = value

    def slot(self, i: int) -> dict[str, int]:
        base = HEADER + SLOT * i
        return {name: self.view[base + k] for k, name in enumerate(FIELDS)}

    def sums(self) -> dict[str, int]:
        out = dict.fromkeys(FIELDS, 0)
        for i in range(self.slots):
            for k, v in self.slot(i).items():
                out[k] += v
        return out


# -- the client processes ------------------------------------------------------------------------------


def client_child(args: argparse.Namespace) -> int:
    """``--client-child``: ``--clients`` connections (global indexes from ``--first``), each subscribed to
    ``--per-client`` channels; counts what arrives into slot ``--slot`` of the counters file, samples
    latencies while the window flag is 1, writes them to ``--samples`` and exits when it is 2."""
    import asyncio

    import orjson
    import uvloop
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    counters = Counters(args.slots, args.counters)
    view = counters.view
    base = HEADER + SLOT * args.slot
    c_sub, c_upd, c_cfl = base + F["subscribed"], base + F["updates"], base + F["conflated"]
    c_msg, c_bytes, c_closed = base + F["messages"], base + F["bytes"], base + F["closed"]
    samples: list[int] = []  # µs from publish to receive
    close_codes: collections.Counter[str] = collections.Counter()
    every = args.sample_every
    n_channels, per = args.channels, args.per_client
    update_tag, conflated_tag, subscribed_tag = (
        b'"event":"update"',
        b'"conflated":true',
        b'"event":"subscribed"',
    )

    async def one(i: int, gate: asyncio.Semaphore) -> None:
        channels = [f"stats.{SYMBOL}{(i * per + j) % n_channels}" for j in range(per)]
        seen = 0
        try:
            async with gate:
                ws = await connect(
                    args.url,
                    compression=None,
                    max_size=None,
                    ping_interval=None,
                    open_timeout=60,
                    close_timeout=1,
                    user_agent_header=None,
                )
                view[base + F["connected"]] += 1
                await ws.send(orjson.dumps({"action": "subscribe", "channels": channels, "id": 1}).decode())
                while True:
                    msg = await ws.recv(decode=False)
                    n = msg.count(update_tag)
                    if n:
                        view[c_upd] += n
                        view[c_cfl] += msg.count(conflated_tag)
                    if subscribed_tag in msg:
                        break
            view[c_sub] += 1
            while True:
                msg = await ws.recv(decode=False)
                seen += 1
                view[c_msg] += 1
                view[c_bytes] += len(msg)
                n = msg.count(update_tag)
                if n:
                    view[c_upd] += n
                    c = msg.count(conflated_tag)
                    if c:
                        view[c_cfl] += c
                    if view[FLAG] == 1 and seen % every == 0:
                        now_us = time.time_ns() // 1000
                        for event in orjson.loads(msg):
                            if event.get("event") == "update":
                                samples.append(now_us - event["data"]["p"])
        except ConnectionClosed as exc:
            view[c_closed] += 1
            close_codes[str(exc.rcvd.code if exc.rcvd else "none")] += 1
        except Exception as exc:  # counted; the others go on
            view[base + F["failed"]] += 1
            close_codes[type(exc).__name__] += 1

    async def main() -> None:
        gate = asyncio.Semaphore(args.concurrency)
        tasks = [asyncio.create_task(one(args.first + k, gate)) for k in range(args.clients)]
        while view[FLAG] != 2:  # noqa: ASYNC110 - a flag in shared memory, set by the bench process
            await asyncio.sleep(0.02)
        for t in tasks:
            t.cancel()

    uvloop.run(main())
    Path(args.samples).write_text(json.dumps({"latency_us": samples, "close_codes": close_codes}))
    counters.close()
    sys.stdout.flush()
    os._exit(0)  # thousands of sockets: the kernel closes them at once, no close handshake each


# -- the naive gateway (a child process) ------------------------------------------------------------------


def naive_child(args: argparse.Namespace) -> int:
    """``--naive-child``: a WebSocket server on ``--port``; every Redis message under ``--prefix`` is sent
    to each client subscribed to its channel, one awaited ``send`` after the other."""
    import asyncio

    import orjson
    from redis.asyncio import Redis
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    from mdc.names import Names
    from mdpipe import runtime

    names = Names(args.prefix)
    prefix = args.prefix + ":"
    subs: dict[str, set[ServerConnection]] = {}

    async def handler(ws: ServerConnection) -> None:
        mine: list[str] = []
        try:
            async for frame in ws:
                try:
                    action = orjson.loads(frame)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(action, dict):
                    continue
                if action.get("action") == "subscribe":
                    channels = [c for c in action.get("channels") or [] if isinstance(c, str)]
                    for c in channels:
                        subs.setdefault(c, set()).add(ws)
                        mine.append(c)
                    reply = {"event": "subscribed", "id": action.get("id"), "channels": channels}
                    await ws.send(orjson.dumps([reply]).decode())
                elif action.get("action") == "ping":
                    await ws.send(orjson.dumps([{"event": "pong", "id": action.get("id")}]).decode())
        except ConnectionClosed:
            pass
        finally:
            for c in mine:
                subs.get(c, set()).discard(ws)

    async def fan_out(pubsub) -> None:
        async for msg in pubsub.listen():
            if msg["type"] != "pmessage":
                continue
            data = b'[{"event":"update",' + msg["data"][1:] + b"]"
            for ws in list(subs.get(names.channel_of(msg["channel"]), ())):  # md:stats.{A} -> stats.A
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(data, text=True)

    async def main(stop: asyncio.Event) -> int:
        redis = Redis.from_url(os.environ["REDIS_URL"])
        pubsub = redis.pubsub()
        await pubsub.psubscribe(prefix + "*")
        try:
            async with serve(handler, "127.0.0.1", args.port, compression=None, max_size=2**20):
                task = asyncio.create_task(fan_out(pubsub))
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            with contextlib.suppress(Exception):
                await redis.aclose()
        return 0

    return runtime.serve(main)


# -- the publisher (a thread of the bench) -------------------------------------------------------------


class Publisher(threading.Thread):
    """``rate`` updates a second, round robin over the channels, pipelined every couple of ms."""

    def __init__(self, rclient, prefix: str, channels: int, rate: float) -> None:
        super().__init__(name="publisher", daemon=True)
        from mdc.names import Names

        names = Names(prefix)
        self.rclient, self.rate = rclient, rate
        self.sha = rclient.script_load(PUBLISH_LUA)
        self.calls = []
        for i in range(channels):
            sym = f"{SYMBOL}{i}"
            channel = f"stats.{sym}"
            keys = (names.seq_key(channel), names.stats(sym), names.redis_channel(channel))
            self.calls.append((*keys, channel, sym, STATS_FIELDS))
        self.published = 0
        self.error: str | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        calls, n_calls, sha = self.calls, len(self.calls), self.sha
        started = time.perf_counter()
        try:
            while not self.stop_event.is_set():
                due = int((time.perf_counter() - started) * self.rate)
                n = min(due - self.published, PUBLISH_MAX_BATCH)
                if n <= 0:
                    self.stop_event.wait(PUBLISH_TICK_S)
                    continue
                pipe = self.rclient.pipeline(transaction=False)
                for k in range(self.published, self.published + n):
                    pipe.evalsha(sha, 3, *calls[k % n_calls])
                pipe.execute()
                self.published += n
        except Exception as exc:  # reported by the bench
            self.error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


# -- gateways and clients -----------------------------------------------------------------------------


def component_env(extra: dict[str, str]) -> dict[str, str]:
    """``child_env`` without any ``WDS_*``/``MDC_*`` of the caller either: the defaults, then ours."""
    env = {k: v for k, v in child_env({}).items() if not k.startswith(("WDS_", "MDC_"))}
    env.update(extra)
    return env


def shown_env(env: dict[str, str]) -> dict[str, str]:
    out = public_env(env)
    for k, v in env.items():
        if k.startswith(("WDS_", "MDC_")):
            out[k] = "***" if "SECRET" in k else v
    return out


def start_wds(
    ctx: dict[str, Any], name: str, max_subscriptions: int, extra: dict[str, str] | None = None
) -> Child:
    """A fresh ``mdpipe wds`` on free ports, ready; ``extra``: settings of the caller's on top."""
    port, http_port = free_port(), free_port()
    env = component_env(
        {
            "WDS_PORT": str(port),
            "WDS_HTTP_PORT": str(http_port),
            "REDIS_URL": ctx["redis_url"],
            "MDC_PREFIX": ctx["prefix"],
            "WDS_TOKEN_SECRET": ctx["secret"],
            "WDS_CONNECTIONS_PER_TOKEN": "100000",
            "WDS_ACTIONS_PER_S": "10000",
            "WDS_MAX_SUBSCRIPTIONS": str(max(500, max_subscriptions)),
            "WDS_INSTANCE": f"{ctx['prefix']}-{name}",
            "LOG_LEVEL": "WARNING",
            **(extra or {}),
        }
    )
    child = Child(name, [sys.executable, "-m", "mdpipe", "wds"], env, http_port=http_port, port=port)
    ctx["processes"][name] = {"argv": ["python", "-m", "mdpipe", "wds"], "env": shown_env(env)}
    child.start()
    child.wait_ready()
    return child


def start_naive(ctx: dict[str, Any]) -> Child:
    port = free_port()
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--naive-child",
        "--port",
        str(port),
        "--prefix",
        ctx["prefix"],
    ]
    env = component_env({"REDIS_URL": ctx["redis_url"]})
    child = Child("naive", argv, env, port=port)
    ctx["processes"]["naive"] = {"argv": ["python", Path(__file__).name, *argv[2:]], "env": shown_env(env)}
    child.start()
    child.wait_ready()
    return child


class Clients:
    """Client processes sharing one counters file; ``stop()`` ends them and gathers their samples."""

    def __init__(self, url: str, clients: int, procs: int, per_client: int, channels: int, sample_every: int):
        self.procs: list[Child] = []
        self.samples: list[str] = []
        self.total = clients
        procs = max(1, min(procs, clients))
        self.counters = Counters(procs)
        self.result: dict[str, Any] = {"latency_us": [], "close_codes": {}}
        share, extra = divmod(clients, procs)
        first = 0
        for i in range(procs):
            n = share + (1 if i < extra else 0)
            fd, samples = tempfile.mkstemp(prefix="wds-bench-", suffix=".samples")
            os.close(fd)
            self.samples.append(samples)
            argv = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--client-child",
                "--url",
                url,
                "--clients",
                str(n),
                "--first",
                str(first),
                "--per-client",
                str(per_client),
                "--channels",
                str(channels),
                "--sample-every",
                str(sample_every),
                "--slot",
                str(i),
                "--slots",
                str(procs),
                "--counters",
                self.counters.path,
                "--samples",
                samples,
                "--concurrency",
                str(CONNECT_CONCURRENCY),
            ]
            self.procs.append(Child(f"clients-{i}", argv, child_env({})).start())
            first += n

    def sums(self) -> dict[str, int]:
        return self.counters.sums()

    def cpu(self) -> float:
        return sum(proc_cpu(c.pid) for c in self.procs)

    def rss_mb(self) -> float:
        return sum(c.rss_mb() for c in self.procs)

    def alive(self) -> None:
        for c in self.procs:
            c.alive()

    def wait_subscribed(self, want: int, progress, label: str) -> int:
        """Until ``want`` clients are subscribed, or none more for ``STALL_S``; how many are."""
        last, since, shown = -1, time.monotonic(), time.monotonic()
        while True:
            self.alive()
            s = self.sums()
            if s["subscribed"] >= want:
                return s["subscribed"]
            if s["subscribed"] != last:
                last, since = s["subscribed"], time.monotonic()
            elif time.monotonic() - since > STALL_S:
                progress(
                    f"{label}: {s['subscribed']} of {want} clients subscribed, no progress for "
                    f"{STALL_S:.0f}s ({s['failed']} failed, {s['closed']} closed); going on"
                )
                return s["subscribed"]
            if time.monotonic() - shown > 5:
                shown = time.monotonic()
                progress(f"{label}: {s['subscribed']} of {want} subscribed")
            time.sleep(0.05)

    def window(self, value: int) -> None:
        self.counters.flag(value)

    def stop(self) -> dict[str, Any]:
        self.counters.flag(2)
        for c in self.procs:
            if c.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(15)
        codes: collections.Counter[str] = collections.Counter()
        for path in self.samples:
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(Path(path).read_text() or "{}")
                self.result["latency_us"].extend(data.get("latency_us", []))
                codes.update(data.get("close_codes", {}))
        self.result["close_codes"] = dict(codes)
        self.result["log_lines"] = [line for c in self.procs for line in c.log_lines()[:5]]
        return self.result

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.counters.flag(2)
        for c in self.procs:
            c.close()
        for path in self.samples:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.counters.close()


def ws_url(port: int, token: str) -> str:
    return f"ws://127.0.0.1:{port}/ws?token={token}"


def wds_counts(http_port: int | None) -> dict[str, float]:
    m = scrape(http_port)
    names = ("deliveries", "messages_out", "bytes_out", "conflated", "updates_in", "dropped")
    out = {k: total(m, f"mdpipe_wds_{k}_total") for k in names}
    out["connections"] = total(m, "mdpipe_wds_connections")
    out["ok"] = bool(m)
    return out


# -- the load phases ---------------------------------------------------------------------------------------


@dataclass
class Reading:
    wall: float
    gateway: float
    clients: float
    bench: float
    redis: float
    busy: float
    published: int
    counts: dict[str, int]
    metrics: dict[str, float]


def reading(gw: Child, clients: Clients, rclient, publisher: Publisher, http_port: int | None) -> Reading:
    busy, _ = machine_busy()
    return Reading(
        wall=time.perf_counter(),
        gateway=gw.cpu_seconds(),
        clients=clients.cpu(),
        bench=own_cpu(),
        redis=redis_reading(rclient).cpu,
        busy=busy,
        published=publisher.published,
        counts=clients.sums(),
        metrics=wds_counts(http_port) if http_port else {},
    )


def percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return float(s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))])


@dataclass
class Load:
    name: str
    seconds: float
    subscribed: int
    deliveries: int
    conflated: int
    messages: int
    bytes: int
    published: int
    cores: float
    client_cores: float
    bench_cores: float
    redis_cores: float
    other_cores: float
    rss_mb: float
    latency_us: list[int] = field(repr=False)
    offered_updates: float = 0.0
    offered_deliveries: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> dict[str, float]:
        s, d = self.seconds, self.deliveries
        us = self.cores * s * 1e6 / d if d else float("nan")
        lat = self.latency_us
        return {
            "clients": self.subscribed,
            "offered_updates_per_s": self.offered_updates,
            "offered_deliveries_per_s": self.offered_deliveries,
            "published_per_s": self.published / s,
            "deliveries_per_s": d / s,
            "cpu_us_per_delivery": us,
            "cpu_us_per_message": self.cores * s * 1e6 / self.messages if self.messages else float("nan"),
            "deliveries_per_s_per_core": 1e6 / us if d and us else 0.0,
            "cores": self.cores,
            "latency_p50_ms": percentile(lat, 0.50) / 1000,
            "latency_p99_ms": percentile(lat, 0.99) / 1000,
            "latency_max_ms": max(lat) / 1000 if lat else float("nan"),
            "latency_samples": len(lat),
            "conflated_share": self.conflated / d if d else 0.0,
            "messages_per_s": self.messages / s,
            "updates_per_message": d / self.messages if self.messages else 0.0,
            "mb_per_s": self.bytes / s / 1e6,
            "client_cores": self.client_cores,
            "bench_cores": self.bench_cores,
            "redis_cores": self.redis_cores,
            "other_cores": self.other_cores,
            "rss_mb": self.rss_mb,
        }


def measure_load(name: str, args, ctx: dict[str, Any], rclient, progress) -> Load:
    gw: Child | None = None
    clients: Clients | None = None
    publisher: Publisher | None = None
    profile: dict[str, Any] | None = None
    try:
        if name == "wds":
            gw = start_wds(ctx, "wds", args.per_client)
            http_port = gw.http_port
        else:
            gw = start_naive(ctx)
            http_port = None
        assert gw.port is not None
        progress(f"{name}: ready after {gw.ready_s:.1f}s; {args.clients} clients connecting")
        clients = Clients(
            ws_url(gw.port, ctx["token"]),
            args.clients,
            args.client_procs,
            args.per_client,
            args.channels,
            args.sample_every,
        )
        subscribed = clients.wait_subscribed(args.clients, progress, name)
        if subscribed == 0:
            raise RuntimeError(f"{name}: no client subscribed:\n{gw.log_tail()}")
        time.sleep(0.5)  # the snapshots out of the way
        publisher = Publisher(rclient, ctx["prefix"], args.channels, args.rate)
        publisher.start()
        time.sleep(args.warmup)
        gw.alive()
        r0 = reading(gw, clients, rclient, publisher, http_port)
        clients.window(1)
        time.sleep(args.seconds)
        clients.window(0)
        r1 = reading(gw, clients, rclient, publisher, http_port)
        gw.alive()
        rss = gw.rss_mb()
        client_rss = clients.rss_mb()
        if name == "wds" and args.py_spy:
            profile = run_py_spy(
                gw.pid, args.py_spy, args.json.with_name(args.json.stem + ".py-spy.folded"), progress
            )
        publisher.stop()
        if publisher.error:
            raise RuntimeError(f"publisher: {publisher.error}")
        result = clients.stop()
    finally:
        if publisher is not None:
            publisher.stop()
        if clients is not None:
            clients.close()
        if gw is not None:
            gw.stop()
            logged = gw.log_lines()
            ctx["processes"][name]["log_lines"] = logged[:20]
            ctx["processes"][name]["redis_reconnects"] = sum("redis connection lost" in x for x in logged)
            gw.close()
    dt = r1.wall - r0.wall
    c0, c1 = r0.counts, r1.counts
    cores = (r1.gateway - r0.gateway) / dt
    client_cores = (r1.clients - r0.clients) / dt
    bench_cores = (r1.bench - r0.bench) / dt
    redis_cores = (r1.redis - r0.redis) / dt
    busy = (r1.busy - r0.busy) / dt
    per_channel = args.clients * args.per_client / args.channels
    load = Load(
        name=name,
        seconds=dt,
        subscribed=subscribed,
        deliveries=c1["updates"] - c0["updates"],
        conflated=c1["conflated"] - c0["conflated"],
        messages=c1["messages"] - c0["messages"],
        bytes=c1["bytes"] - c0["bytes"],
        published=r1.published - r0.published,
        cores=cores,
        client_cores=client_cores,
        bench_cores=bench_cores,
        redis_cores=redis_cores,
        other_cores=max(0.0, busy - cores - client_cores - bench_cores - redis_cores),
        rss_mb=rss,
        latency_us=result["latency_us"],
        offered_updates=args.rate,
        offered_deliveries=args.rate * per_channel,
    )
    load.detail = {
        "subscribers_per_channel": per_channel,
        "client_rss_mb": client_rss,
        "closed": c1["closed"],
        "failed": c1["failed"],
        "close_codes": result["close_codes"],
        "client_log_lines": result["log_lines"],
    }
    if r0.metrics.get("ok") and r1.metrics.get("ok"):
        load.detail["wds_metrics"] = {
            k: (r1.metrics[k] - r0.metrics[k]) / dt
            for k in ("deliveries", "messages_out", "bytes_out", "conflated", "updates_in", "dropped")
        }
    if profile is not None:
        load.detail["profile"] = profile
    return load


# -- the idle phase ----------------------------------------------------------------------------------------


def sockstat_tcp_pages() -> int | None:
    """Pages of kernel memory of every TCP socket of the machine (``/proc/net/sockstat``)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1])
    return None


def measure_idle(args, ctx: dict[str, Any], progress) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.idle
    limit_note = None
    room = soft - 200  # the gateway's own descriptors
    if want > room:
        limit_note = f"RLIMIT_NOFILE is {soft} (hard {hard}): at most about {room} connections per process"
        want = room
    gw: Child | None = None
    clients: Clients | None = None
    out: dict[str, Any] = {"wanted": args.idle, "attempted": want, "limit": limit_note}
    try:
        gw = start_wds(ctx, "idle", 1)
        assert gw.port is not None
        url = ws_url(gw.port, ctx["token"])
        warm = Clients(url, min(WARMUP_CONNECTIONS, want), 1, 1, args.channels, 1_000_000)
        try:
            warm.wait_subscribed(min(WARMUP_CONNECTIONS, want), progress, "idle warm-up")
            time.sleep(0.3)
            warm.stop()
        finally:
            warm.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and wds_counts(gw.http_port).get("connections", 1) > 0:
            time.sleep(0.1)
        time.sleep(0.5)
        rss0, tcp0 = gw.rss_mb(), sockstat_tcp_pages()
        started = time.perf_counter()
        procs = max(1, math.ceil(want / IDLE_PER_PROCESS))
        progress(f"idle: WDS at {rss0:.1f} MB with no client; {want} connections from {procs} processes")
        clients = Clients(url, want, procs, 1, args.channels, 1_000_000)
        reached = clients.wait_subscribed(want, progress, "idle")
        connect_s = time.perf_counter() - started
        time.sleep(1.0)  # replies and snapshots written, buffers settled
        gw.alive()
        rss1, tcp1 = gw.rss_mb(), sockstat_tcp_pages()
        metrics = wds_counts(gw.http_port)
        s = clients.sums()
        out.update(
            {
                "connections": reached,
                "wds_connections_metric": metrics.get("connections"),
                "connect_seconds": connect_s,
                "rss_before_mb": rss0,
                "rss_after_mb": rss1,
                "kb_per_connection": (rss1 - rss0) * 1024 / reached if reached else float("nan"),
                "kernel_tcp_kb_per_socket": (tcp1 - tcp0) * 4 / (2 * reached)
                if reached and tcp0 is not None and tcp1 is not None
                else None,
                "client_processes": procs,
                "client_rss_mb": clients.rss_mb(),
                "failed": s["failed"],
                "closed": s["closed"],
            }
        )
        out["close_codes"] = clients.stop()["close_codes"]
    finally:
        if clients is not None:
            clients.close()
        if gw is not None:
            gw.stop()
            logged = gw.log_lines()
            ctx["processes"]["idle"]["log_lines"] = logged[:20]
            out["redis_reconnects"] = sum("redis connection lost" in line for line in logged)
            gw.close()
    return out


# -- optional profile ----------------------------------------------------------------------------------


def run_py_spy(pid: int, seconds: float, folded: Path, progress) -> dict[str, Any]:
    progress(f"profiling wds with py-spy for {max(1, round(seconds))}s (same load)")
    error = pyspy.record(pid, seconds, folded)
    if error:
        return {"error": error}
    return {**pyspy.summarize(folded.read_text(), PROFILE_RULES, top_functions=25), "folded": folded.name}


# -- report --------------------------------------------------------------------------------------------


def _ms(x: float) -> str:
    return "n/a" if x != x else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def report(args, loads: dict[str, Load], idle: dict[str, Any] | None, ctx: dict[str, Any]) -> dict[str, Any]:
    figures = {name: load.figures() for name, load in loads.items()}
    lines = [
        f"wds_throughput: {args.clients} clients x {args.per_client} channels of {args.channels}, "
        f"{fmt_int(args.rate)} updates/s, {args.seconds:g} s window after {args.warmup:g} s, "
        f"{os.cpu_count()} CPUs, Redis {mask_url(ctx['redis_url'])}",
        "",
        "| gateway | clients | channels/client | offered updates/s | offered deliveries/s | delivered/s "
        "| CPU µs/delivery | CPU µs/message | cores | p50 ms | p99 ms | conflated % | RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, f in figures.items():
        lines.append(
            f"| {GATEWAYS[name]} | {f['clients']:,} | {args.per_client} "
            f"| {fmt_int(f['offered_updates_per_s'])} | {fmt_int(f['offered_deliveries_per_s'])} "
            f"| {fmt_int(f['deliveries_per_s'])} "
            f"| {f['cpu_us_per_delivery']:.2f} | {f['cpu_us_per_message']:.2f} | {f['cores']:.2f} "
            f"| {_ms(f['latency_p50_ms'])} "
            f"| {_ms(f['latency_p99_ms'])} | {f['conflated_share'] * 100:.1f} | {f['rss_mb']:.0f} |"
        )
    lines += [
        "",
        "delivered/s: `update` events received by the clients over the window; CPU µs/delivery, "
        "µs/message (per WebSocket message the clients received) and cores: "
        "the gateway process's user+system time (/proc/PID/stat); latency: Redis publish (TIME in the "
        "script) to client receive, of every update in every "
        f"{args.sample_every}th message; conflated %: share of the delivered updates marked conflated "
        "(older ones of the channel were skipped for that client).",
    ]
    for name, f in figures.items():
        d = loads[name].detail
        extra = ""
        if "wds_metrics" in d:
            m = d["wds_metrics"]
            extra = (
                f"; WDS /metrics: {fmt_int(m['updates_in'])} updates in/s, {fmt_int(m['deliveries'])} "
                f"deliveries/s, {fmt_int(m['messages_out'])} messages/s, {fmt_int(m['conflated'])} "
                "conflated/s"
            )
        lines.append(
            f"- {name}: published {fmt_int(f['published_per_s'])} updates/s; {fmt_int(f['messages_per_s'])} "
            f"messages/s to clients, {f['updates_per_message']:.1f} updates per message, "
            f"{f['mb_per_s']:.1f} MB/s; {fmt_int(f['deliveries_per_s_per_core'])} deliveries/s per core of "
            f"gateway CPU; latency max {_ms(f['latency_max_ms'])} ms over {f['latency_samples']:,} samples; "
            f"clients {f['client_cores']:.2f} cores, Redis {f['redis_cores']:.2f}, bench (publisher) "
            f"{f['bench_cores']:.2f}, other {f['other_cores']:.2f}; closed {d['closed']}, "
            f"failed {d['failed']}{extra}."
        )
    summary: dict[str, Any] = {"targets": {}}
    w, n = figures.get("wds"), figures.get("naive")
    if w and n and n["deliveries_per_s"]:
        summary["ratio_wds_vs_naive"] = {
            "deliveries_per_s": w["deliveries_per_s"] / n["deliveries_per_s"],
            "cpu_us_per_delivery": w["cpu_us_per_delivery"] / n["cpu_us_per_delivery"],
            "cpu_us_per_message": w["cpu_us_per_message"] / n["cpu_us_per_message"],
        }
        r = summary["ratio_wds_vs_naive"]
        lines += [
            "",
            f"WDS / naive: {r['deliveries_per_s']:.2f}x the deliveries/s, "
            f"{r['cpu_us_per_delivery']:.2f}x the CPU per delivery, {r['cpu_us_per_message']:.2f}x the CPU "
            f"per message, p99 {_ms(w['latency_p99_ms'])} "
            f"vs {_ms(n['latency_p99_ms'])} ms.",
        ]
    if idle:
        lines.append("")
        if idle.get("connections") is not None:
            reached = idle["connections"]
            short = (
                ""
                if reached >= idle["wanted"]
                else (
                    f" (NOT reached: {idle['wanted']:,} wanted"
                    + (f"; {idle['limit']}" if idle.get("limit") else "")
                    + f"; {idle['failed']} failed, {idle['closed']} closed)"
                )
            )
            kernel = idle.get("kernel_tcp_kb_per_socket")
            lines.append(
                f"Idle: {reached:,} connections{short}, each authenticated and subscribed to one channel, "
                f"connected in {idle['connect_seconds']:.1f}s: WDS RSS {idle['rss_before_mb']:.1f} -> "
                f"{idle['rss_after_mb']:.1f} MB = {idle['kb_per_connection']:.1f} KB per idle connection "
                "(user space: the kernel's socket buffers are not in RSS"
                + (
                    f"; kernel TCP buffers {kernel:.1f} KB per socket, both ends counted"
                    if kernel is not None and kernel > 0
                    else ""
                )
                + ")."
            )
        else:
            lines.append(f"Idle: failed ({idle.get('error')}).")
        if idle.get("redis_reconnects"):
            lines.append(
                f"WARNING: WDS lost its Redis subscription {idle['redis_reconnects']} times during the idle "
                "phase ('no reply to PING', see its log): each time it resubscribes and sends every client a "
                "fresh snapshot, which slows the connection storm and weighs on the memory figure."
            )
    if w:
        ok = w["deliveries_per_s"] >= TARGET_DELIVERIES_PER_S
        summary["targets"]["deliveries_per_s"] = {
            "target": TARGET_DELIVERIES_PER_S,
            "measured": w["deliveries_per_s"],
            "ok": ok,
        }
    if idle and idle.get("connections") is not None:
        summary["targets"]["idle_connections"] = {
            "target": TARGET_IDLE_CONNECTIONS,
            "measured": idle["connections"],
            "ok": idle["connections"] >= TARGET_IDLE_CONNECTIONS,
        }
        summary["targets"]["idle_kb_per_connection"] = {
            "target": TARGET_IDLE_KB,
            "measured": idle["kb_per_connection"],
            "ok": idle["kb_per_connection"] <= TARGET_IDLE_KB,
        }
    if summary["targets"]:
        lines.append("")
        lines.append("Targets (issue, per WDS process):")
        labels = {
            "deliveries_per_s": (f"≥ {fmt_int(TARGET_DELIVERIES_PER_S)} deliveries/s", fmt_int),
            "idle_connections": (f"≥ {fmt_int(TARGET_IDLE_CONNECTIONS)} idle connections", fmt_int),
            "idle_kb_per_connection": (
                f"≤ {TARGET_IDLE_KB:g} KB per idle connection",
                lambda x: f"{x:.1f} KB",
            ),
        }
        for key, t in summary["targets"].items():
            label, fmt = labels[key]
            lines.append(f"- {label}: {fmt(t['measured'])}: {'met' if t['ok'] else 'NOT met'}")
        if args.quick:
            lines.append("  (--quick: small numbers, a smoke run; the targets need the defaults)")
    if w and "profile" in loads["wds"].detail:
        prof = loads["wds"].detail["profile"]
        if "error" in prof:
            lines.append(f"Profile: {prof['error']}")
        else:
            lines.append("")
            lines.append(f"WDS profile (py-spy after the window, same load, {prof['samples']} samples):")
            lines += [f"- {v * 100:4.1f}% {k}" for k, v in prof["categories"].items()]
    lines += health_notes(ctx["processes"], figures, "")
    for name, f in figures.items():
        if f["client_cores"] > 0.9 * (args.client_procs or 1) and f["client_cores"] > 0.85:
            lines.append(
                f"NOTE: the {name} run's clients used {f['client_cores']:.2f} cores: they may bound it "
                "(both ends share this machine)."
            )
    print("\n".join(lines))
    machine = machine_info()
    for name in ("redis", "hiredis", "PyJWT", "py-spy"):
        try:
            machine["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            machine["packages"][name] = None
    return {
        "benchmark": "wds_throughput",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "machine": machine,
        "settings": {
            "clients": args.clients,
            "channels": args.channels,
            "per_client": args.per_client,
            "rate": args.rate,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "idle": args.idle,
            "client_procs": args.client_procs,
            "sample_every": args.sample_every,
            "quick": args.quick,
            "gateways": list(loads),
            "prefix": ctx["prefix"],
            "redis_url": mask_url(ctx["redis_url"]),
            "update_bytes": ctx.get("update_bytes"),
        },
        "processes": ctx["processes"],
        "gateways": {
            name: {
                "label": GATEWAYS[name],
                **figures[name],
                "seconds": load.seconds,
                "deliveries": load.deliveries,
                "messages": load.messages,
                "detail": load.detail,
            }
            for name, load in loads.items()
        },
        "idle": idle,
        "cleanup": ctx.get("cleanup"),
        **summary,
    }


# -- orchestration -------------------------------------------------------------------------------------


def run_bench(args: argparse.Namespace) -> int:
    import redis
    from pydantic import SecretStr

    from mdpipe.settings import WdsSettings
    from wds.tokens import mint

    signal.signal(signal.SIGTERM, terminate)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # the children inherit it: the gateway and the client processes hold many sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    began = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - began:5.1f}s] {message}", file=sys.stderr, flush=True)

    tag = secrets.token_hex(4)
    secret = secrets.token_hex(SECRET_BYTES)
    # defaults but for the secret, whatever the environment says: the gateways get the defaults too
    settings = WdsSettings.model_construct(wds_token_secret=SecretStr(secret), wds_token_ttl_s=TOKEN_TTL_S)
    ctx: dict[str, Any] = {
        "prefix": f"bench-{tag}",
        "redis_url": args.redis_url,
        "secret": secret,
        "processes": {},
        "token": mint(settings, "bench", ["stats.*"], ttl_s=TOKEN_TTL_S),
    }
    loads: dict[str, Load] = {}
    idle: dict[str, Any] | None = None
    rclient = redis.Redis.from_url(args.redis_url, socket_timeout=10, socket_connect_timeout=5)
    answered = False
    try:
        try:
            rclient.ping()
        except redis.RedisError as exc:
            raise RuntimeError(f"Redis at {mask_url(args.redis_url)} does not answer ({exc})") from None
        answered = True
        sample = Publisher(rclient, ctx["prefix"], 1, 1)  # one update, to know its size
        rclient.evalsha(sample.sha, 3, *sample.calls[0])
        ctx["update_bytes"] = len(rclient.get(sample.calls[0][1]) or b"") + 100
        if args.idle:
            idle = measure_idle(args, ctx, progress)
            progress(
                f"idle: {idle['connections']:,} connections, {idle['kb_per_connection']:.1f} KB each "
                f"(RSS {idle['rss_before_mb']:.1f} -> {idle['rss_after_mb']:.1f} MB)"
            )
        for name in args.gateways:
            load = measure_load(name, args, ctx, rclient, progress)
            loads[name] = load
            f = load.figures()
            progress(
                f"{name}: {fmt_int(f['deliveries_per_s'])} deliveries/s of "
                f"{fmt_int(f['offered_deliveries_per_s'])} offered, {f['cpu_us_per_delivery']:.2f} µs "
                f"CPU/delivery, {f['cpu_us_per_message']:.2f} µs CPU/message, {f['cores']:.2f} cores, "
                f"p50 {_ms(f['latency_p50_ms'])} ms, p99 {_ms(f['latency_p99_ms'])} ms"
            )
    finally:
        if answered:
            try:
                ctx["cleanup"] = {"redis_keys_deleted": delete_keys(rclient, ctx["prefix"])}
            except redis.RedisError as exc:
                print(f"wds_throughput: could not delete {ctx['prefix']}:* ({exc})", file=sys.stderr)
        rclient.close()
    progress("done")
    data = report(args, loads, idle, ctx)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_json_safe(data), indent=2, default=list) + "\n")
    print(f"\nJSON: {args.json.relative_to(ROOT) if args.json.is_relative_to(ROOT) else args.json}")
    if any(load.deliveries <= 0 for load in loads.values()):
        print("wds_throughput: a gateway delivered nothing", file=sys.stderr)
        return 1
    if args.strict and not all(t["ok"] for t in data["targets"].values()):
        return 1
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/wds_throughput.py",
        description=__doc__.split("\n\n")[0],
        epilog="Writes a Markdown table to stdout, progress to stderr, and JSON to --json. Exit status 1 if "
        "a gateway delivered nothing or a process failed (and with --strict, if a target is missed).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--clients", type=int, default=200, help="K: clients of the load phases")
    parser.add_argument("--channels", type=int, default=100, help="C: channels updated (stats.B0..)")
    parser.add_argument("--per-client", type=int, default=50, help="S: channels each client subscribes to")
    parser.add_argument(
        "--rate", type=float, default=2000, help="M: updates published per second, all channels together"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="the measured window")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the window")
    parser.add_argument(
        "--idle",
        type=int,
        default=TARGET_IDLE_CONNECTIONS,
        help="idle connections of the memory phase (0: skip it)",
    )
    parser.add_argument("--client-procs", type=int, default=1, help="client processes of the load phases")
    parser.add_argument(
        "--sample-every", type=int, default=16, help="parse every Nth message of the window for latencies"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 20 clients x 10 channels, 200 updates/s, 2 s window, 500 idle connections",
    )
    parser.add_argument("--skip-naive", action="store_true", help="measure WDS only")
    parser.add_argument(
        "--py-spy",
        type=float,
        default=0,
        metavar="S",
        help="after the wds window, S seconds of py-spy on WDS under the same load",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target of the issue is missed")
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help="Redis (a database nothing else uses; the keys go under bench-<random>)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    # the children
    parser.add_argument("--client-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--naive-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--slot", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--slots", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--counters", help=argparse.SUPPRESS)
    parser.add_argument("--samples", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=CONNECT_CONCURRENCY, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client_child or args.naive_child:
        return args
    if args.quick:
        args.clients, args.per_client, args.channels = min(args.clients, 20), min(args.per_client, 10), 20
        args.rate, args.seconds, args.warmup = min(args.rate, 200), min(args.seconds, 2.0), 0.5
        args.idle = min(args.idle, 500)
    if min(args.clients, args.channels, args.per_client, args.client_procs, args.sample_every) < 1:
        parser.error(
            "--clients, --channels, --per-client, --client-procs and --sample-every must be positive"
        )
    if args.per_client > args.channels:
        parser.error("--per-client cannot be above --channels")
    if args.rate <= 0 or args.seconds <= 0 or args.warmup < 0 or args.idle < 0:
        parser.error("--rate and --seconds must be positive, --warmup and --idle >= 0")
    args.gateways = ["wds"] if args.skip_naive else ["wds", "naive"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client_child:
        return client_child(args)
    if args.naive_child:
        return naive_child(args)
    return guarded("wds_throughput", lambda: run_bench(args), "processes stopped, Redis keys deleted")


if __name__ == "__main__":
    sys.exit(main())
