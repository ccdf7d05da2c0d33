"""Old against new bench clients in one run: ``python -m bench.e2e.compare --help``.

The e2e bench's clients are its load generator, so what they cost per message received matters. This
runs one pipeline as ``bench.e2e`` does (emulator, MDL, RabbitMQ, MDP, Redis, WDS) at one input rate and
feeds two groups of clients at the same time: the baseline's (``bench/e2e/clients.py`` at a git revision,
or a file put in place of this tree's, with the same counters) and this tree's. Each group gets every other
client of one channel plan, so both get the same mix, and processes of its own. Over the same windows
each group's CPU (``/proc``) per message and per update received is read, with its counts (seq gaps,
out of order, conflated, closes) beside it: a cheaper client that miscounts shows. The machine and the
moment are the same for both, so the ratio is what to read, not the absolute figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from mdl_throughput import fmt_int
from procs import ROOT, guarded
from wds_throughput import ws_url

from . import clients as tree
from .clients import KINDS, Clients, channel_plan, counts_delta
from .pipeline import Pipeline
from .run import add_pipeline_options, check_pipeline_options, open_run, write_json

GROUPS = ("baseline", "tree")
LAYOUT = ("HEADER", "STOP", "FIELDS", "HISTOGRAMS", "BUCKETS")  # what the bench reads must match
CHECKED = ("gaps", "out_of_order", "conflated", "closed", "closed_slow", "failed")
# A client process of the baseline: its own bench/ first on the path (the rest, mdpipe and the
# components, from this tree), then its bench.e2e with the client options.
LAUNCH = "import sys; sys.path.insert(0, sys.argv.pop(1)); from bench.e2e.run import main; sys.exit(main())"


def baseline_tree(spec: str, into: Path) -> list[str]:
    """A copy of ``bench/`` in ``into`` to run the baseline's clients from: the revision's, or this tree's
    with ``bench/e2e/clients.py`` replaced by the file ``spec``; the command that starts its client
    processes."""
    if Path(spec).is_file():
        shutil.copytree(
            ROOT / "bench", into / "bench", ignore=shutil.ignore_patterns("results", "__pycache__")
        )
        shutil.copyfile(spec, into / "bench" / "e2e" / "clients.py")
    else:
        done = subprocess.run(["git", "archive", spec, "bench"], cwd=ROOT, capture_output=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"--baseline {spec}: {done.stderr.decode(errors='replace').strip()}")
        with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
            tar.extractall(into, filter="data")
    probe = f"import json, bench.e2e.clients as c; print(json.dumps([getattr(c, k) for k in {LAYOUT!r}]))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=into, capture_output=True, text=True)
    ours = json.loads(json.dumps([getattr(tree, k) for k in LAYOUT]))
    if done.returncode != 0 or json.loads(done.stdout) != ours:
        raise RuntimeError(f"--baseline {spec}: its counters are not laid out as ours {done.stderr[-300:]}")
    return [sys.executable, "-c", LAUNCH, str(into)]


def window(groups: dict[str, Clients], seconds: float) -> dict[str, dict[str, Any]]:
    """Each group's CPU and counts over ``seconds``."""
    before = {name: (g.cpu_seconds(), g.counts()) for name, g in groups.items()}
    time.sleep(seconds)
    out = {}
    for name, g in groups.items():
        cpu0, counts0 = before[name]
        n = counts_delta(g.counts(), counts0)
        cpu = g.cpu_seconds() - cpu0
        updates = sum(n[k] for k in (*KINDS, "other"))
        out[name] = {
            "cores": cpu / seconds, "messages_per_s": n["messages"] / seconds,
            "updates_per_s": updates / seconds,
            "us_per_message": cpu * 1e6 / n["messages"] if n["messages"] else float("nan"),
            "us_per_update": cpu * 1e6 / updates if updates else float("nan"),
            "stamps_per_s": n["stamps"] / seconds, **{k: n[k] for k in CHECKED},
        }  # fmt: skip
    return out


def table(windows: list[dict[str, dict[str, Any]]]) -> list[str]:
    lines = [
        "| window | clients | messages/s | updates/s | stamps/s | cores | us CPU/message | us CPU/update "
        "| gaps | out of order | conflated | closes |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, w in enumerate(windows, 1):
        for name in GROUPS:
            f = w[name]
            closes = f["closed"] + f["closed_slow"] + f["failed"]
            lines.append(
                f"| {i} | {name} | {fmt_int(f['messages_per_s'])} | {fmt_int(f['updates_per_s'])} | "
                f"{fmt_int(f['stamps_per_s'])} | {f['cores']:.2f} | {f['us_per_message']:.1f} | "
                f"{f['us_per_update']:.1f} | {f['gaps']} | {f['out_of_order']} | {f['conflated']} | "
                f"{closes} |"
            )
    ratios = [w["tree"]["us_per_message"] / w["baseline"]["us_per_message"] for w in windows]
    lines += ["", "CPU per message, tree / baseline: " + ", ".join(f"{r:.2f}" for r in ratios)]
    return lines


def run(args: argparse.Namespace) -> int:
    from pydantic import SecretStr

    from mdpipe.settings import WdsSettings
    from wds.tokens import mint

    progress, ctx = open_run(args, "compare")
    plan = channel_plan(args.clients, args.symbols_per_client, args.sim_symbols, args.sim_seed, args.seed,
                        args.popularity, args.boards)  # fmt: skip
    args.channels_per_client = len(plan[0])
    tmp = Path(tempfile.mkdtemp(prefix="compare-bench-"))
    groups: dict[str, Clients] = {}
    pipe: Pipeline | None = None
    try:
        commands = {"baseline": baseline_tree(args.baseline, tmp), "tree": None}
        pipe = Pipeline(args, ctx, progress)
        pipe.start()
        settings = WdsSettings.model_construct(wds_token_secret=SecretStr(ctx["secret"]))
        url = ws_url(pipe.wds.port, mint(settings, "bench-compare", ["*"], ttl_s=3600))
        for i, name in enumerate(GROUPS):  # every other client: the same mix for both
            plan_path = tmp / f"{name}.plan.json"
            groups[name] = Clients(url, plan[i::2], args.client_procs, plan_path, commands[name])
        for name, g in groups.items():
            progress(f"{name}: {g.wait_subscribed(progress)} of {g.total} clients subscribed")
        pipe.start_emulator(args.rate)
        progress(f"{fmt_int(args.rate)} events/s flowing; warm-up {args.warmup:g}s")
        time.sleep(args.warmup)
        windows = []
        for i in range(args.windows):
            windows.append(window(groups, args.seconds))
            pipe.alive()
            progress(f"window {i + 1} of {args.windows} done")
    finally:
        for g in groups.values():
            g.close()
        if pipe is not None:
            pipe.close()
        shutil.rmtree(tmp, ignore_errors=True)
    lines = table(windows)
    print(f"{args.clients} clients ({args.client_procs} process(es) a group), {fmt_int(args.rate)} events/s, "
          f"baseline {args.baseline}\n")  # fmt: skip
    print("\n".join(lines))
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    write_json(args.json, {"settings": settings, "windows": windows})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.e2e.compare",
        description="The e2e bench's clients against a baseline's, in one run: CPU per message received.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--baseline", default="HEAD", help="a git revision (its bench/e2e/clients.py) or a file")
    add("--rate", type=int, default=10_000, help="SIM_RATE")
    add("--warmup", type=float, default=5.0, help="seconds of flow before the first window")
    add("--seconds", type=float, default=10.0, help="each window")
    add("--windows", type=int, default=3, help="windows, one after the other")
    add_pipeline_options(parser, 1000, Path(os.devnull), Path(os.devnull))
    parser.set_defaults(client_procs=1)  # a group: 500 clients in one process, as bench.e2e's defaults
    args = parser.parse_args(argv)
    check_pipeline_options(parser, args, "compare")
    return guarded("compare", lambda: run(args), "processes stopped, bench queues and keys deleted")


if __name__ == "__main__":
    sys.exit(main())
