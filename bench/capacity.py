"""A capacity model of mdpipe: cores per component and Redis shards for a feed rate and a number of
dashboard clients, from per-unit CPU costs measured by the benches. ``python -m bench.capacity``.

Nothing is run: the model is arithmetic on the constants below, each with the bench and figure it
comes from (README "Performance", bench/README.md, docs/cluster.md). It prints Markdown tables, writes
``bench/results/capacity.json`` and, with matplotlib, ``bench/results/capacity.png`` (``--docs``: also
``docs/img/capacity.png``). See docs/capacity.md for the reasoning and what the model misses.

Assumptions, all of them:

1. **The feed.** Events/s counts every event of the full stocks feed. The mix is the emulator's
   (``SyntheticMarket``, 10,000 symbols, as in ``bench/mdp_throughput.py``'s stream): 81 % quotes,
   14 % trades, 5 % second/minute aggregates, LULD and imbalances. Costs per event are averages over
   that mix.
2. **Messages.** MDL sends one AMQP message per vendor frame and event class (per MDQ shard when
   ``MDQ_SHARDS`` > 1), and MDP writes one transaction per message while it keeps up. Frames arrive at
   ``FRAMES_PER_S`` = 100/s (the 10 ms ticks of ``bench/e2e``) with ``CLASSES_PER_FRAME`` = 3
   classes on average: 300 messages/s, 33 events each, at 10 k events/s, as the README measured.
   Above ``MDL_BATCH_EVENTS`` (2,000) per message MDL batches: messages never get larger.
3. **CPU = per event + per message.** MDL and MDP each cost a fixed CPU per event plus a fixed CPU per
   AMQP message (the README's figures); RabbitMQ is an estimate (below); everything is one core per
   Python process (one event loop).
4. **Updates per event** (PUBLISHes, each with its state write) fall as messages grow, because a
   processor publishes each channel once per group: measured offline with MDP's own planner and
   writes (``bench/mdp_throughput.py``'s ``plan_offline``, 100,000 events, one message per group),
   interpolated in log(events per message).
5. **Redis** spends ``REDIS_SET_PUBLISH_US`` per update (state write + PUBLISH with one subscriber)
   plus ``REDIS_PER_SUBSCRIBER_US`` for every further WDS replica subscribed to the channel. Every
   WDS replica is taken to subscribe to every channel its dashboards watch (with thousands of clients
   a replica, the busy symbols are watched on all of them); ``trades.SYM`` (``SUBSCRIBED_SHARE``) is not
   on the dashboard.
   Shards are counted at ``REDIS_TARGET`` (65 %) of one Redis thread, with sharded pub/sub (SPUBLISH:
   each shard gets its symbols' writes and publishes; docs/cluster.md measured 0.35x per master with
   3 masters); ``REDIS_REPLICA_FACTOR`` (1.5) more with a replica per master. Classic PUBLISH on a
   cluster sends every message to every node: its publishing cost is never divided.
6. **The dashboard** (scp/apps/_default/static/app.js, ``wanted()``): 4 leaderboards, halts, alerts,
   a watchlist of 5 symbols (``SCP_WATCHLIST``) x ``stats`` and ``quotes`` at ``max_hz`` 4 (WATCH_HZ),
   the chart's ``bars.SYM`` (every bar) and its ``stats.SYM`` (in the watchlist: no extra channel), up
   to 20 ``signals.*`` channels. Rates per channel in ``DASHBOARD``: the 10 watchlist channels at their
   4 Hz cap (a watched name quotes faster than that), leaderboards at 1 Hz (``MDP_LEADERS_INTERVAL_S``),
   bars 1/s, alerts 2/s, halts 0.05/s, signals 1/s in all: 48 updates/s per client, whatever the
   event rate (above a few thousand events/s the caps bind).
7. **WDS** costs ``WDS_US_PER_MESSAGE`` per WebSocket message plus ``WDS_US_PER_DELIVERY`` per update
   delivered (a fit of ``bench/wds_throughput.py``'s two measured points, below), plus
   ``WDS_US_PER_UPDATE_IN`` per update read from Redis (an ESTIMATE: not measured apart) for the
   ``WATCHED_SHARE`` of updates its clients' channels get. Updates per message rise with the
   deliveries per client, between the two measured points (1.2 at 65/s, 3.1 at 260/s).
8. **Sizing.** Scale-out components (MDP by ``MDQ_SHARDS``, WDS) get replicas of one core each, busy at
   most ``CORE_TARGET`` (70 %). MDL is one leader per vendor connection (the others are standbys):
   it cannot scale out, so a row where it passes 70 % of its core is flagged.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# -- the feed and its framing ----------------------------------------------------------------------
MIX = {"quotes": 0.81, "trades": 0.14, "aggregates, LULD, imbalances": 0.05}  # plan_offline, 10k symbols
FRAMES_PER_S = 100  # bench/e2e --tick-ms 10
CLASSES_PER_FRAME = 3  # README: "about 700 us per AMQP message of 33 events at 300 messages/s" at 10 k
MDL_BATCH_EVENTS = 2000  # mdpipe/settings.py, the most events in one message

# -- MDL: README table, "MDL: emulator flat-out into MDL into RabbitMQ": 2.79 us CPU/event at 486
# events/message; README text: "about 100 us per message in aiormq/pamqp".
MDL_US_PER_MESSAGE = 100.0
MDL_US_PER_EVENT = 2.79 - MDL_US_PER_MESSAGE / 486  # 2.58: the rest, per event

# -- MDP: README table, "MDP: one mdpipe mdp ... 5.1-9.3 us CPU/event in MDP" (a backlog: per-message
# costs amortised over groups of ~18 messages of 500 events): the midpoint, per event; README text:
# each AMQP message "costs MDP about 400 us of aio-pika and asyncio".
MDP_US_PER_EVENT = 7.2
MDP_US_PER_MESSAGE = 400.0

# -- RabbitMQ: not measured per message by any bench. ESTIMATE: the floor it showed in bench/e2e
# (0.08-0.14 cores from 10 k to 342 k events/s: Erlang schedulers, management stats) plus 50 us per
# message (publish, route, deliver, ack) and 1 us per KB (events are ~150 bytes of JSON).
RABBITMQ_FLOOR_CORES = 0.08
RABBITMQ_US_PER_MESSAGE = 50.0
RABBITMQ_US_PER_KB = 1.0
EVENT_BYTES = 150

# -- Updates (PUBLISHes) and their Redis cost.
# plan_offline of bench/mdp_throughput.py (run for this model: --events 100000 --batch N, one message per
# group), publishes per event by events per message, 10,000 and 3,000 symbols (the emulator's default):
UPDATES_PER_EVENT = {
    10_000: [(33, 0.897), (100, 0.764), (333, 0.627), (1000, 0.512)],
    3_000: [(33, 0.856), (100, 0.709), (333, 0.558), (1000, 0.433)],
}
# An issue's figures: one Redis spends 1.3 us of CPU per PUBLISH and 2 us per SET + PUBLISH. Re-measured once
# on this machine for this model (private redis-server, 100-command pipelines, 150-byte payloads): SET +
# PUBLISH 2.07 us; PUBLISH 0.91 us with no subscriber, 1.06 with 1, 2.03 with 4, 4.45 with 16.
REDIS_SET_PUBLISH_US = 2.0
REDIS_PUBLISH_US = 1.3
REDIS_PER_SUBSCRIBER_US = 0.25  # the slope of the re-measurement, per further subscribed connection
SUBSCRIBED_SHARE = 0.9  # updates on channels a dashboard can watch: all but trades.SYM (about half
#                         of the trade-driven updates, which are about a fifth of all)
REDIS_TARGET = 0.65  # of one Redis thread
REDIS_REPLICA_FACTOR = 1.5  # docs/cluster.md: busiest master 0.35x without replicas, 0.51x with

# -- WDS: bench/wds_throughput.py, 1,000 clients (README table): at 2,000 updates/s 260 k deliveries/s
# in 83.6 k messages/s (the two runs' mean) at 0.795 cores; at 500 updates/s 65.0 k deliveries/s in
# 56.0 k messages/s at 0.45 cores. Solving cores = a x messages + b x deliveries for both points:
WDS_US_PER_MESSAGE = 7.16
WDS_US_PER_DELIVERY = 0.76
WDS_US_PER_UPDATE_IN = 2.0  # ESTIMATE: reading and routing one update from Redis, not measured apart
WATCHED_SHARE = 0.6  # bench/e2e at 10 k: WDS took in 5,815 of 9,400 updates/s for 1,000 clients
WDS_UPDATES_PER_MESSAGE = [(65, 1.2), (260, 3.1)]  # deliveries/s per client -> updates/message

CORE_TARGET = 0.70  # busy share of a core for a replica

# -- The dashboard: channel -> (channels, updates/s each) -------------------------------------------
DASHBOARD = {
    "leaders.* (4 boards, max_hz 0)": (4, 1.0),
    "stats.SYM + quotes.SYM, 5 watched symbols (max_hz 4)": (10, 4.0),
    "bars.SYM of the chart (max_hz 0)": (1, 1.0),
    "alerts (max_hz 0)": (1, 2.0),
    "halts (max_hz 0)": (1, 0.05),
    "signals.* (up to 20 channels, in all)": (1, 1.0),
}

RATES = [20_000, 100_000, 300_000]
CLIENTS = [1_000, 10_000, 100_000]

# -- The measured point: README "End to end", 10,000 asked, 1,000 clients (bench/e2e). Its clients are
# not dashboards: 3 symbols x quotes, trades, stats + 4 leaderboards, unthrottled, 3,000 symbols.
MEASURED = {
    "events_s": 10_452,
    "applied_s": 10_458,
    "wds_in_s": 5_815,
    "deliveries_s": 91_104,
    "clients": 1_000,
    "cores": {"MDL": 0.14, "RabbitMQ": 0.11, "MDP": 0.33, "Redis": 0.12, "WDS": 0.60},
}


def interp_log(points: list[tuple[float, float]], x: float) -> float:
    """Linear in log(x) between the points, clamped at both ends."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x <= x1:
            return y0 + (y1 - y0) * (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return points[-1][1]


def interp(points: list[tuple[float, float]], x: float) -> float:
    """Linear between the points, clamped at both ends."""
    (x0, y0), (x1, y1) = points
    return min(max(y0 + (y1 - y0) * (x - x0) / (x1 - x0), y0), y1)


def messages_per_s(events_s: float, shards: int) -> float:
    """AMQP messages/s: one per frame, class and shard, no smaller than MDL_BATCH_EVENTS allows."""
    return max(FRAMES_PER_S * CLASSES_PER_FRAME * shards, events_s / MDL_BATCH_EVENTS) if events_s else 0.0


def state_building(events_s: float, symbols: int = 10_000, shards: int | None = None) -> dict:
    """MDL, RabbitMQ and MDP at ``events_s``; MDP's replicas (``MDQ_SHARDS``) chosen to keep each under
    CORE_TARGET unless ``shards`` is given."""
    n = shards or 1
    while True:
        msgs = messages_per_s(events_s, n)
        per_msg = events_s / msgs if msgs else 0.0
        mdp = (events_s * MDP_US_PER_EVENT + msgs * MDP_US_PER_MESSAGE) / 1e6
        if shards or mdp / n <= CORE_TARGET or n >= 256:
            break
        n += 1
    mdl = (events_s * MDL_US_PER_EVENT + msgs * MDL_US_PER_MESSAGE) / 1e6
    rabbit = (
        RABBITMQ_FLOOR_CORES
        + (msgs * RABBITMQ_US_PER_MESSAGE + events_s * EVENT_BYTES / 1e3 * RABBITMQ_US_PER_KB) / 1e6
    )
    updates = events_s * interp_log(UPDATES_PER_EVENT[symbols], max(per_msg, 1.0))
    return {
        "events_s": events_s,
        "messages_s": round(msgs),
        "events_per_message": round(per_msg, 1),
        "updates_s": round(updates),
        "updates_per_event": round(updates / events_s, 3) if events_s else 0.0,
        "MDL": mdl,
        "mdl_over_target": mdl > CORE_TARGET,
        "RabbitMQ": rabbit,
        "MDP": mdp,
        "mdp_replicas": n,
    }


def dashboard_load() -> tuple[float, int]:
    """Updates/s delivered to one dashboard, and its channels."""
    return sum(n * hz for n, hz in DASHBOARD.values()), sum(n for n, _ in DASHBOARD.values())


def wds_cost(clients: int, deliveries_per_client: float, updates_in_per_replica: float) -> dict:
    """WDS cores and replicas for ``clients`` each taking ``deliveries_per_client`` updates/s."""
    upm = interp(WDS_UPDATES_PER_MESSAGE, deliveries_per_client)
    per_client = (
        deliveries_per_client / upm * WDS_US_PER_MESSAGE + deliveries_per_client * WDS_US_PER_DELIVERY
    ) / 1e6
    input_cores = updates_in_per_replica * WDS_US_PER_UPDATE_IN / 1e6
    room = CORE_TARGET - input_cores
    replicas = math.ceil(clients * per_client / room) if room > 0 else None
    return {
        "updates_per_message": round(upm, 2),
        "cores_per_1k_clients": per_client * 1000,
        "input_cores_per_replica": input_cores,
        "replicas": replicas,
        "WDS": clients * per_client + (replicas or 0) * input_cores,
    }


def redis_cost(updates_s: float, wds_replicas: int) -> dict:
    """Redis CPU for ``updates_s`` with ``wds_replicas`` subscribed, and the shards it needs."""
    fanout = SUBSCRIBED_SHARE * REDIS_PER_SUBSCRIBER_US * max(wds_replicas - 1, 0)
    cores = updates_s * (REDIS_SET_PUBLISH_US + fanout) / 1e6
    publish_only = updates_s * (REDIS_PUBLISH_US + fanout) / 1e6  # what every node pays with classic PUBLISH
    return {
        "Redis": cores,
        "redis_publish_cores": publish_only,
        "shards": max(1, math.ceil(cores / REDIS_TARGET)),
        "shards_with_replicas": max(1, math.ceil(cores * REDIS_REPLICA_FACTOR / REDIS_TARGET)),
        "classic_publish_fits": publish_only < REDIS_TARGET,
        # nodes a classic-PUBLISH cluster would need: the writes divide, the publishing does not
        "classic_nodes": math.ceil((cores - publish_only) / (REDIS_TARGET - publish_only))
        if publish_only < REDIS_TARGET
        else None,
    }


def scenario(events_s: float, clients: int) -> dict:
    s = state_building(events_s)
    per_client, channels = dashboard_load()
    w = wds_cost(clients, per_client, s["updates_s"] * WATCHED_SHARE)
    r = redis_cost(s["updates_s"], w["replicas"] or 0)
    out = {
        **s,
        "clients": clients,
        "channels_per_client": channels,
        "deliveries_s": round(clients * per_client),
        **w,
        **r,
    }
    # provisioned: MDL's leader (its standby not counted), RabbitMQ, MDP and WDS replicas, Redis masters
    out["provisioned_cores"] = (
        1 + math.ceil(s["RabbitMQ"] / CORE_TARGET) + s["mdp_replicas"] + (w["replicas"] or 0) + r["shards"]
    )
    return out


def check() -> dict:
    """The model at bench/e2e's measured point: its rate, its clients' measured traffic."""
    m = MEASURED
    s = state_building(m["events_s"], symbols=3_000, shards=1)
    w = wds_cost(m["clients"], m["deliveries_s"] / m["clients"], m["wds_in_s"])
    w["replicas"] = 1
    w["WDS"] = m["clients"] * w["cores_per_1k_clients"] / 1000 + w["input_cores_per_replica"]
    r = redis_cost(s["updates_s"], 1)
    predicted = {
        "MDL": s["MDL"],
        "RabbitMQ": s["RabbitMQ"],
        "MDP": s["MDP"],
        "Redis": r["Redis"],
        "WDS": w["WDS"],
    }
    rows = [
        {
            "component": k,
            "predicted": round(v, 3),
            "measured": m["cores"][k],
            "error_pct": round(100 * (v / m["cores"][k] - 1)),
        }
        for k, v in predicted.items()
    ]
    tp, tm = sum(predicted.values()), sum(m["cores"].values())
    rows.append(
        {
            "component": "total",
            "predicted": round(tp, 3),
            "measured": round(tm, 2),
            "error_pct": round(100 * (tp / tm - 1)),
        }
    )
    return {"point": m, "model_inputs": {**s, "updates_per_message": w["updates_per_message"]}, "rows": rows}


def fmt(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def table(rows: list[dict]) -> str:
    head = (
        "| events/s | clients | msgs/s (ev/msg) | updates/s | MDL cores | RabbitMQ cores "
        "| MDP cores (replicas) | WDS cores (replicas) | Redis cores | Redis shards @65% (with replicas) "
        "| classic PUBLISH cluster | cores provisioned |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
    )
    lines = [head]
    for r in rows:
        mdl = fmt(r["MDL"]) + (" (over 70%: one core)" if r["mdl_over_target"] else "")
        if r["shards"] == 1:
            classic = "one node is enough"
        elif r["classic_publish_fits"]:
            classic = f"{r['classic_nodes']} nodes"
        else:
            classic = f"never: {fmt(r['redis_publish_cores'])} cores of PUBLISH on every node"
        lines.append(
            f"| {r['events_s']:,} | {r['clients']:,} | {r['messages_s']:,} ({r['events_per_message']:.0f}) "
            f"| {r['updates_s']:,} | {mdl} | {fmt(r['RabbitMQ'])} | {fmt(r['MDP'])} ({r['mdp_replicas']}) "
            f"| {fmt(r['WDS'])} ({r['replicas']}) | {fmt(r['Redis'])} "
            f"| {r['shards']} ({r['shards_with_replicas']}) | {classic} | {r['provisioned_cores']} |"
        )
    return "\n".join(lines)


def check_table(c: dict) -> str:
    lines = ["| component | model, cores | measured, cores | error |", "| --- | ---: | ---: | ---: |"]
    for r in c["rows"]:
        lines.append(
            f"| {r['component']} | {r['predicted']:.2f} | {r['measured']:.2f} | {r['error_pct']:+d}% |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    rates = [r * 1000 for r in range(5, 401, 5)]
    series = [scenario(r, 10_000) for r in rates]
    for key, label in (
        ("MDL", "MDL"),
        ("RabbitMQ", "RabbitMQ (estimate)"),
        ("MDP", "MDP"),
        ("Redis", "Redis"),
        ("WDS", "WDS"),
    ):
        a.plot([r / 1000 for r in rates], [s[key] for s in series], label=label)
    a.axhline(CORE_TARGET, color="grey", lw=0.8, ls=":")
    for key, colour in (("MDL", "C0"), ("RabbitMQ", "C1"), ("MDP", "C2"), ("Redis", "C3")):
        a.plot(MEASURED["events_s"] / 1000, MEASURED["cores"][key], "o", color=colour, mfc="none")
    a.plot([], [], "o", color="grey", mfc="none", label="measured, bench/e2e 10 k")
    a.set(xlabel="events/s (thousands)", ylabel="cores busy", title="Cores by component, 10,000 dashboards")
    a.legend(fontsize=8)
    clients = [int(10 ** (2 + k / 10)) for k in range(0, 31)]
    for rate in RATES:
        b.plot(clients, [scenario(rate, c)["WDS"] for c in clients], label=f"WDS, {rate // 1000} k events/s")
    b.plot(clients, [scenario(100_000, c)["Redis"] for c in clients], ls="--", label="Redis, 100 k events/s")
    b.set(
        xscale="log",
        yscale="log",
        xlabel="dashboard clients",
        ylabel="cores busy",
        title="WDS (and Redis) against clients",
    )
    b.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--json", type=Path, default=RESULTS / "capacity.json")
    p.add_argument("--plot", type=Path, default=RESULTS / "capacity.png")
    p.add_argument("--docs", action="store_true", help="copy the plot to docs/img/capacity.png")
    args = p.parse_args(argv)

    rows = [scenario(rate, clients) for rate in RATES for clients in CLIENTS]
    per_client, channels = dashboard_load()
    c = check()
    print(
        f"# Capacity model (bench/capacity.py)\n\n"
        f"Dashboard: {channels} channels, {per_client:g} updates/s per client.\n"
    )
    print(table(rows))
    print(
        "\nCores are busy cores; replicas are one-core processes at most 70 % busy; Redis shards assume "
        "sharded pub/sub.\n"
    )
    mi = c["model_inputs"]
    print(
        f"## Check: bench/e2e at {MEASURED['events_s']:,} events/s, {MEASURED['clients']:,} clients "
        f"(README, End to end)\n\n"
        f"Model inputs: {mi['messages_s']} messages/s of {mi['events_per_message']:.0f} events, "
        f"{mi['updates_per_event']} updates/event, the clients' measured {MEASURED['deliveries_s']:,} "
        f"deliveries/s and {MEASURED['wds_in_s']:,} WDS updates in/s, {mi['updates_per_message']} "
        f"updates/message.\n"
    )
    print(check_table(c))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    drew = plot(rows, args.plot)
    doc = {
        "constants": {
            k: v for k, v in globals().items() if k.isupper() and isinstance(v, (int, float, dict, list))
        },
        "dashboard": {"channels": channels, "updates_s": per_client},
        "scenarios": rows,
        "check": c,
        "plot": str(args.plot.relative_to(ROOT)) if drew and args.plot.is_relative_to(ROOT) else None,
    }
    doc["constants"].pop("ROOT", None)
    doc["constants"]["UPDATES_PER_EVENT"] = {str(k): v for k, v in UPDATES_PER_EVENT.items()}
    args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"\nJSON: {args.json}")
    if drew:
        print(f"plot: {args.plot}")
        if args.docs:
            shutil.copyfile(args.plot, ROOT / "docs" / "img" / "capacity.png")
            print("copied to docs/img/capacity.png")
    else:
        print("no plot: matplotlib is not installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
