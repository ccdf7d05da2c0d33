"""What the emulator's REST ledger costs it per event, and what its REST answers cost.

A paced emulator generates events live on one core shared with the pipeline it feeds, and the ledger
(``sim.ledger``) runs on that core beside the generator. This measures, in one process, runs of
``--ticks`` ticks of the synthetic market at ``--rate`` over ``--symbols`` symbols, interleaved:

- ``generate``: the ticks as frames (``sim.sources.tick_frames``), what a paced source does without a
  ledger;
- ``summary``: the same plus ``SyntheticMarket.summary()`` and ``Ledger.apply()``, what it does now;
- ``feed``: the same plus ``Ledger.feed()`` of every frame (events parsed, as for a replay), for
  comparison.

CPU time is the process's (``time.process_time``), per event, median of ``--repeat`` runs; the extra
of ``summary`` over ``generate`` is the ledger's cost. The summary and apply calls are also timed alone
(``perf_counter`` around them), which is less exposed to the noise of other work on the machine. Then
the REST answers' cost: a full-market snapshot of every symbol (made into JSON), the first one making
every previous day, and a previous day's 390 minute bars.

    python bench/sim_ledger.py                      # 3000 symbols, 20,000 events/s, 600 ticks x 5
    python bench/sim_ledger.py --rate 5000 --repeat 9

Prints a Markdown table; writes JSON to ``bench/results/sim_ledger.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import orjson

from sim.ledger import Ledger
from sim.market import SyntheticMarket
from sim.restapi import Call, RestApi
from sim.server import references
from sim.sources import tick_frames

START_MS = 1_795_185_000_000  # 2026-11-20T14:30:00Z


def run(mode: str, args: argparse.Namespace) -> dict[str, float]:
    market = SyntheticMarket(seed=1, symbols=args.symbols, rate=args.rate, tick_ms=50, start_ms=START_MS)
    ledger = Ledger(start_ms=START_MS, seed=1, references=references(market))
    for _ in range(20):  # warm up: first quotes, first bands
        tick_frames(market, 100, send_ts=False)
    events, inside = 0, 0.0
    gc.collect()
    began = time.process_time()
    for _ in range(args.ticks):
        frames = tick_frames(market, 100, send_ts=False)
        events += sum(frame.count for frame in frames)
        if mode == "summary":
            t = time.perf_counter()
            ledger.apply(market.summary())
            inside += time.perf_counter() - t
        elif mode == "feed":
            t = time.perf_counter()
            for frame in frames:
                ledger.feed(frame)
            inside += time.perf_counter() - t
    cpu = time.process_time() - began
    return {"us_per_event": cpu / events * 1e6, "ledger_us_per_event": inside / events * 1e6}


def answers(args: argparse.Namespace) -> dict[str, float]:
    market = SyntheticMarket(seed=1, symbols=args.symbols, rate=args.rate, tick_ms=50, start_ms=START_MS)
    ledger = Ledger(start_ms=START_MS, seed=1, references=references(market))
    for _ in range(1200):  # a minute of market
        tick_frames(market, 100, send_ts=False)
        ledger.apply(market.summary())
    api = RestApi(ledger)
    out = {}
    for label in ("snapshot_all_first_ms", "snapshot_all_ms"):
        t = time.perf_counter()
        orjson.dumps(api.answer(Call("snapshot_all"), "")[1])
        out[label] = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    ledger.previous("SPY").bars()
    out["previous_day_bars_ms"] = (time.perf_counter() - t) * 1e3
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=3000)
    parser.add_argument("--rate", type=int, default=20_000, help="trades and quotes per second")
    parser.add_argument("--ticks", type=int, default=600, help="50 ms ticks per run")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("bench/results/sim_ledger.json"))
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"generate": [], "summary": [], "feed": []}
    for _ in range(args.repeat):
        for mode in runs:
            runs[mode].append(run(mode, args))
    median = {
        mode: {k: statistics.median(r[k] for r in rs) for k in ("us_per_event", "ledger_us_per_event")}
        for mode, rs in runs.items()
    }
    base = median["generate"]["us_per_event"]
    print(f"\n{args.symbols} symbols, {args.rate} events/s, {args.ticks} ticks x {args.repeat} (medians)\n")
    print("| mode | CPU us/event | extra over generate | ledger calls alone, us/event |")
    print("| --- | --- | --- | --- |")
    for mode, m in median.items():
        extra = m["us_per_event"] - base
        print(f"| {mode} | {m['us_per_event']:.3f} | {extra:+.3f} ({100 * extra / base:+.1f}%) | "
              f"{m['ledger_us_per_event']:.3f} |")  # fmt: skip
    costs = answers(args)
    print("\n| REST answer | ms |\n| --- | --- |")
    for label, ms in costs.items():
        print(f"| {label} | {ms:.1f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": runs,
                                     "median": median, "answers": costs}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
