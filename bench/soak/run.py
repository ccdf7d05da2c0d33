"""Options and the run of the soak (``python -m bench.soak``)."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from typing import Any

from mdl_throughput import fmt_int
from procs import ROOT, guarded, health_notes
from wds_throughput import _ms

from ..e2e.pipeline import Pipeline
from ..e2e.run import (
    RESULTS,
    _rates,
    _rel,
    add_pipeline_options,
    check_pipeline_options,
    open_run,
    pipeline_running,
    plot_line,
    record,
    write_json,
)
from . import judge
from .judge import Point

DEFAULT_PLOT = RESULTS / "soak.png"
DOCS_PLOT = ROOT / "docs" / "img" / "soak.png"


def run_soak(args: argparse.Namespace) -> int:
    progress, ctx = open_run(args, "soak")
    points: list[Point] = []
    with pipeline_running(args, ctx, progress) as pipe:
        pipe.start_emulator(args.rate)
        progress(f"flowing at {fmt_int(args.rate)} events/s: {args.minutes:g} min, a sample every "
                 f"{args.interval:g}s, the first {args.warmup:g}s warm-up")  # fmt: skip
        stopped = sample(pipe, args, points, progress)  # then MDL is stopped before the emulator
    progress("done")
    return finish(args, points, ctx, stopped)


def sample(pipe: Pipeline, args: argparse.Namespace, points: list[Point], progress) -> str | None:
    """A sample at 0 and every ``--interval`` seconds to the end; why it stopped early (a process died,
    Ctrl-C or SIGTERM), or None."""
    began = time.monotonic()
    count = int(args.minutes * 60 / args.interval + 1e-9)
    try:
        for k in range(count + 1):
            due = k * args.interval
            time.sleep(max(0.0, began + due - time.monotonic()))
            pipe.alive()
            points.append(take(pipe, due, time.monotonic() - began))
            if k and (due % 60 < args.interval - 1e-9 or k == count):
                progress(minute_line(points, args))
    except RuntimeError as exc:
        return f"stopped at {(time.monotonic() - began) / 60:.1f} min: {exc}"
    except KeyboardInterrupt:
        return f"interrupted at {(time.monotonic() - began) / 60:.1f} min"
    return None


def take(pipe: Pipeline, due: float, t: float) -> Point:
    # descriptors first: the scrapes of the reading open a socket in each component for a moment
    fds = pipe.fds()
    rss = pipe.rss_mb()
    used = keys = math.nan
    with contextlib.suppress(Exception):
        used = pipe.rclient.info("memory")["used_memory"] / 2**20
        db = pipe.rclient.connection_pool.connection_kwargs.get("db", 0)
        keys = pipe.rclient.info("keyspace").get(f"db{db}", {}).get("keys", 0)
    reading = pipe.reading()
    return Point(due=due, t=t, reading=reading, rss_mb=rss, fds=fds, redis_used_mb=used, redis_keys=keys)


def minute_line(points: list[Point], args: argparse.Namespace) -> str:
    """Progress: the last minute's rates and latency, RSS and fds now."""
    j = len(points) - 1
    i = max(0, j - max(1, round(60 / args.interval)))
    w = judge.window(points, i, j, "", args)
    rss = " ".join(f"{c} {v:.0f}" for c, v in w["rss_mb"].items() if v == v)
    fds = " ".join(f"{c} {v:.0f}" for c, v in w["fds"].items() if v == v)
    return (f"{points[j].t / 60:.1f} min: sent {fmt_int(w['per_s']['sim_sent'])}/s, delivered "
            f"{fmt_int(w['per_s']['wds_delivered'])}/s, p50 {_ms(w['latency']['p50_ms'])} p99 "
            f"{_ms(w['latency']['p99_ms'])} ms, other {w['other_cores']:.2f} cores; RSS MB {rss}; "
            f"fds {fds}")  # fmt: skip


def finish(args: argparse.Namespace, points: list[Point], ctx: dict[str, Any], stopped: str | None) -> int:
    rows = judge.samples(points, args)
    by_minute = judge.minutes(points, args) if points else []
    verdict = judge.judge(points, args)
    load = judge.other_load(rows)
    lost = judge.drops(points) if points else {}
    head = (
        f"soak: emulator at {fmt_int(args.rate)} events/s -> MDL -> RabbitMQ -> MDP -> Redis -> WDS -> "
        f"{fmt_int(args.clients)} clients ({args.client_procs} processes; {args.symbols_per_client} "
        f"symbols x quotes/trades/stats + {len(args.boards)} leaderboards each); {args.minutes:g} min, a "
        f"sample every {args.interval:g}s, {args.warmup:g}s warm-up; {os.cpu_count()} CPUs; machine busy "
        f"{ctx['background_cores']:.2f} cores before the run"
    )
    lines = [head, ""]
    if stopped:
        lines += [f"STOPPED EARLY: {stopped}", ""]
    if rows:
        lines += [*judge.tables_text(by_minute if args.table == "minutes" else rows, args.table), ""]
    lines += judge.verdict_lines(verdict, args)
    lines += [
        "",
        f"Machine: {load['other_mean']:.2f} cores busy on average outside the pipeline and the bench after "
        f"the warm-up (at most {load['other_max']:.2f} over a sample); {load['busy_mean']:.2f} busy in all.",
        "Lost or skipped over the run: "
        + (", ".join(f"{k} {fmt_int(v)}" for k, v in lost.items()) or "n/a")
        + ".",
    ]
    skewed = " (latency and CPU most; RSS and fds not)"
    lines += health_notes(ctx["processes"], {"soak": {"other_cores": load["other_max"]}}, skewed)
    docs = DOCS_PLOT if args.docs else None
    error = judge.plot(points, rows, verdict, args, args.plot, docs)
    lines.append(plot_line(error, args.plot, docs))
    print("\n".join(lines))
    data = {
        **record(args, ctx),
        "stopped": stopped,
        "verdict": verdict,
        "other_load": load,
        "lost": lost,
        "start": {"rss_mb": points[0].rss_mb, "fds": points[0].fds} if points else None,
        "minutes": by_minute,
        "samples": rows,
        "plot": None if error else str(_rel(args.plot)),
    }
    write_json(args.json, data)
    if stopped:
        return 130 if stopped.startswith("interrupted") else 1
    if not rows or verdict.get("judged_window", {}).get("per_s", {}).get("wds_delivered", 0) <= 0:
        print("soak: nothing delivered to the clients", file=sys.stderr)
        return 1
    return 1 if args.strict and not verdict["ok"] else 0


def _rate(text: str) -> int:
    rates = _rates(text)
    if len(rates) != 1 or rates[0] <= 0:
        raise argparse.ArgumentTypeError("one rate above 0 (5000, 5k)")
    return rates[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="The whole pipeline (emulator, MDL, RabbitMQ, MDP, Redis, WDS) and K WebSocket clients "
        "at one steady rate for minutes: RSS, open file descriptors and CPU per component, hop rates and "
        "end-to-end latency per sample; judged after the warm-up for memory growth, descriptor growth and "
        "latency drift.",
        epilog="Markdown tables to stdout, progress to stderr, JSON to --json, a plot to --plot. Exit status "
        "1 if a process failed or nothing was delivered (and with --strict, if a verdict that counts fails); "
        "130 when interrupted (the samples so far are reported).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--rate", type=_rate, default=5000, help="SIM_RATE: trades + quotes per second (5k = 5000)")
    add("--minutes", type=float, default=10.0, help="length of the run at the rate, the warm-up included")
    add("--interval", type=float, default=10.0, help="seconds between samples")
    add("--warmup", type=float, default=60.0, help="seconds at the start left out of the verdicts")
    add("--max-rss-slope", type=float, default=1.0, help="MB/min: an RSS slope at or above fails")
    add("--max-fd-range", type=float, default=5.0, help="open fds: a larger max - min fails")
    add("--max-p99-drift-pct", type=float, default=50.0, help="%%: p99 drift passes under this...")
    add("--max-p99-drift-ms", type=float, default=20.0, help="...or under this many ms")
    add("--table", choices=("minutes", "samples"), default="minutes", help="rows of the tables")
    add("--strict", action="store_true", help="exit 1 when a verdict fails (shared servers' excepted)")
    add_pipeline_options(parser, 200, DEFAULT_PLOT, DOCS_PLOT)
    args = parser.parse_args(argv)
    check_pipeline_options(parser, args, "soak")
    if args.interval <= 0 or args.warmup < 0 or args.minutes <= 0:
        parser.error("--interval and --minutes must be positive, --warmup at least 0")
    if args.minutes * 60 - args.warmup < 4 * args.interval:
        parser.error("--minutes must leave at least 4 intervals after --warmup")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return guarded("soak", lambda: run_soak(args), "processes stopped, bench queues and keys deleted")
