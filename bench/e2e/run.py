"""Options and the sweep of the end-to-end bench (``python -m bench.e2e``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from mdl_throughput import _json_safe, fmt_int, machine_info
from procs import ROOT, guarded, machine_busy, terminate
from wds_throughput import _ms, ws_url

from mdpipe.settings import mask_url

from . import report
from .clients import BOARDS, Clients, channel_plan, client_child
from .pipeline import PROFILE, Pipeline, Reading
from .report import Step

RESULTS = ROOT / "bench" / "results"
DEFAULT_PLOT = RESULTS / "e2e.png"
DOCS_PLOT = ROOT / "docs" / "img" / "e2e-latency.png"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
TOKEN_TTL_S = 6 * 3600
CHILD_ARGS = ("client_child", "url", "plan", "first", "slot", "slots", "counters", "concurrency")
BACKGROUND_S = 2.0  # the machine's load is read this long before anything starts


def open_run(args: argparse.Namespace, name: str) -> tuple[Callable[[str], None], dict[str, Any]]:
    """What a run of the whole pipeline starts with (``name``: the bench, ``e2e`` or ``soak``): SIGTERM
    unwinds through the cleanup, the file limit raised (inherited by the children: WDS and the client
    processes hold many sockets), a progress printer, the machine's load before anything starts, and the
    run's context: its own prefix, exchange and token secret."""
    signal.signal(signal.SIGTERM, terminate)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    began = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f}s] {message}", file=sys.stderr, flush=True)

    b0 = machine_busy()[0]
    time.sleep(BACKGROUND_S)
    background = (machine_busy()[0] - b0) / BACKGROUND_S
    progress(f"machine busy before the run: {background:.2f} cores of {os.cpu_count()}")
    tag = secrets.token_hex(4)
    args.exchange = f"bench-{name}-{tag}"
    ctx: dict[str, Any] = {
        "name": name, "prefix": f"bench-{name}-{tag}", "exchange": args.exchange, "redis_url": args.redis_url,
        "secret": secrets.token_hex(32), "processes": {}, "background_cores": background,
    }  # fmt: skip
    return progress, ctx


@contextlib.contextmanager
def pipeline_running(args: argparse.Namespace, ctx: dict[str, Any], progress) -> Iterator[Pipeline]:
    """MDP, WDS and the clients started, the clients subscribed (the emulator and MDL come with
    ``Pipeline.start_emulator``); on the way out, whatever happened, every process stopped and the
    exchange, queues and keys of the run deleted."""
    from pydantic import SecretStr

    from mdpipe.settings import WdsSettings
    from wds.tokens import mint

    settings = WdsSettings.model_construct(
        wds_token_secret=SecretStr(ctx["secret"]), wds_token_ttl_s=TOKEN_TTL_S
    )
    plan = channel_plan(args.clients, args.symbols_per_client, args.sim_symbols, args.sim_seed, args.seed,
                        args.popularity, args.boards)  # fmt: skip
    args.channels_per_client = len(plan[0]) if plan else 0
    fd, plan_path = tempfile.mkstemp(prefix=f"{ctx['name']}-bench-", suffix=".plan.json")
    os.close(fd)
    pipe: Pipeline | None = None
    try:
        pipe = Pipeline(args, ctx, progress)
        pipe.start()
        assert pipe.wds is not None
        assert pipe.wds.port is not None
        progress(f"MDP and WDS ready; {fmt_int(args.clients)} clients x {args.channels_per_client} channels "
                 f"connecting from {args.client_procs} processes")  # fmt: skip
        token = mint(settings, f"bench-{ctx['name']}", ["*"], ttl_s=TOKEN_TTL_S)
        pipe.clients = Clients(ws_url(pipe.wds.port, token), plan, args.client_procs, Path(plan_path))
        subscribed = pipe.clients.wait_subscribed(progress)
        if subscribed == 0:
            raise RuntimeError(f"no client subscribed:\n{pipe.wds.log_tail()}")
        progress(f"{subscribed} clients subscribed")
        yield pipe
    finally:
        if pipe is not None:
            pipe.close()
        os.unlink(plan_path)


def run_bench(args: argparse.Namespace) -> int:
    progress, ctx = open_run(args, "e2e")
    steps: list[Step] = []
    with pipeline_running(args, ctx, progress) as pipe:
        for rate in args.rates:
            steps.append(run_step(pipe, rate, args, progress))
            f = report.step_figures(steps[-1], args)
            per_s, lat = f["per_s"], f["latency"]
            progress(
                f"{steps[-1].label}: sent {fmt_int(per_s['sim_sent'])}/s, MDP applied "
                f"{fmt_int(per_s['mdp_applied'])}/s, delivered {fmt_int(per_s['wds_delivered'])}/s, "
                f"p50 {_ms(lat['p50_ms'])} p99 {_ms(lat['p99_ms'])} ms, busy {f['busy_cores']:.2f} cores"
            )
    progress("done")
    return finish(args, steps, ctx)


def run_step(pipe: Pipeline, rate: int, args: argparse.Namespace, progress) -> Step:
    label = "flat-out" if rate == 0 else f"{fmt_int(rate)} events/s"
    edge0, depths0 = pipe.reading(), pipe.depths()
    pipe.start_emulator(rate)
    progress(f"{label}: flowing; warm-up {args.warmup:g}s, then {args.seconds:g}s measured")
    time.sleep(args.warmup)
    r0 = pipe.reading()
    series, prev = [], r0
    end = time.monotonic() + args.seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        pipe.alive()
        now = pipe.reading()
        series.append(_point(prev, now, r0))
        prev = now
    r1 = prev
    rss = pipe.rss_mb()
    profile = None
    if args.py_spy and rate == args.profile_rate:
        profile = pipe.profile(args.profile, args.py_spy, RESULTS)
    pipe.stop_emulator()
    drain_s, drained = pipe.drain(args.drain)
    edge1, depths1 = pipe.reading(), pipe.depths()
    return Step(rate=rate, edge0=edge0, r0=r0, r1=r1, edge1=edge1, sim_final=pipe.sim_final,
                depths0=depths0, depths1=depths1, rss_mb=rss, drain_s=drain_s, drained=drained, series=series,
                profile=profile)  # fmt: skip


def _point(a: Reading, b: Reading, start: Reading) -> dict[str, float]:
    """One second of the window: the hops' rates and the machine's load."""
    ca, cb = report.counts(a.metrics), report.counts(b.metrics)
    dt = b.wall - a.wall
    out = {"t": round(b.wall - start.wall, 2)}
    for k in ("sim_sent", "mdl_published", "mdp_applied", "wds_delivered", "wds_conflated"):
        out[k] = round((cb[k] - ca[k]) / dt, 1)
    out["busy_cores"] = round((b.busy - a.busy) / dt, 3)
    return out


def finish(args: argparse.Namespace, steps: list[Step], ctx: dict[str, Any]) -> int:
    figures = [report.step_figures(s, args) for s in steps]
    knee = report.knee(figures)
    target = report.target_check(figures, args)
    head = (
        f"e2e: emulator -> MDL -> RabbitMQ -> MDP -> Redis -> WDS -> {fmt_int(args.clients)} clients "
        f"({args.client_procs} processes; {args.symbols_per_client} symbols x quotes/trades/stats + "
        f"{len(args.boards)} leaderboards each, symbols by {args.popularity}); emulator: {args.sim_symbols} "
        f"symbols, {args.tick_ms} ms ticks; "
        f"{args.warmup:g}s warm-up + {args.seconds:g}s per step; {os.cpu_count()} CPUs; machine busy "
        f"{ctx['background_cores']:.2f} cores before the run"
    )
    lines = [head, "", *report.tables(figures), *report.summary_lines(figures, knee, target, args, ctx)]
    error = None
    if figures:
        error = report.plot(figures, knee, args, args.plot, DOCS_PLOT if args.docs else None)
        lines.append(plot_line(error, args.plot, DOCS_PLOT if args.docs else None))
    print("\n".join(lines))
    data = {
        **record(args, ctx),
        "steps": figures,
        "knee": knee,
        "target": target,
        "plot": None if error else str(_rel(args.plot)),
    }
    write_json(args.json, data)
    if not figures or any(f["per_s"]["wds_delivered"] <= 0 for f in figures):
        print("e2e: a step delivered nothing to the clients", file=sys.stderr)
        return 1
    if args.strict and not (target and target["met"]):
        return 1
    return 0


def record(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    """The head of a run's JSON: the bench, when, the command, the machine (and how busy it was before the
    run), the settings (URLs without passwords), each process's command line, environment and warnings,
    the cleanup."""
    machine = machine_info()
    for name in ("redis", "hiredis", "PyJWT", "matplotlib", "py-spy"):
        try:
            machine["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            machine["packages"][name] = None
    settings = {k: v for k, v in vars(args).items() if k not in CHILD_ARGS and v is not None}
    settings.update(redis_url=mask_url(args.redis_url), rabbitmq_url=mask_url(args.rabbitmq_url),
                    prefix=ctx["prefix"])  # fmt: skip
    return {
        "benchmark": ctx["name"],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": ["python", "-m", f"bench.{ctx['name']}", *sys.argv[1:]],
        "machine": {**machine, "background_cores": ctx["background_cores"]},
        "settings": settings,
        "processes": ctx["processes"],
        "cleanup": ctx.get("cleanup"),
    }


def plot_line(error: str | None, path: Path, docs: Path | None) -> str:
    if error:
        return f"Plot: {error}"
    return f"Plot: {_rel(path)}" + (f" (copied to {_rel(docs)})" if docs else "")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(data), indent=2, default=str) + "\n")
    print(f"JSON: {_rel(path)}")


def _rel(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _rates(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        if part in ("0", "flat-out", "flatout", "max"):
            out.append(0)
        elif part:
            value = float(part[:-1]) * 1000 if part.endswith("k") else float(part)
            if value <= 0:
                raise argparse.ArgumentTypeError(f"not a rate: {part!r}")
            out.append(int(value))
    if not out:
        raise argparse.ArgumentTypeError("no rate")
    return out


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.isupper():
        raise argparse.ArgumentTypeError("NAME=VALUE, NAME an mdpipe setting (MDP_GROUP_EVENTS=0)")
    return name, value


def add_pipeline_options(parser: argparse.ArgumentParser, clients: int, plot: Path, docs: Path) -> None:
    """The options of the pipeline and its clients, and of the outputs, shared by the benches that run it
    whole (e2e, soak); ``plot``: the plot's default path, ``docs``: where ``--docs`` copies it."""
    add = parser.add_argument
    add("--json", type=Path, help="the results (default bench/results/<bench>-<timestamp>.json)")
    add("--plot", type=Path, default=plot, help="the plot (PNG)")
    add("--docs", action="store_true", help=f"copy the plot to {_rel(docs)} too")
    add("--clients", type=int, default=clients, help="K: WebSocket clients")
    add("--client-procs", type=int, default=2, help="processes the clients are spread over")
    add("--symbols-per-client", type=int, default=3, help="symbols each client watches (3 channels each)")
    add("--boards", type=_names, default=",".join(BOARDS), help="leaderboards each client subscribes to")
    add("--popularity", choices=("activity", "uniform"), default="activity", help="how symbols are picked")
    add("--seed", type=int, default=7, help="seed of the clients' choice of symbols")
    add("--sim-symbols", type=int, default=3000, help="SIM_SYMBOLS")
    add("--sim-seed", type=int, default=1, help="SIM_SEED")
    add("--tick-ms", type=int, default=10, help="SIM_TICK_MS: the emulator sends a tick's events at once")
    add("--set", type=_setting, action="append", default=[], metavar="NAME=VALUE", help="a setting for all")
    add("--rabbitmq-url", default=os.environ.get("RABBITMQ_URL") or DEFAULT_RABBITMQ_URL, help="RabbitMQ")
    add("--private-redis", action="store_true", help="a throw-away redis-server for MDP and WDS")
    add("--redis-url", default=DEFAULT_REDIS_URL, help="Redis of MDP and WDS (a database of the bench's)")


def check_pipeline_options(parser: argparse.ArgumentParser, args: argparse.Namespace, name: str) -> None:
    """The shared options checked; the JSON's default path (``bench/results/<name>-<timestamp>.json``)
    and the machine's CPU count (for titles) set."""
    if args.json is None:
        args.json = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    args.cpu_count = os.cpu_count()
    if min(args.clients, args.client_procs, args.symbols_per_client) < 1:
        parser.error("--clients, --client-procs and --symbols-per-client must be positive")
    unknown = set(args.boards) - set(BOARDS)
    if unknown:
        parser.error(f"--boards: known {', '.join(BOARDS)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.e2e",
        description="The whole pipeline on one machine (emulator, MDL, RabbitMQ, MDP, Redis, WDS) with K "
        "WebSocket clients, swept over input rates: throughput per hop, end-to-end latency, CPU, memory, "
        "drops, and the knee.",
        epilog="Markdown tables to stdout, progress to stderr, JSON to --json, a plot to --plot. Exit status "
        "1 if a step delivered nothing or a process failed (and with --strict, if the target is missed).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--rates",
        type=_rates,
        default="10k,50k,100k,200k,0",
        help="SIM_RATE of each step, in order; 0: flat-out",
    )
    add("--seconds", type=float, default=20.0, help="the steady window of each step")
    add("--warmup", type=float, default=5.0, help="seconds of flow before each window")
    add("--drain", type=float, default=30.0, help="most seconds to wait after each step")
    add_pipeline_options(parser, 1000, DEFAULT_PLOT, DOCS_PLOT)
    add("--tolerance", type=float, default=3.0, help="%%: a hop short of this much is the knee")
    add("--latency-target-ms", type=float, default=50.0, help="p99 above this: the knee")
    add("--target-rate", type=int, default=50_000, help="the step checked against the target")
    add("--py-spy", type=float, default=0.0, metavar="S", help="S seconds of py-spy on each --profile one")
    add("--profile-rate", type=int, default=50_000, help="the step profiled, after its window (0: flat-out)")
    add("--profile", type=_names, default="mdp,wds,mdl", help="mdl, mdp, wds, sim, clients")
    add("--quick", action="store_true", help="a smoke run: 100 clients, 2k and 10k, 5 s after 2 s")
    add("--strict", action="store_true", help="exit 1 when the target is missed")
    # the client processes
    parser.add_argument("--client-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--slot", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--slots", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--counters", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=100, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client_child:
        return args
    if isinstance(args.rates, str):
        args.rates = _rates(args.rates)
    if args.quick:
        args.clients, args.rates = min(args.clients, 100), [2000, 10_000]
        args.seconds, args.warmup = min(args.seconds, 5.0), min(args.warmup, 2.0)
    check_pipeline_options(parser, args, "e2e")
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.warmup < 0 or args.drain < 0 or args.py_spy < 0 or args.tolerance < 0:
        parser.error("--warmup, --drain, --py-spy and --tolerance must be >= 0")
    unknown = set(args.profile) - {*PROFILE, "sim", "clients"}
    if unknown:
        parser.error(f"--profile: unknown {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client_child:
        return client_child(args)
    return guarded("e2e", lambda: run_bench(args), "processes stopped, bench queues and keys deleted")
