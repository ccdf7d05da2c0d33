"""How fast the Massive emulator delivers events to the real ``massive`` client, against a naive baseline.

What is measured
----------------
Events per second *as read by the real ``massive.WebSocketClient``* in raw mode (``raw=True``,
``secure=False``, ``feed="127.0.0.1:PORT"``, subscriptions ``T.*,Q.*,A.*,AM.*,LULD.*,NOI.*``,
``connect(processor, max_size=None)``), in three scenarios, all in the same run:

- ``pool``: the emulator flat-out (``--rate 0``): each client cycles through a pool of frames encoded
  once at start (``sim.sources.PoolSource``);
- ``naive``: a baseline emulator written in this file (not product code) that speaks just enough of the
  protocol for the massive client (``connected``, ``auth_success``, one ``success`` per subscription)
  and then generates events live with ``SyntheticMarket.tick()`` and ``json.dumps`` per frame of the
  same size, sending as fast as it can; it ignores what was subscribed and sends every event;
- ``paced``: the emulator at a configured rate (``--rate``, default 20000 trades and quotes per second),
  to check that the rate it achieves is the one configured (trades and quotes only: the aggregates, LULD
  bands and imbalances the market adds come on top of the configured rate).

Optionally (``--scenarios ...,bare``) the pool emulator is also read by a bare ``websockets`` client that
takes frames as bytes, with no massive client around it: a diagnostic of how much faster the emulator
can go than the massive client can read.

How
---
Each server runs in its own process (``python -m sim`` with ``LOG_LEVEL=WARNING``, ``SIM_API_KEY`` and
``SIM_START`` fixed, ports chosen free; ``python bench/sim_flatout.py --serve-naive PORT`` for the
baseline), so client and server each get one of the machine's cores. The bench waits for the emulator's
``/readyz`` (the pool takes a few seconds to build) or for the baseline's port, then connects.

The client counts events without parsing in the hot path: ``frame.count('"ev"')`` on the ``str`` each
frame arrives as, plus ``len(frame)`` for the bytes (the JSON text is ASCII, so characters are bytes;
WebSocket framing is not counted). For correctness, every ``--sample-every``-th frame of the measured
window is kept and fully parsed with orjson after the window: the parsed event count must equal the
``'"ev"'`` count, every event must have a stocks event type and a symbol.

Each run warms up (``--warmup``, default 1 s) then measures for ``--seconds`` (default 5); rates are
counts over the measured wall-clock time. CPU time of the client (this process) and of the server
process (``/proc/PID/stat``) over the window says which side is the bottleneck: the one near 1.0 core.
The rest of the machine's busy time (``/proc/stat``) is reported as ``other``, since another load on a
2-core machine skews everything. Runs are repeated (``--repeat``, default 3, the pool and naive runs
interleaved) and the tables show the median of each figure. Results go to stdout as Markdown and to
``bench/results/sim_flatout.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from procs import ROOT, Child, child_env, free_port, guarded, machine_busy, own_cpu, public_env, terminate

DEFAULT_JSON = ROOT / "bench" / "results" / "sim_flatout.json"
SUBSCRIPTIONS = ("T.*", "Q.*", "A.*", "AM.*", "LULD.*", "NOI.*")
MARKET = "stocks"
START = "2026-11-20T14:30:00Z"  # fixed market clock: the same events on every run
API_KEY = "bench-key"
COUNT_METHOD = (
    "frame.count('\"ev\"') on the str the massive client hands over (raw mode); len(frame) for bytes"
)
STOCK_TYPES = frozenset({"T", "Q", "A", "AM", "LULD", "NOI", "FMV", "LV"})
MAX_SAMPLES = 4000
FIRST_FRAME_TIMEOUT_S = 10.0
PACED_SAMPLE_DENSER = 16  # the paced scenario parses every (--sample-every / 16)th frame
SATURATED = 0.85  # cores: a side busier than this is the bottleneck

SCENARIOS = {
    "pool": "emulator flat-out (pre-encoded pool)",
    "naive": "naive baseline (live SyntheticMarket + json.dumps)",
    "bare": "emulator flat-out, bare websockets client (diagnostic)",
    "paced": "emulator paced",
}


# -- the naive baseline server ----------------------------------------------------------------------


def serve_naive(args: argparse.Namespace) -> int:
    """``--serve-naive PORT``: the baseline emulator, until SIGTERM or SIGINT."""
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    from mdpipe import runtime
    from mdpipe.settings import parse_start
    from sim.market import SyntheticMarket

    key = os.environ.get("SIM_API_KEY", API_KEY)
    start_ms = parse_start(args.start)

    def status(status: str, message: str) -> dict[str, str]:
        return {"ev": "status", "status": status, "message": message}

    async def handler(ws: ServerConnection) -> None:
        try:
            await ws.send(json.dumps([status("connected", "Connected Successfully")]))
            auth = json.loads(await ws.recv())
            if auth.get("action") != "auth" or auth.get("params") != key:
                await ws.send(json.dumps([status("auth_failed", "authentication failed")]))
                await ws.close(1008, "authentication failed")
                return
            await ws.send(json.dumps([status("auth_success", "authenticated")]))
            subscribe = json.loads(await ws.recv())
            params = [p.strip() for p in str(subscribe.get("params", "")).split(",") if p.strip()]
            await ws.send(json.dumps([status("success", f"subscribed to: {p}") for p in params]))
            # Live generation, one json.dumps per frame; every event goes out whatever was subscribed.
            market = SyntheticMarket(
                seed=args.seed, symbols=args.symbols, rate=0, tick_ms=args.tick_ms, start_ms=start_ms
            )
            size = args.frame_events
            while True:
                events = market.tick()
                for i in range(0, len(events), size):
                    await ws.send(json.dumps(events[i : i + size]))
                await asyncio.sleep(0)  # let the loop read the client's close
        except ConnectionClosed:
            pass

    async def main(stop: asyncio.Event) -> int:
        async with serve(handler, "127.0.0.1", args.serve_naive, compression=None, close_timeout=2):
            await stop.wait()
        return 0

    return runtime.serve(main)


# -- server processes ---------------------------------------------------------------------------------


def emulator_process(args: argparse.Namespace, rate: int) -> Child:
    port, http_port = free_port(), free_port()
    argv = [sys.executable, "-m", "sim", "--rate", str(rate), "--port", str(port),
            "--http-port", str(http_port), "--start", args.start, "--seed", str(args.seed),
            "--symbols", str(args.symbols)]  # fmt: skip
    env = child_env({
        "SIM_API_KEY": API_KEY, "SIM_FRAME_EVENTS": str(args.frame_events), "SIM_TICK_MS": str(args.tick_ms),
        "SIM_POOL_EVENTS": str(args.pool_events),
    })  # fmt: skip
    return Child(f"emulator (--rate {rate})", argv, env, http_port=http_port, port=port, stop_timeout=5)


def naive_process(args: argparse.Namespace) -> Child:
    port = free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-naive", str(port), "--start", args.start,
            "--seed", str(args.seed), "--symbols", str(args.symbols), "--tick-ms", str(args.tick_ms),
            "--frame-events", str(args.frame_events)]  # fmt: skip
    return Child("naive baseline", argv, child_env({"SIM_API_KEY": API_KEY}), port=port, stop_timeout=5)


# -- the client side ----------------------------------------------------------------------------------


class FrameCounter:
    """The processor the massive client calls with each raw frame: counts, and keeps a sample."""

    __slots__ = ("chars", "events", "frames", "next_sample", "sample_every", "samples", "tq")

    def __init__(self, sample_every: int) -> None:
        self.frames = self.events = self.chars = self.tq = 0
        self.sample_every = sample_every
        self.next_sample = sample_every
        self.samples: list[str | bytes] = []

    async def count(self, frame: str) -> None:
        """The hot path: no parsing."""
        self.frames += 1
        self.events += frame.count('"ev"')
        self.chars += len(frame)
        if self.frames >= self.next_sample:
            self._keep(frame)

    async def count_tq(self, frame: str) -> None:
        """As ``count``, plus trades and quotes (the paced rate's unit), as the emulator encodes them."""
        self.frames += 1
        self.events += frame.count('"ev"')
        self.tq += frame.count('"ev":"T"') + frame.count('"ev":"Q"')
        self.chars += len(frame)
        if self.frames >= self.next_sample:
            self._keep(frame)

    def count_bytes(self, frame: bytes) -> None:
        self.frames += 1
        self.events += frame.count(b'"ev"')
        self.chars += len(frame)
        if self.frames >= self.next_sample:
            self._keep(frame)

    def _keep(self, frame: str | bytes) -> None:
        self.next_sample += self.sample_every
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(frame)

    def snapshot(self) -> tuple[int, int, int, int]:
        return self.frames, self.events, self.chars, self.tq


def check_samples(samples: list[str | bytes]) -> dict[str, Any]:
    """Parse the sampled frames fully: the cheap count must agree, and every event must look right."""
    import orjson

    from mdpipe.massive import event_symbol

    types: collections.Counter[str] = collections.Counter()
    mismatches = bad = status = events = unparsable = 0
    for frame in samples:
        try:
            parsed = orjson.loads(frame)
        except orjson.JSONDecodeError:
            unparsable += 1
            continue
        if not isinstance(parsed, list) or not all(isinstance(e, dict) for e in parsed):
            unparsable += 1
            continue
        marker = b'"ev"' if isinstance(frame, bytes) else '"ev"'
        mismatches += len(parsed) != frame.count(marker)  # type: ignore[arg-type]
        for event in parsed:
            ev = str(event.get("ev"))
            types[ev] += 1
            events += 1
            if ev == "status":
                status += 1
            elif ev not in STOCK_TYPES or event_symbol(event) is None:
                bad += 1
    return {
        "frames": len(samples),
        "events": events,
        "count_mismatches": mismatches,
        "unparsable_frames": unparsable,
        "bad_events": bad,
        "status_events": status,
        "types": {k: round(v / events, 4) for k, v in types.most_common()} if events else {},
        "ok": bool(samples) and mismatches == unparsable == bad == status == 0,
    }


def count_cost_us(samples: list[str | bytes]) -> float:
    """Microseconds the hot path's ``count('"ev"')`` takes on one frame, timed on the sampled frames."""
    if not samples:
        return 0.0
    reps = max(1, 2000 // len(samples))
    t = time.perf_counter()
    for _ in range(reps):
        for frame in samples:
            frame.count(b'"ev"' if isinstance(frame, bytes) else '"ev"')  # type: ignore[arg-type]
    return (time.perf_counter() - t) / (reps * len(samples)) * 1e6


@dataclass
class Run:
    scenario: str
    seconds: float
    frames: int
    events: int
    chars: int
    tq: int
    client_cpu: float  # cores
    server_cpu: float  # cores
    other_cpu: float  # cores busy outside client and server
    steal: float  # cores stolen by the hypervisor
    server_rss_mb: float
    count_us: float  # what the hot-path count costs per frame, timed on the sampled frames
    samples: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> dict[str, float]:
        s = self.seconds
        out = {
            "events_per_s": self.events / s,
            "frames_per_s": self.frames / s,
            "mb_per_s": self.chars / s / 1e6,
            "events_per_frame": self.events / self.frames if self.frames else 0.0,
            "client_cpu": self.client_cpu,
            "server_cpu": self.server_cpu,
            "other_cpu": self.other_cpu,
            "steal": self.steal,
            "server_rss_mb": self.server_rss_mb,
            "client_us_per_frame": self.client_cpu * 1e6 / (self.frames / s) if self.frames else 0.0,
            "server_us_per_frame": self.server_cpu * 1e6 / (self.frames / s) if self.frames else 0.0,
            "count_us_per_frame": self.count_us,
        }
        if self.scenario == "paced":
            out["tq_per_s"] = self.tq / s
        return out


async def measure(scenario: str, server: Child, *, warmup: float, seconds: float, sample_every: int) -> Run:
    """Connect, warm up, count for ``seconds``, disconnect."""
    counter = FrameCounter(sample_every)
    if scenario == "bare":
        client, task = None, asyncio.create_task(_bare_client(server.feed, counter))
    else:
        from massive import WebSocketClient

        client = WebSocketClient(
            api_key=API_KEY, feed=server.feed, market=MARKET, raw=True, secure=False,
            subscriptions=list(SUBSCRIPTIONS), max_reconnects=0,
        )  # fmt: skip
        processor = counter.count_tq if scenario == "paced" else counter.count
        task = asyncio.create_task(client.connect(processor, max_size=None))
    try:
        deadline = time.monotonic() + FIRST_FRAME_TIMEOUT_S
        while counter.frames == 0:
            _alive(task, scenario)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{scenario}: no frame within {FIRST_FRAME_TIMEOUT_S:.0f}s")
            await asyncio.sleep(0.01)
        await asyncio.sleep(warmup)
        _alive(task, scenario)
        counter.samples.clear()
        before, t0, c0, s0, m0 = _snapshot(counter, server)
        await asyncio.sleep(seconds)
        after, t1, c1, s1, m1 = _snapshot(counter, server)
        _alive(task, scenario)
        samples = list(counter.samples)
        rss = server.rss_mb()
    finally:
        await _stop_client(client, task)
    dt = t1 - t0
    client_cpu, server_cpu = (c1 - c0) / dt, (s1 - s0) / dt
    frames, events, chars, tq = (a - b for a, b in zip(after, before, strict=True))
    return Run(
        scenario=scenario, seconds=dt, frames=frames, events=events, chars=chars, tq=tq,
        client_cpu=client_cpu, server_cpu=server_cpu,
        other_cpu=max(0.0, (m1[0] - m0[0]) / dt - client_cpu - server_cpu), steal=(m1[1] - m0[1]) / dt,
        server_rss_mb=rss, count_us=count_cost_us(samples), samples=check_samples(samples),
    )  # fmt: skip


def _snapshot(counter: FrameCounter, server: Child):
    """Counts, wall clock, client CPU, server CPU and machine busy time, at one instant."""
    return counter.snapshot(), time.perf_counter(), own_cpu(), server.cpu_seconds(), machine_busy()


def _alive(task: asyncio.Task[Any], scenario: str) -> None:
    if task.done():
        exc = None if task.cancelled() else task.exception()
        raise RuntimeError(f"{scenario}: the client stopped early ({exc!r})")


async def _bare_client(feed: str, counter: FrameCounter) -> None:
    """The protocol by hand over plain ``websockets``, frames as bytes: no massive client in the way."""
    from websockets.asyncio.client import connect

    async with connect(f"ws://{feed}/{MARKET}", max_size=None, compression=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"action": "auth", "params": API_KEY}))
        await ws.recv()
        await ws.send(json.dumps({"action": "subscribe", "params": ",".join(SUBSCRIPTIONS)}))
        count = counter.count_bytes
        while True:
            count(await ws.recv(decode=False))  # type: ignore[arg-type]


async def _stop_client(client: Any, task: asyncio.Task[Any]) -> None:
    if client is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(task), 5)
    # Python 3.11's wait_for (inside the massive client's loop) can swallow a cancellation: insist.
    for _ in range(100):
        if task.done():
            break
        task.cancel()
        await asyncio.sleep(0.05)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: an error after the window does not matter


def run_loop(coro: Any, loop: str) -> Any:
    """Run ``coro`` on a fresh loop; SIGINT (asyncio's) or SIGTERM cancel it and raise KeyboardInterrupt."""
    terminated = False

    async def guarded() -> Any:
        def on_term() -> None:
            nonlocal terminated
            terminated = True
            task.cancel()

        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_term)
        return await coro

    try:
        if loop == "uvloop":
            import uvloop

            result = uvloop.run(guarded())
        else:
            result = asyncio.run(guarded())
    except asyncio.CancelledError:
        if terminated:
            raise KeyboardInterrupt("SIGTERM") from None
        raise
    finally:
        signal.signal(signal.SIGTERM, terminate)  # the loop's handler is gone with the loop
    if terminated:
        raise KeyboardInterrupt("SIGTERM")
    return result


# -- orchestration and report ------------------------------------------------------------------------


def median_figures(runs: list[Run]) -> dict[str, float]:
    figures = [r.figures() for r in runs]
    return {k: statistics.median(f[k] for f in figures) for k in figures[0]}


def bottleneck(m: dict[str, float], scenario: str) -> str:
    client, server = m["client_cpu"], m["server_cpu"]
    if scenario == "paced" and max(client, server) < SATURATED:
        return f"neither (paced; client {client:.2f}, server {server:.2f} cores)"
    per_frame = (
        f"; per frame: client {m['client_us_per_frame']:.1f} µs (of which the count "
        f"{m['count_us_per_frame']:.1f} µs), server {m['server_us_per_frame']:.1f} µs"
    )
    if client >= SATURATED and client >= server:
        return f"client ({client:.2f} cores; server {server:.2f}){per_frame}"
    if server >= SATURATED:
        return f"server ({server:.2f} cores; client {client:.2f}){per_frame}"
    return f"unclear (client {client:.2f}, server {server:.2f} cores: look at `other`/steal)"


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    packages = {}
    for name in ("massive", "websockets", "orjson", "uvloop", "mdpipe"):
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


def fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def report(args: argparse.Namespace, results: dict[str, list[Run]], servers: dict[str, Any]) -> dict:
    medians = {name: median_figures(runs) for name, runs in results.items()}
    lines = [
        f"sim_flatout: median of {args.repeat} run(s), {args.warmup:g} s warm-up + {args.seconds:g} s each, "
        f"client loop {args.loop}, {os.cpu_count()} CPUs",
        "",
        "| scenario | events/s | frames/s | MB/s | events/frame | client CPU | server CPU | other CPU "
        "| server RSS MB | sample check |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, runs in results.items():
        m = medians[name]
        label = SCENARIOS[name] + (f" (--rate {args.rate})" if name == "paced" else "")
        checks = [r.samples for r in runs]
        ok = all(c["ok"] for c in checks)
        check = f"{'ok' if ok else 'FAILED'} ({sum(c['frames'] for c in checks)} frames parsed)"
        lines.append(
            f"| {label} | {fmt_int(m['events_per_s'])} | {fmt_int(m['frames_per_s'])} | {m['mb_per_s']:.1f} "
            f"| {m['events_per_frame']:.1f} | {m['client_cpu']:.2f} | {m['server_cpu']:.2f} "
            f"| {m['other_cpu']:.2f} | {m['server_rss_mb']:.0f} | {check} |"
        )
    lines.append("")
    paced_every = max(1, args.sample_every // PACED_SAMPLE_DENSER)
    lines.append(
        f"Counting: {COUNT_METHOD}. Check: every {args.sample_every}th frame of the window "
        f"(paced: every {paced_every}th) parsed with orjson afterwards."
    )
    lines.append("CPU columns are cores (1.00 = one core busy) over the measured window.")
    summary: dict[str, Any] = {}
    if "pool" in medians and "naive" in medians:
        ratio = medians["pool"]["events_per_s"] / medians["naive"]["events_per_s"]
        summary["ratio_pool_vs_naive"] = ratio
        lines.append(f"Pool vs naive: {ratio:.1f}x the events/s.")
    if "paced" in medians:
        achieved = medians["paced"]["tq_per_s"]
        error = (achieved / args.rate - 1) * 100
        ok = abs(error) <= args.tolerance
        summary["paced_check"] = {
            "configured_rate": args.rate,
            "achieved_tq_per_s": achieved,
            "achieved_events_per_s": medians["paced"]["events_per_s"],
            "error_percent": error,
            "tolerance_percent": args.tolerance,
            "ok": ok,
        }
        lines.append(
            f"Paced: configured {fmt_int(args.rate)} trades+quotes/s, achieved {fmt_int(achieved)} "
            f"({error:+.2f}%, tolerance ±{args.tolerance:g}%): {'ok' if ok else 'OUT OF TOLERANCE'}; "
            f"all events incl. aggregates/LULD/NOI: {fmt_int(medians['paced']['events_per_s'])}/s."
        )
    lines.append("Bottleneck (the side near 1.0 core):")
    for name in results:
        lines.append(f"- {name}: {bottleneck(medians[name], name)}")
    for name, info in servers.items():
        if info["log_lines"]:
            lines.append(f"Server log of {name} ({len(info['log_lines'])} lines at WARNING or above), first:")
            lines.extend(f"    {line[:300]}" for line in info["log_lines"][:3])
    busy_other = max((m["other_cpu"] for m in medians.values()), default=0.0)
    if busy_other > 0.15:
        lines.append(
            f"WARNING: up to {busy_other:.2f} cores were busy outside this benchmark: figures are skewed."
        )
    print("\n".join(lines))
    return {
        "benchmark": "sim_flatout",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "machine": machine_info(),
        "settings": {
            "seconds": args.seconds,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "paced_rate": args.rate,
            "client_loop": args.loop,
            "pin": args.pin,
            "sample_every": args.sample_every,
            "paced_sample_every": paced_every,
            "symbols": args.symbols,
            "seed": args.seed,
            "start": args.start,
            "tick_ms": args.tick_ms,
            "frame_events": args.frame_events,
            "pool_events": args.pool_events,
            "subscriptions": ",".join(SUBSCRIPTIONS),
            "count_method": COUNT_METHOD,
            "mb": "1e6 bytes of JSON text (WebSocket framing not counted)",
        },
        "servers": servers,
        "scenarios": {
            name: {
                "label": SCENARIOS[name],
                "median": medians[name],
                "bottleneck": bottleneck(medians[name], name),
                "runs": [{**r.figures(), "seconds": r.seconds, "sample_check": r.samples} for r in runs],
            }
            for name, runs in results.items()
        },
        **summary,
    }


def run_bench(args: argparse.Namespace) -> int:
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}")
    signal.signal(signal.SIGTERM, terminate)
    client_cpu, server_cpu = (0, 1) if args.pin else (None, None)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    results: dict[str, list[Run]] = {s: [] for s in scenarios}
    servers: dict[str, dict[str, Any]] = {}
    began = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - began:5.1f}s] {message}", file=sys.stderr, flush=True)

    def one(scenario: str, server: Child, i: int) -> None:
        # Paced frames are few (a couple of hundred a second): sample them more densely.
        every = max(1, args.sample_every // PACED_SAMPLE_DENSER) if scenario == "paced" else args.sample_every
        run = run_loop(
            measure(scenario, server, warmup=args.warmup, seconds=args.seconds, sample_every=every),
            args.loop,
        )
        results[scenario].append(run)
        f = run.figures()
        progress(
            f"{scenario} run {i + 1}/{args.repeat}: {fmt_int(f['events_per_s'])} events/s, "
            f"client {run.client_cpu:.2f} / server {run.server_cpu:.2f} cores, "
            f"sample {'ok' if run.samples['ok'] else 'FAILED'}"
        )

    def note(server: Child) -> None:
        servers[server.name] = {
            "argv": [Path(a).name if a == sys.executable else a for a in server.argv],
            "env": public_env(server.env),
            "ready_after_s": round(server.ready_s, 2),
            "log_lines": server.log_lines(),
        }

    with contextlib.ExitStack() as stack:
        flat = [s for s in scenarios if s != "paced"]
        pool = naive = None
        if {"pool", "bare"} & set(flat):
            pool = stack.enter_context(contextlib.closing(emulator_process(args, 0).start(server_cpu)))
        if "naive" in flat:
            naive = stack.enter_context(contextlib.closing(naive_process(args).start(server_cpu)))
        for server in (naive, pool):
            if server is not None:
                server.wait_ready()
                progress(f"{server.name} ready after {server.ready_s:.1f}s")
        for i in range(args.repeat):  # interleaved, so a drift of the machine hits every scenario alike
            for scenario in flat:
                one(scenario, naive if scenario == "naive" else pool, i)  # type: ignore[arg-type]
        for server in (pool, naive):
            if server is not None:
                server.stop()
                note(server)
        if "paced" in scenarios:
            paced = stack.enter_context(
                contextlib.closing(emulator_process(args, args.rate).start(server_cpu))
            )
            paced.wait_ready()
            progress(f"{paced.name} ready after {paced.ready_s:.1f}s")
            for i in range(args.repeat):
                one("paced", paced, i)
            paced.stop()
            note(paced)
    progress("done")
    data = report(args, results, servers)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nJSON: {args.json}")
    failed = [name for name, runs in results.items() if not all(r.samples["ok"] for r in runs)]
    paced_bad = "paced_check" in data and not data["paced_check"]["ok"]
    return 1 if failed or paced_bad else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mdpipe.settings import SimSettings, parse_start

    defaults = SimSettings.model_fields
    parser = argparse.ArgumentParser(
        prog="python bench/sim_flatout.py",
        description=__doc__.split("\n\n")[0],
        epilog="Writes a Markdown table to stdout, progress to stderr, and JSON to --json. "
        "Exit status 1 if a sample check fails or the paced rate is out of tolerance.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds read before measuring")
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario; the median is reported")
    parser.add_argument("--rate", type=int, default=20_000, help="trades+quotes/s of the paced scenario")
    parser.add_argument("--tolerance", type=float, default=3.0, help="paced rate tolerance, percent")
    parser.add_argument(
        "--scenarios", default="pool,naive,paced", help=f"comma-separated: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="client event loop (mdpipe components run uvloop)")  # fmt: skip
    parser.add_argument("--pin", action="store_true", help="pin the client to CPU 0 and servers to CPU 1")
    parser.add_argument("--sample-every", type=int, default=128, help="parse every Nth frame for the check")
    parser.add_argument("--symbols", type=int, default=defaults["sim_symbols"].default, help="SIM_SYMBOLS")
    parser.add_argument("--seed", type=int, default=defaults["sim_seed"].default, help="SIM_SEED")
    parser.add_argument("--start", default=START, help="SIM_START: the market clock, fixed")
    parser.add_argument("--tick-ms", type=int, default=defaults["sim_tick_ms"].default, help="SIM_TICK_MS")
    parser.add_argument("--frame-events", type=int, default=defaults["sim_frame_events"].default,
                        help="SIM_FRAME_EVENTS (also the baseline's frame size)")  # fmt: skip
    parser.add_argument("--pool-events", type=int, default=defaults["sim_pool_events"].default,
                        help="SIM_POOL_EVENTS")  # fmt: skip
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    parser.add_argument("--serve-naive", type=int, metavar="PORT", help="internal: run the baseline server")
    args = parser.parse_args(argv)
    try:
        parse_start(args.start)
    except ValueError as exc:
        parser.error(f"--start: {exc}")
    if args.seconds <= 0 or args.warmup < 0 or args.repeat < 1 or args.sample_every < 1 or args.rate < 1:
        parser.error("--seconds and --rate must be positive, --warmup >= 0, --repeat and --sample-every >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_naive is not None:
        return serve_naive(args)
    return guarded("sim_flatout", lambda: run_bench(args), "servers stopped")


if __name__ == "__main__":
    sys.exit(main())
