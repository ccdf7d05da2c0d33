"""The soak's figures: windows between samples (per sample, per minute, per quarter), the verdicts, the
Markdown tables and the plot."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdl_throughput import fmt_int
from wds_throughput import _ms

from ..e2e.pipeline import COMPONENTS, Reading
from ..e2e.report import NAMES, _c, _n, _of, between, counts, save_figure, tables

CLIMB_FDS = 2.0  # a fitted rise of this many descriptors over the judged span, all of the last quarter
# above all of the first: a steady climb, whatever the range
HOPS = (
    ("sim_sent", "emulator sent"), ("mdl_published", "MDL published"), ("mdp_applied", "MDP applied"),
    ("wds_in", "WDS updates in"), ("wds_delivered", "WDS delivered"),
)  # fmt: skip


@dataclass
class Point:
    """One sample: point-in-time values and the cumulative reading the windows are differences of."""

    due: float  # seconds since the flow began, as scheduled (k x --interval)
    t: float  # seconds since the flow began, as taken
    reading: Reading
    rss_mb: dict[str, float]
    fds: dict[str, float]
    redis_used_mb: float  # Redis's INFO used_memory (server-wide)
    redis_keys: float  # keys in the bench's Redis database (INFO keyspace: other tenants' too)


def shared(component: str, args: Any) -> bool:
    """RabbitMQ, and Redis unless private: servers other tenants use too (their RSS, fds and CPU)."""
    return component == "rabbitmq" or (component == "redis" and not args.private_redis)


def window(points: list[Point], i: int, j: int, label: str, args: Any) -> dict[str, Any]:
    """From sample ``i`` to sample ``j``: rates, latency and CPU over it, RSS and fds at its end, the fds'
    smallest and largest value over its samples."""
    a, b = points[i], points[j]
    w = between(a.reading, b.reading)
    inside = points[i + 1 : j + 1]
    return {
        "label": label,
        "phase": "warm-up" if b.due <= args.warmup else "soak" if a.due >= args.warmup else "warm-up/soak",
        "t0": round(a.t, 2),
        "t1": round(b.t, 2),
        "per_s": {k: w["per_s"][k] for k, _ in HOPS},
        "received_per_s": w["received_per_s"],
        "latency": w["latency"],
        "cores": w["cores"],
        "busy_cores": w["busy_cores"],
        "other_cores": w["other_cores"],
        "rss_mb": b.rss_mb,
        "fds": b.fds,
        "fds_min": {c: min(p.fds.get(c, math.nan) for p in inside) for c in COMPONENTS},
        "fds_max": {c: max(p.fds.get(c, math.nan) for p in inside) for c in COMPONENTS},
        "redis_used_mb": b.redis_used_mb,
        "redis_keys": b.redis_keys,
    }


def samples(points: list[Point], args: Any) -> list[dict[str, Any]]:
    return [window(points, k - 1, k, _clock(points[k].due), args) for k in range(1, len(points))]


def minutes(points: list[Point], args: Any) -> list[dict[str, Any]]:
    """A window per minute of the run (by the samples' schedule; a last partial one too)."""
    out, i = [], 0
    end = points[-1].due
    m = 1
    while i < len(points) - 1:
        j = max(k for k, p in enumerate(points) if p.due <= min(m * 60, end) + 1e-6)
        if j > i:
            out.append(window(points, i, j, f"{m - 1}-{_minute(points[j].due)}", args))
            i = j
        m += 1
    return out


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _minute(seconds: float) -> str:
    return f"{seconds / 60:g}" if seconds % 60 else f"{seconds / 60:.0f}"


def slope_per_min(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` against ``ts`` (seconds), per minute; NaN without two values."""
    pairs = [(t / 60, y) for t, y in zip(ts, ys, strict=True) if y == y]
    if len(pairs) < 2:
        return math.nan
    mx = math.fsum(x for x, _ in pairs) / len(pairs)
    my = math.fsum(y for _, y in pairs) / len(pairs)
    sxx = math.fsum((x - mx) ** 2 for x, _ in pairs)
    return math.fsum((x - mx) * (y - my) for x, y in pairs) / sxx if sxx else math.nan


def judge(points: list[Point], args: Any) -> dict[str, Any]:
    """The verdicts over the samples after the warm-up: per component, memory (RSS slope under
    ``--max-rss-slope`` MB/min) and descriptors (range at most ``--max-fd-range``, no steady climb);
    latency (p99 of the last quarter within ``--max-p99-drift-pct`` % or ``--max-p99-drift-ms`` of the
    first's). ``ok``: every verdict that counts (not those of shared servers) passed."""
    first = next((k for k, p in enumerate(points) if p.due >= args.warmup - 1e-6), len(points))
    judged = points[first:]
    if len(judged) < 5:
        return {"ok": False, "error": f"{len(judged)} samples after the warm-up: too few to judge"}
    ts = [p.t for p in judged]
    span_min = (ts[-1] - ts[0]) / 60
    q = max(1, len(judged) // 4)
    components: dict[str, Any] = {}
    for c in COMPONENTS:
        rss = [p.rss_mb.get(c, math.nan) for p in judged]
        fds = [p.fds.get(c, math.nan) for p in judged]
        known_rss, known_fds = [x for x in rss if x == x], [x for x in fds if x == x]
        slope = slope_per_min(ts, rss)
        fd_slope = slope_per_min(ts, fds)
        fd_range = max(known_fds) - min(known_fds) if known_fds else math.nan
        climbing = (
            fd_slope == fd_slope
            and fd_slope * span_min >= CLIMB_FDS
            and min(fds[-q:], default=math.nan) > max(fds[:q], default=math.nan)
        )
        failed = []
        if len(known_rss) < len(rss) or len(known_fds) < len(fds):
            failed.append("not read at every sample (gone?)")
        if slope >= args.max_rss_slope:
            failed.append(f"RSS {slope:+.2f} MB/min")
        if fd_range > args.max_fd_range:
            failed.append(f"fds range {fd_range:.0f}")
        if climbing:
            failed.append(f"fds climbing ({fd_slope * span_min:+.1f} over {span_min:.1f} min)")
        components[c] = {
            "rss_first_mb": known_rss[0] if known_rss else math.nan,
            "rss_last_mb": known_rss[-1] if known_rss else math.nan,
            "rss_growth_mb": known_rss[-1] - known_rss[0] if known_rss else math.nan,
            "rss_slope_mb_per_min": slope,
            "fds_min": min(known_fds, default=math.nan),
            "fds_max": max(known_fds, default=math.nan),
            "fds_range": fd_range,
            "fds_slope_per_min": fd_slope,
            "fds_climbing": climbing,
            "shared": shared(c, args),
            "failed": failed,
            "ok": not failed and bool(known_rss) and bool(known_fds),
        }
    last = len(points) - 1
    n = last - first
    b1, b3 = first + max(1, round(n / 4)), last - max(1, round(n / 4))
    q1, q4 = (
        between(points[first].reading, points[b1].reading),
        between(points[b3].reading, points[last].reading),
    )
    p99_first, p99_last = q1["latency"]["p99_ms"], q4["latency"]["p99_ms"]
    drift_ms = p99_last - p99_first
    drift_pct = drift_ms / p99_first * 100 if p99_first > 0 else math.nan
    latency_ok = drift_ms == drift_ms and (
        drift_pct < args.max_p99_drift_pct or drift_ms < args.max_p99_drift_ms
    )
    latency = {
        "first_quarter": {"t0": points[first].t, "t1": points[b1].t, **q1["latency"]},
        "last_quarter": {"t0": points[b3].t, "t1": points[last].t, **q4["latency"]},
        "p50_drift_ms": q4["latency"]["p50_ms"] - q1["latency"]["p50_ms"],
        "p99_drift_ms": drift_ms,
        "p99_drift_pct": drift_pct,
        "ok": latency_ok,
    }
    whole = window(points, first, last, "judged", args)
    own_ok = all(v["ok"] for v in components.values() if not v["shared"])
    return {
        "from_s": points[first].t,
        "to_s": points[last].t,
        "samples": len(judged),
        "components": components,
        "latency": latency,
        "judged_window": {k: whole[k] for k in ("per_s", "received_per_s", "latency", "cores", "busy_cores")},
        "ok": own_ok and latency_ok,
    }


def other_load(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The machine's busy cores outside the pipeline and the bench, over the samples after the warm-up."""
    other = [r["other_cores"] for r in rows if r["phase"] == "soak"] or [math.nan]
    busy = [r["busy_cores"] for r in rows if r["phase"] == "soak"] or [math.nan]
    return {"other_mean": math.fsum(other) / len(other), "other_max": max(other),
            "busy_mean": math.fsum(busy) / len(busy), "busy_max": max(busy)}  # fmt: skip


def drops(points: list[Point]) -> dict[str, float]:
    """What was lost or skipped from the first sample to the last."""
    a, b = points[0].reading, points[-1].reading
    c0, c1 = counts(a.metrics), counts(b.metrics)
    d = {k: c1[k] - c0[k] for k in c1}
    k0, k1 = a.clients, b.clients
    return {
        "mdl_handoff_frames": d["mdl_dropped_frames"],
        "mdl_reconnects": d["mdl_reconnects"],
        "sim_slow_consumer": d["sim_slow_consumer"],
        "mdp_stale_messages": d["mdp_stale"],
        "mdp_failed_messages": d["mdp_failed"],
        "wds_input_conflated": d["wds_input_conflated"],
        "wds_conflated": d["wds_conflated"],
        "wds_dropped": d["wds_dropped"],
        "wds_slow_closes": d["wds_slow_closes"],
        "client_gaps": k1.get("gaps", 0) - k0.get("gaps", 0),
        "client_closes": sum(k1.get(k, 0) - k0.get(k, 0) for k in ("closed", "closed_slow", "failed")),
    }


# -- text ----------------------------------------------------------------------------------------------


def _fds(c: str):
    def cell(f: dict[str, Any]) -> str:
        lo, hi = f["fds_min"][c], f["fds_max"][c]
        return _n(lo) if lo == hi or hi != hi else f"{_n(lo)}-{_n(hi)}"

    return cell


SPECS = (
    (
        "Rates (per second) and end-to-end latency",
        (
            ("phase", lambda f: f["phase"]),
            *((title, _of("per_s", key)) for key, title in HOPS),
            ("clients received", lambda f: _n(f["received_per_s"])),
            ("p50 ms", _of("latency", "p50_ms", _ms)),
            ("p99 ms", _of("latency", "p99_ms", _ms)),
            ("latency samples", _of("latency", "samples")),
            ("machine busy", lambda f: _c(f["busy_cores"])),
            ("other", lambda f: _c(f["other_cores"])),
        ),
    ),
    (
        "RSS at the end (MB; Redis used: its INFO used_memory, MB; Redis keys: in the bench's database)",
        (
            *((NAMES[c], _of("rss_mb", c, lambda x: f"{x:.1f}")) for c in COMPONENTS),
            ("Redis used", lambda f: f"{f['redis_used_mb']:.1f}"),
            ("Redis keys", lambda f: _n(f["redis_keys"])),
        ),
    ),
    (
        "Open file descriptors (smallest-largest over the samples)",
        tuple((NAMES[c], _fds(c)) for c in COMPONENTS),
    ),
    (
        "CPU (cores, mean)",
        (*((NAMES[c], _of("cores", c, _c)) for c in COMPONENTS), ("bench", _of("cores", "bench", _c))),
    ),
)


def verdict_lines(verdict: dict[str, Any], args: Any) -> list[str]:
    if "error" in verdict:
        return [f"Verdict: none: {verdict['error']}."]
    lines = [
        f"Verdicts over the {verdict['samples']} samples after the warm-up ({verdict['from_s'] / 60:.1f} to "
        f"{verdict['to_s'] / 60:.1f} min): RSS slope < {args.max_rss_slope:g} MB/min, fds range <= "
        f"{args.max_fd_range:g} and no steady climb",
        "",
        "| component | RSS first -> last MB | growth MB | slope MB/min | fds min-max | fds range | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for c, v in verdict["components"].items():
        word = "pass" if v["ok"] else "FAIL: " + "; ".join(v["failed"] or ["not read"])
        cells = [
            NAMES[c], f"{v['rss_first_mb']:.1f} -> {v['rss_last_mb']:.1f}", f"{v['rss_growth_mb']:+.1f}",
            f"{v['rss_slope_mb_per_min']:+.2f}", f"{_n(v['fds_min'])}-{_n(v['fds_max'])}", _n(v["fds_range"]),
            word + (" (shared server)" if v["shared"] else ""),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lat = verdict["latency"]
    q1, q4 = lat["first_quarter"], lat["last_quarter"]
    word = "pass" if lat["ok"] else "FAIL"
    lines += [
        "",
        f"Latency drift: p99 of the last quarter against the first (pass: < {args.max_p99_drift_pct:g} % or "
        f"< {args.max_p99_drift_ms:g} ms more)",
        "",
        "| quarter | minutes | p50 ms | p99 ms | samples |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, qq in (("first", q1), ("last", q4)):
        lines.append(f"| {name} | {qq['t0'] / 60:.1f}-{qq['t1'] / 60:.1f} | {_ms(qq['p50_ms'])} | "
                     f"{_ms(qq['p99_ms'])} | {fmt_int(qq['samples'])} |")  # fmt: skip
    lines += [
        "",
        f"p99 drift {lat['p99_drift_ms']:+.1f} ms ({lat['p99_drift_pct']:+.0f} %), p50 drift "
        f"{lat['p50_drift_ms']:+.1f} ms: {word}.",
    ]
    if any(v["shared"] for v in verdict["components"].values()):
        lines.append(
            "Shared servers (RabbitMQ; Redis without --private-redis): their RSS and fds include other "
            "tenants' queues, keys and connections, so their verdicts are shown but not counted by --strict."
        )
    return lines


def tables_text(rows: list[dict[str, Any]], by: str) -> list[str]:
    return tables(rows, SPECS, "minute" if by == "minutes" else "at m:ss")


# -- plot ----------------------------------------------------------------------------------------------


def plot(points: list[Point], rows: list[dict[str, Any]], verdict, args, path: Path, docs) -> str | None:
    """RSS per component, open fds (change since the warm-up's end) and p50/p99 per sample, against
    minutes; the error message, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot"
    if len(points) < 2:
        return "fewer than two samples: no plot"
    x = [p.t / 60 for p in points]
    base = next((p for p in points if p.due >= args.warmup - 1e-6), points[-1])
    fig, (ax_rss, ax_fd, ax_lat) = plt.subplots(3, 1, figsize=(11, 10), dpi=110, sharex=True)
    for c in COMPONENTS:
        ax_rss.plot(x, [p.rss_mb.get(c, math.nan) for p in points], label=NAMES[c])
        ax_fd.plot(x, [p.fds.get(c, math.nan) - base.fds.get(c, math.nan) for p in points], label=NAMES[c])
    xl = [r["t1"] / 60 for r in rows]
    ax_lat.plot(xl, [r["latency"]["p50_ms"] for r in rows], "o-", markersize=3, label="p50")
    ax_lat.plot(xl, [r["latency"]["p99_ms"] for r in rows], "s-", markersize=3, label="p99")
    if "latency" in verdict:
        for name, q in (
            ("first", verdict["latency"]["first_quarter"]),
            ("last", verdict["latency"]["last_quarter"]),
        ):
            ax_lat.hlines(q["p99_ms"], q["t0"] / 60, q["t1"] / 60, colors="red", linewidth=2,
                          label="p99 of the first and last quarter" if name == "first" else None)  # fmt: skip
    ax_lat.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax_lat.yaxis.set_major_formatter(plain)
    ax_lat.yaxis.set_minor_formatter(plain)
    for ax in (ax_rss, ax_fd, ax_lat):
        ax.axvspan(0, args.warmup / 60, color="grey", alpha=0.15, label="warm-up" if ax is ax_rss else None)
        ax.grid(True, which="both", alpha=0.3)
    ax_rss.set_ylabel("RSS (MB)")
    ax_fd.set_ylabel("open fds, change since warm-up")
    ax_lat.set_ylabel("emulator send to client (ms)")
    ax_lat.set_xlabel("minutes since the flow began")
    ax_rss.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")  # the fds' colours too
    ax_lat.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax_rss.set_title(f"mdpipe soak: {fmt_int(args.rate)} events/s, {fmt_int(args.clients)} WebSocket "
                     f"clients, {args.cpu_count} cores")  # fmt: skip
    save_figure(fig, path, docs)
    return None
