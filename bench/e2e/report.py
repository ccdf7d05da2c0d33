"""Figures of each step of the sweep, the knee, the Markdown tables, the plot and the JSON."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdl_throughput import Samples, by_label, fmt_int, total
from mdp_throughput import FINAL_RESULTS
from procs import health_notes
from wds_throughput import _ms

from .clients import KINDS, counts_delta, max_ms, quantile_ms
from .pipeline import COMPONENTS, Reading

# Hop name -> how it is labelled in the output.
HOPS = ("emulator", "MDL", "MDP", "WDS", "clients")
LATENCY_HISTOGRAMS = {  # the components' own histograms (bucket bounds), for where the time goes
    "mdl_publish": ("mdl", "mdpipe_mdl_publish_latency_seconds"),
    "mdp_message_age": ("mdp", "mdpipe_mdp_message_age_seconds"),
    "mdp_write": ("mdp", "mdpipe_mdp_batch_seconds"),
}  # (WDS's delivery histogram starts at the event time, the emulator's market clock: not comparable)


@dataclass
class Step:
    rate: int  # trades + quotes offered per second; 0: flat-out
    edge0: Reading  # before the emulator started
    r0: Reading  # the steady window
    r1: Reading
    edge1: Reading  # after the emulator stopped and the pipeline drained
    sim_final: Samples
    depths0: dict[str, int]
    depths1: dict[str, int]
    rss_mb: dict[str, float]
    drain_s: float
    drained: bool
    series: list[dict[str, float]] = field(default_factory=list)
    profile: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return "flat-out" if self.rate == 0 else fmt_int(self.rate)


def counts(m: dict[str, Samples]) -> dict[str, float]:
    """The counters of every hop from one reading's metrics (a component not running: zeros)."""
    sim, mdl, mdp, wds = (m.get(k, {}) for k in ("sim", "mdl", "mdp", "wds"))
    results = by_label(mdp, "mdpipe_mdp_messages_total", "result")
    return {
        "sim_sent": total(sim, "mdpipe_sim_events_sent_total"),
        "sim_slow_consumer": by_label(sim, "mdpipe_sim_connections_total", "outcome").get("slow_consumer", 0),
        "mdl_read": total(mdl, "mdpipe_mdl_events_total"),
        "mdl_published": total(mdl, "mdpipe_mdl_events_published_total"),
        "mdl_messages": total(mdl, "mdpipe_mdl_messages_published_total"),
        "mdl_dropped_frames": total(mdl, "mdpipe_mdl_dropped_frames_total"),
        "mdl_dropped_events": total(mdl, "mdpipe_mdl_dropped_events_total"),
        "mdl_reconnects": total(mdl, "mdpipe_mdl_reconnects_total"),
        "mdp_applied": total(mdp, "mdpipe_mdp_events_total") + total(mdp, "mdpipe_mdp_invalid_events_total"),
        "mdp_invalid": total(mdp, "mdpipe_mdp_invalid_events_total"),
        "mdp_messages": sum(results.get(r, 0.0) for r in FINAL_RESULTS),
        "mdp_stale": results.get("stale", 0.0),
        "mdp_failed": results.get("failed", 0.0) + results.get("malformed", 0.0),
        "mdp_redis_errors": total(mdp, "mdpipe_mdp_redis_errors_total"),
        "wds_in": total(wds, "mdpipe_wds_updates_in_total"),
        "wds_delivered": total(wds, "mdpipe_wds_deliveries_total"),
        "wds_messages": total(wds, "mdpipe_wds_messages_out_total"),
        "wds_conflated": total(wds, "mdpipe_wds_conflated_total"),
        "wds_input_conflated": total(wds, "mdpipe_wds_input_conflated_total"),
        "wds_dropped": total(wds, "mdpipe_wds_dropped_total"),
        "wds_slow_closes": by_label(wds, "mdpipe_wds_closes_total", "code").get("4008", 0.0),
        "wds_closes": total(wds, "mdpipe_wds_closes_total"),
    }


def bucket_bounds_ms(before: Samples, after: Samples, name: str, q: float) -> float:
    """The upper bound (ms) of the histogram bucket holding quantile ``q`` of the observations between two
    scrapes; NaN without any, inf above the last bound."""
    cum = by_label(after, name + "_bucket", "le")
    old = by_label(before, name + "_bucket", "le")
    rows = sorted((float(le), n - old.get(le, 0.0)) for le, n in cum.items())
    if not rows or rows[-1][1] <= 0:
        return float("nan")
    want = q * rows[-1][1]
    return next(le for le, n in rows if n >= want) * 1000


def between(r0: Reading, r1: Reading) -> dict[str, Any]:
    """What happened between two readings: the seconds, every hop's counters per second, the clients'
    counts and histograms (differences), the updates they received per second, the end-to-end latency,
    CPU cores per component, the machine's busy cores and the part of them outside every component and
    the bench (``other``)."""
    dt = r1.wall - r0.wall
    c0, c1 = counts(r0.metrics), counts(r1.metrics)
    clients = counts_delta(r1.clients, r0.clients)
    hists = {k: [a - b for a, b in zip(v, r0.hists[k], strict=True)] for k, v in r1.hists.items()}
    hist = hists["e2e"]
    cores = {k: (r1.cpu.get(k, 0.0) - r0.cpu.get(k, 0.0)) / dt for k in r1.cpu}
    busy = (r1.busy - r0.busy) / dt
    return {
        "seconds": dt,
        "per_s": {k: (c1[k] - c0[k]) / dt for k in c1},
        "clients": clients,
        "hists": hists,
        "received_per_s": sum(clients[k] for k in (*KINDS, "other")) / dt,
        "latency": {
            "p50_ms": quantile_ms(hist, 0.50),
            "p99_ms": quantile_ms(hist, 0.99),
            "p999_ms": quantile_ms(hist, 0.999),
            "max_ms": max_ms(hist),
            "samples": sum(hist),
        },
        "cores": cores,
        "busy_cores": busy,
        "other_cores": max(0.0, busy - math.fsum(v for v in cores.values() if v == v)),
    }


def step_figures(step: Step, args: Any) -> dict[str, Any]:
    r0, r1 = step.r0, step.r1
    w = between(r0, r1)
    dt, per_s, clients, hists, lat = w["seconds"], w["per_s"], w["clients"], w["hists"], w["latency"]
    received = w["received_per_s"]
    e0, e1 = counts(step.edge0.metrics), counts(step.edge1.metrics)
    edge = {k: e1[k] - e0[k] for k in e1}
    ec = counts_delta(step.edge1.clients, step.edge0.clients)
    queued = sum(v for k, v in step.depths1.items() if not k.endswith(".dead")) - sum(
        v for k, v in step.depths0.items() if not k.endswith(".dead")
    )
    dead = step.depths1.get(f"{args.exchange}.dead", 0) - step.depths0.get(f"{args.exchange}.dead", 0)
    drops = {
        "mdl_handoff_frames": edge["mdl_dropped_frames"],
        "mdl_events": edge["mdl_dropped_events"],
        "sim_slow_consumer": counts({"sim": step.sim_final})["sim_slow_consumer"],
        "queue_messages": edge["mdl_messages"] - edge["mdp_messages"] - queued,
        "mdp_stale_messages": edge["mdp_stale"],
        "mdp_failed_messages": edge["mdp_failed"],
        "wds_input_conflated": edge["wds_input_conflated"],
        "wds_conflated": edge["wds_conflated"],
        "wds_dropped": edge["wds_dropped"],
        "wds_slow_closes": edge["wds_slow_closes"],
        "client_gaps": ec.get("gaps", 0),
        "client_out_of_order": ec.get("out_of_order", 0),
        "client_closes": ec.get("closed", 0) + ec.get("closed_slow", 0) + ec.get("failed", 0),
    }
    own = {
        key: bucket_bounds_ms(r0.metrics.get(comp, {}), r1.metrics.get(comp, {}), name, 0.99)
        for key, (comp, name) in LATENCY_HISTOGRAMS.items()
    }
    for key in ("published", "loop_lag"):
        own[f"{key}_p50"] = quantile_ms(hists[key], 0.50)
        own[f"{key}_p99"] = quantile_ms(hists[key], 0.99)
    offered_to_clients = per_s["wds_delivered"] + per_s["wds_conflated"] + per_s["wds_dropped"]
    hops = {  # hop -> (what it passed on, what it was offered), per second
        "emulator": (per_s["sim_sent"], float(step.rate)) if step.rate else None,
        "MDL": (per_s["mdl_published"], per_s["sim_sent"]),
        "MDP": (per_s["mdp_applied"], per_s["mdl_published"]),
        "WDS": (per_s["wds_delivered"], offered_to_clients),
        "clients": (received, per_s["wds_delivered"]),
    }
    short = {
        hop: round(got / want, 4)
        for hop, pair in hops.items()
        if pair is not None
        for got, want in [pair]
        if want > 0 and got < want * (1 - args.tolerance / 100)
    }
    return {
        "rate": step.rate,
        "label": step.label,
        "seconds": dt,
        "per_s": per_s,
        "received_per_s": received,
        "received_by_kind_per_s": {k: clients[k] / dt for k in (*KINDS, "other")},
        "client_messages_per_s": clients["messages"] / dt,
        "client_mb_per_s": clients["bytes"] / dt / 1e6,
        "stamps_per_s": clients["stamps"] / dt,
        "latency": lat,
        "where_ms": own,
        "cores": w["cores"],
        "other_cores": w["other_cores"],
        "busy_cores": w["busy_cores"],
        "rss_mb": step.rss_mb,
        "drops": drops,
        "dead_lettered": dead,
        "mdl_reconnects_in_window": per_s["mdl_reconnects"] * dt,
        "mdp_invalid_events": edge["mdp_invalid"],
        "mdp_redis_errors": edge["mdp_redis_errors"],
        "subscribed": r1.clients.get("subscribed", 0),
        "hops": {k: v for k, v in hops.items() if v is not None},
        "short_hops": short,
        "latency_over": lat["p99_ms"] > args.latency_target_ms,
        "drain_s": step.drain_s,
        "drained": step.drained,
        "series": step.series,
        **({"profile": step.profile} if step.profile else {}),
    }


def knee(figures: list[dict[str, Any]]) -> dict[str, Any] | None:
    for f in figures:
        if f["short_hops"] or f["latency_over"]:
            return {"step": f["label"], "rate": f["rate"], "short_hops": f["short_hops"],
                    "latency_over": f["latency_over"], "p99_ms": f["latency"]["p99_ms"]}  # fmt: skip
    return None


def target_check(figures: list[dict[str, Any]], args: Any) -> dict[str, Any] | None:
    f = next((f for f in figures if f["rate"] == args.target_rate), None)
    if f is None:
        return None
    drops = {k: v for k, v in f["drops"].items() if v}
    checks = {
        "clients": f["subscribed"] >= args.clients,
        "p99": not f["latency_over"] and not math.isnan(f["latency"]["p99_ms"]),
        "no_drops": not drops,
        "throughput": not f["short_hops"],
    }
    return {
        "rate": args.target_rate, "clients": f["subscribed"], "p99_ms": f["latency"]["p99_ms"],
        "drops": drops, "short_hops": f["short_hops"], "checks": checks, "met": all(checks.values()),
    }  # fmt: skip


# -- text ----------------------------------------------------------------------------------------------


Column = tuple[str, Callable[[dict[str, Any]], str]]


def _n(x: float) -> str:
    return "n/a" if x != x else fmt_int(x)


def _c(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f}"


def _per_s(key: str) -> Callable[[dict[str, Any]], str]:
    return lambda f: _n(f["per_s"][key])


def _lat(key: str) -> Callable[[dict[str, Any]], str]:
    return lambda f: _ms(f["latency"][key])


def _of(group: str, key: str, fmt: Callable[[float], str] = _n) -> Callable[[dict[str, Any]], str]:
    return lambda f: fmt(f[group].get(key, float("nan")))


NAMES = {"sim": "emulator", "mdl": "MDL", "rabbitmq": "RabbitMQ", "mdp": "MDP", "redis": "Redis",
         "wds": "WDS", "clients": "clients"}  # fmt: skip
TABLES: tuple[tuple[str, tuple[Column, ...]], ...] = (
    (
        "Throughput over the steady window (events/s, then updates/s) and end-to-end latency",
        (
            ("emulator sent", _per_s("sim_sent")),
            ("MDL published", _per_s("mdl_published")),
            ("MDP applied", _per_s("mdp_applied")),
            ("WDS updates in", _per_s("wds_in")),
            ("WDS delivered", _per_s("wds_delivered")),
            ("clients received", lambda f: _n(f["received_per_s"])),
            ("p50 ms", _lat("p50_ms")),
            ("p99 ms", _lat("p99_ms")),
            ("p99.9 ms", _lat("p999_ms")),
            ("max ms", _lat("max_ms")),
            ("latency samples/s", lambda f: _n(f["stamps_per_s"])),
        ),
    ),
    (
        "Updates received by the clients per second, by channel kind",
        (
            *((kind, _of("received_by_kind_per_s", kind)) for kind in KINDS),
            ("messages", lambda f: _n(f["client_messages_per_s"])),
            ("updates/message", lambda f: _c(f["received_per_s"] / (f["client_messages_per_s"] or math.nan))),
            ("MB/s", lambda f: f"{f['client_mb_per_s']:.1f}"),
        ),
    ),
    (
        "CPU per component (cores; 1.00 = one core flat out)",
        (
            *((NAMES[c], _of("cores", c, _c)) for c in COMPONENTS),
            ("bench", _of("cores", "bench", _c)),
            ("other", lambda f: _c(f["other_cores"])),
            ("machine busy", lambda f: _c(f["busy_cores"])),
        ),
    ),
    (
        "Drops during the step (warm-up, window and drain)",
        (
            ("MDL hand-off frames", _of("drops", "mdl_handoff_frames")),
            ("emulator slow-consumer closes", _of("drops", "sim_slow_consumer")),
            ("queue messages lost", _of("drops", "queue_messages")),
            ("MDP stale messages", _of("drops", "mdp_stale_messages")),
            ("WDS input conflated", _of("drops", "wds_input_conflated")),
            ("WDS conflated", _of("drops", "wds_conflated")),
            ("WDS dropped", _of("drops", "wds_dropped")),
            ("WDS slow closes", _of("drops", "wds_slow_closes")),
            ("client seq gaps", _of("drops", "client_gaps")),
            ("client closes", _of("drops", "client_closes")),
        ),
    ),
    (
        "Memory per component at the end of the window (RSS, MB)",
        tuple((NAMES[c], _of("rss_mb", c)) for c in COMPONENTS),
    ),
    (
        "Where the time goes (ms): p99 of MDL's and MDP's histograms (bucket bounds), the clients' own",
        (
            ("MDL read to published", _of("where_ms", "mdl_publish", _ms)),
            ("MDL read to MDP written", _of("where_ms", "mdp_message_age", _ms)),
            ("MDP group planned to written", _of("where_ms", "mdp_write", _ms)),
            ("MDP publish to client p50", _of("where_ms", "published_p50", _ms)),
            ("MDP publish to client p99", _of("where_ms", "published_p99", _ms)),
            ("client loop lag p99", _of("where_ms", "loop_lag_p99", _ms)),
            ("emulator send to client p99", _lat("p99_ms")),
        ),
    ),
)


def tables(
    figures: list[dict[str, Any]],
    specs: tuple[tuple[str, tuple[Column, ...]], ...] = TABLES,
    first: str = "input ev/s",
) -> list[str]:
    """One Markdown table per (title, columns) of ``specs``, a row per figure (its ``label`` first)."""
    lines: list[str] = []
    for title, columns in specs:
        lines += [title, "", f"| {first} | " + " | ".join(h for h, _ in columns) + " |"]
        lines.append("| --- |" + " ---: |" * len(columns))
        lines += ["| " + " | ".join([f["label"], *(cell(f) for _, cell in columns)]) + " |" for f in figures]
        lines.append("")
    return lines[:-1]


def summary_lines(figures, knee_found, target, args, ctx) -> list[str]:
    lines = [""]
    if knee_found is None:
        lines.append(
            f"Knee: not reached: every step passed on what it was offered (within {args.tolerance:g}%) "
            f"with p99 ≤ {args.latency_target_ms:g} ms."
        )
    else:
        why = [f"{hop} passed on {ratio * 100:.1f}% of what it was offered"
               for hop, ratio in knee_found["short_hops"].items()]  # fmt: skip
        if knee_found["latency_over"]:
            why.append(f"p99 {_ms(knee_found['p99_ms'])} ms > {args.latency_target_ms:g} ms")
        at = knee_found["step"] + ("" if knee_found["rate"] == 0 else " events/s")
        lines.append(f"Knee: at {at}: " + "; ".join(why) + ".")
    if target is not None:
        c = target["checks"]
        lines.append(
            f"Target ({fmt_int(target['rate'])} events/s, {fmt_int(args.clients)} clients, p99 < "
            f"{args.latency_target_ms:g} ms, no drops): {'met' if target['met'] else 'NOT met'} — "
            f"{fmt_int(target['clients'])} clients subscribed, p99 {_ms(target['p99_ms'])} ms, "
            + (
                "no drops"
                if c["no_drops"]
                else "drops: " + ", ".join(f"{k} {fmt_int(v)}" for k, v in target["drops"].items())
            )
            + ("" if c["throughput"] else f", short hops {target['short_hops']}")
            + "."
        )
    for f in figures:
        extra = []
        if f["mdl_reconnects_in_window"]:
            extra.append(f"MDL reconnected {f['mdl_reconnects_in_window']:.0f} times in the window")
        if f["dead_lettered"]:
            extra.append(f"{fmt_int(f['dead_lettered'])} messages dead-lettered")
        if f["mdp_invalid_events"]:
            extra.append(f"{fmt_int(f['mdp_invalid_events'])} invalid events")
        if f["drops"]["client_out_of_order"]:
            extra.append(f"{fmt_int(f['drops']['client_out_of_order'])} updates out of order at the clients")
        if not f["drained"]:
            extra.append(
                f"still busy {f['drain_s']:.0f}s after the emulator stopped (queue messages lost may count "
                "messages MDP still held)"
            )
        if f["subscribed"] < args.clients:
            extra.append(f"only {f['subscribed']} of {args.clients} clients subscribed at the window's end")
        if extra:
            lines.append(f"- {f['label']}: " + "; ".join(extra) + ".")
        for name, prof in (f.get("profile") or {}).items():
            if "error" in prof:
                lines.append(f"- profile of {name} at {f['label']}: {prof['error']}")
                continue
            lines.append(f"- profile of {name} at {f['label']} ({prof['samples']} samples):")
            lines += [f"    {v * 100:4.1f}% {k}" for k, v in list(prof["categories"].items())[:8]]
            if len(prof["categories"]) <= 2:
                lines += [f"    {v * 100:4.1f}% incl. {k}" for k, v in
                          list(prof.get("top_functions_inclusive", {}).items())[:10]]  # fmt: skip
    skewed = " (latency and CPU most: every part shares the cores)"
    lines += health_notes(ctx["processes"], {f["label"]: f for f in figures}, skewed)
    return lines


# -- plot ----------------------------------------------------------------------------------------------


def plot(figures: list[dict[str, Any]], knee_found, args, path: Path, docs: Path | None) -> str | None:
    """Latency percentiles against the input rate (log y); the error message, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot"
    # Each step is placed at the rate the emulator reached (a paced emulator may fall short of its
    # setting, and flat-out has none), and labelled with what was asked.
    pts = sorted((f["per_s"]["sim_sent"], f) for f in figures if f["latency"]["samples"])
    if not pts:
        return "no latency samples: no plot"
    x = [p[0] for p in pts]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for key, label, style in (("p50_ms", "p50", "o-"), ("p99_ms", "p99", "s-"), ("p999_ms", "p99.9", "^-")):
        ax.plot(x, [p[1]["latency"][key] for p in pts], style, label=label)
    ax.axhline(args.latency_target_ms, color="grey", linestyle="--", linewidth=1,
               label=f"target p99 {args.latency_target_ms:g} ms")  # fmt: skip
    for xi, f in pts:
        asked = "flat-out" if f["rate"] == 0 else f"asked {f['rate'] / 1000:g}k"
        where = (xi, f["latency"]["p99_ms"])
        ax.annotate(asked, where, textcoords="offset points", xytext=(4, 6), fontsize=8)
    if knee_found is not None:
        kx = next(xi for xi, f in pts if f["label"] == knee_found["step"]) if any(
            f["label"] == knee_found["step"] for _, f in pts) else None  # fmt: skip
        if kx is not None:
            ax.axvline(kx, color="red", linestyle=":", linewidth=1, label=f"knee ({knee_found['step']} ev/s)")
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:g}k"))
    ax.set_xlabel("input rate reached (trades + quotes per second)")
    ax.set_ylabel("emulator send to client receive (ms)")
    ax.set_title(f"mdpipe end to end: {fmt_int(args.clients)} WebSocket clients, {args.cpu_count} cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save_figure(fig, path, docs)
    return None


def save_figure(fig, path: Path, docs: Path | None) -> None:
    """A matplotlib figure to ``path`` (PNG), copied to ``docs`` too when given, then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    if docs is not None:
        docs.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, docs)
