"""The bench's WebSocket clients: K connections spread over P processes of their own, each subscribed to
its channels of a plan (a few symbols' ``quotes``, ``trades`` and ``stats`` channels, and the leaderboards).

Each client process counts what arrives into its slot of a shared file of int64 values (``SharedInts``);
the bench reads the slots whenever it likes and takes differences over its windows, so nothing has to be
sent back at the end. Per slot: counters (``FIELDS``), then the histograms (``HISTOGRAMS``).

Messages are parsed only as far as needed, with two compiled regular expressions over the raw bytes
(WDS writes each event as ``{"event":"update",["conflated":true,]"type":..,"channel":..,"seq":..`` or
``{"event":"snapshot","channel":..,"seq":..``):

- every event: its channel and ``seq``, checked against the channel's previous one for this client: a
  jump without ``conflated`` is a gap (updates lost before the client), a step back is out of order;
- every ``"_st":<ns>`` of a message without a snapshot (the emulator's send stamp, in each trade of a
  ``trades`` update and in a ``quote`` update): latency = ``time.time_ns()`` when ``recv`` returned
  minus the stamp (same machine, same clock): histogram ``e2e``;
- every update's envelope ``sent`` (ms: when MDP's script published it): receive time minus that,
  histogram ``published`` (MDP publish to client: Redis pub/sub, WDS, the socket and the client);
- every ``LAG_TICK_S`` a ticker measures how late the client's event loop wakes it: histogram
  ``loop_lag`` (a client process short of CPU delays every receive time by that much).

Histograms are log scale, ``PER_OCTAVE`` buckets per doubling (2.2% wide) from 1 µs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

from procs import Child, SharedInts, child_env, proc_cpu

HEADER = 8  # value 0: the stop flag (1: cancel the connections and exit)
STOP = 0
FIELDS = (
    "connected", "subscribed", "messages", "bytes", "snapshots",
    "quotes", "trades", "stats", "leaders", "other",
    "conflated", "gaps", "out_of_order", "stamps", "closed_slow", "closed", "failed",
)  # fmt: skip
F = {name: i for i, name in enumerate(FIELDS)}
KINDS = ("quotes", "trades", "stats", "leaders")  # updates counted by channel kind; the rest: "other"
PER_OCTAVE = 32
BUCKETS = 28 * PER_OCTAVE  # 1 µs .. 2^28 µs (268 s)
HISTOGRAMS = ("e2e", "published", "loop_lag")
SLOT = len(FIELDS) + BUCKETS * len(HISTOGRAMS)
LAG_TICK_S = 0.01
CONNECT_CONCURRENCY = 100  # handshakes in flight per client process
STALL_S = 15.0  # no client more subscribed this long: the bench goes on with those it has

EVENT_RE = re.compile(
    rb'\{"event":"(update|snapshot)",(?:"conflated":(true),)?(?:"type":"[^"]*",)?"channel":"([^"]+)","seq":(\d+)'
    rb'(?:,"ts":-?\d+,"sent":(\d+))?'
)
STAMP_RE = re.compile(rb'"_st":(\d+)')
BOARDS = ("gainers", "losers", "volume", "gappers")


def channel_plan(
    clients: int, per_client: int, universe: int, sim_seed: int, seed: int, popularity: str, boards: list[str]
) -> list[list[str]]:
    """Each client's channels: ``per_client`` distinct symbols of the emulator's universe (chosen in
    proportion to their activity, the emulator's Zipf weights, or uniformly), their quotes, trades and
    stats channels, then ``leaders.<board>`` for each board."""
    from sim.universe import build_universe

    instruments = build_universe(random.Random(sim_seed), universe)  # what SyntheticMarket builds
    symbols = [inst.sym for inst in instruments]
    weights = [inst.weight for inst in instruments] if popularity == "activity" else None
    rng = random.Random(seed)
    per_client = min(per_client, len(symbols))
    plan = []
    for _ in range(clients):
        picked: list[str] = []
        while len(picked) < per_client:
            sym = rng.choices(symbols, weights=weights)[0]
            if sym not in picked:
                picked.append(sym)
        plan.append(
            [f"{kind}.{sym}" for sym in picked for kind in ("quotes", "trades", "stats")]
            + [f"leaders.{b}" for b in boards]
        )
    return plan


def bucket_of(us: int) -> int:
    return 0 if us < 1 else min(BUCKETS - 1, int(math.log2(us) * PER_OCTAVE))


def bucket_us(i: int) -> float:
    """The middle of bucket ``i`` (geometric), µs."""
    return 2 ** ((i + 0.5) / PER_OCTAVE)


def quantile_ms(hist: list[int], q: float) -> float:
    n = sum(hist)
    if not n:
        return float("nan")
    want, seen = q * n, 0
    for i, c in enumerate(hist):
        seen += c
        if seen >= want:
            return bucket_us(i) / 1000
    return bucket_us(len(hist) - 1) / 1000


def max_ms(hist: list[int]) -> float:
    top = max((i for i, c in enumerate(hist) if c), default=None)
    return float("nan") if top is None else 2 ** ((top + 1) / PER_OCTAVE) / 1000


# -- the client processes -----------------------------------------------------------------------------


def client_child(args: argparse.Namespace) -> int:
    """``--client-child``: clients ``--first`` .. ``--first + --clients - 1`` of the plan, counted into
    slot ``--slot``; runs until the stop flag is set."""
    import asyncio

    import orjson
    import uvloop
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    shared = SharedInts(HEADER + SLOT * args.slots, args.counters)
    view = shared.view
    base = HEADER + SLOT * args.slot
    hist = base + len(FIELDS)  # e2e, then published, then loop_lag
    hist_pub, hist_lag = hist + BUCKETS, hist + 2 * BUCKETS
    c = {name: base + i for i, name in enumerate(FIELDS)}
    kind_slot = {kind.encode() + b".": c[kind] for kind in KINDS}
    plan = json.loads(Path(args.plan).read_text())[args.first : args.first + args.clients]
    log2, ns = math.log2, time.time_ns

    def kind_of(channel: bytes) -> int:
        dot = channel.find(b".")
        return kind_slot.get(channel[: dot + 1], c["other"])

    async def one(channels: list[str], gate: asyncio.Semaphore) -> None:
        last: dict[bytes, list[int]] = {}  # channel -> [seq, counter slot]
        pending = len(channels)  # snapshots still to come
        try:
            async with gate:
                ws = await connect(
                    args.url, compression=None, max_size=None, ping_interval=None, open_timeout=60,
                    close_timeout=1, user_agent_header=None,
                )  # fmt: skip
                view[c["connected"]] += 1
                await ws.send(orjson.dumps({"action": "subscribe", "channels": channels, "id": 1}).decode())
            while True:
                msg = await ws.recv(decode=False)
                now = ns()
                view[c["messages"]] += 1
                view[c["bytes"]] += len(msg)
                snapshot = False
                now_ms = now // 1_000_000
                for event, conflated, channel, seq, sent in EVENT_RE.findall(msg):
                    seq = int(seq)
                    state = last.get(channel)
                    if event == b"snapshot":
                        snapshot = True
                        view[c["snapshots"]] += 1
                        if state is None:
                            last[channel] = [seq, kind_of(channel)]
                            pending -= 1
                            if pending == 0:
                                view[c["subscribed"]] += 1
                        else:
                            state[0] = seq
                        continue
                    if state is None:  # an update before its snapshot: not in the protocol
                        last[channel] = state = [seq - 1, kind_of(channel)]
                        view[c["out_of_order"]] += 1
                    prev = state[0]
                    if seq <= prev:
                        view[c["out_of_order"]] += 1
                    elif conflated:
                        view[c["conflated"]] += 1
                    elif seq > prev + 1:
                        view[c["gaps"]] += seq - prev - 1
                    state[0] = seq
                    view[state[1]] += 1
                    if sent:  # bucket_of inlined here and below: the hot path, per update and stamp
                        us = (now_ms - int(sent)) * 1000
                        view[hist_pub + (0 if us < 1 else min(BUCKETS - 1, int(log2(us) * PER_OCTAVE)))] += 1
                if not snapshot and b'"_st":' in msg:  # a snapshot's stamps are old: left out
                    stamps = STAMP_RE.findall(msg)
                    view[c["stamps"]] += len(stamps)
                    for stamp in stamps:
                        us = (now - int(stamp)) // 1000
                        view[hist + (0 if us < 1 else min(BUCKETS - 1, int(log2(us) * PER_OCTAVE)))] += 1
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            view[c["closed_slow"] if code == 4008 else c["closed"]] += 1
        except Exception:  # counted; the others go on
            view[c["failed"]] += 1

    async def main() -> None:
        gate = asyncio.Semaphore(args.concurrency)
        tasks = [asyncio.create_task(one(channels, gate)) for channels in plan]
        loop = asyncio.get_running_loop()
        while view[STOP] == 0:  # a flag in shared memory, set by the bench process; and the loop's lag
            due = loop.time() + LAG_TICK_S
            await asyncio.sleep(LAG_TICK_S)
            view[hist_lag + bucket_of(int((loop.time() - due) * 1e6))] += 1
        for t in tasks:
            t.cancel()

    uvloop.run(main())
    sys.stdout.flush()
    os._exit(0)  # many sockets: the kernel closes them at once, no close handshake each


class Clients:
    """The client processes of a run and their shared counters."""

    def __init__(self, url: str, plan: list[list[str]], procs: int, plan_path: Path) -> None:
        self.total = len(plan)
        procs = max(1, min(procs, self.total))
        self.shared = SharedInts(HEADER + SLOT * procs)
        self.slots = procs
        plan_path.write_text(json.dumps(plan))
        self.procs: list[Child] = []
        first = 0
        for i in range(procs):
            n = self.total // procs + (1 if i < self.total % procs else 0)
            argv = [
                sys.executable, "-m", "bench.e2e", "--client-child", "--url", url, "--plan", str(plan_path),
                "--first", str(first), "--clients", str(n), "--slot", str(i), "--slots", str(procs),
                "--counters", self.shared.path, "--concurrency", str(CONNECT_CONCURRENCY),
            ]  # fmt: skip
            self.procs.append(Child(f"clients-{i}", argv, child_env({})).start())
            first += n

    def counts(self) -> dict[str, int]:
        view = self.shared.view
        return {
            name: sum(view[HEADER + SLOT * s + k] for s in range(self.slots)) for k, name in enumerate(FIELDS)
        }

    def histograms(self) -> dict[str, list[int]]:
        view, out = self.shared.view, {}
        for h, name in enumerate(HISTOGRAMS):
            off = len(FIELDS) + h * BUCKETS
            out[name] = [
                sum(view[HEADER + SLOT * s + off + b] for s in range(self.slots)) for b in range(BUCKETS)
            ]
        return out

    def cpu_seconds(self) -> float:
        return sum(proc_cpu(p.pid) for p in self.procs)

    def alive(self) -> None:
        for p in self.procs:
            p.alive()

    def wait_subscribed(self, progress) -> int:
        """Until every client has its snapshots, or none more for ``STALL_S``: how many have."""
        best, since, said = -1, time.monotonic(), time.monotonic()
        while True:
            self.alive()
            n = self.counts()
            if n["subscribed"] >= self.total:
                return n["subscribed"]
            if n["subscribed"] > best:
                best, since = n["subscribed"], time.monotonic()
            elif time.monotonic() - since > STALL_S:
                progress(f"clients: {best} of {self.total} subscribed, stalled ({n['failed']} failed, "
                         f"{n['closed'] + n['closed_slow']} closed); going on")  # fmt: skip
                return best
            if time.monotonic() - said > 5:
                said = time.monotonic()
                progress(f"clients: {n['subscribed']} of {self.total} subscribed")
            time.sleep(0.1)

    def log_lines(self) -> list[str]:
        return [line for p in self.procs for line in p.log_lines()[:5]]

    def close(self) -> None:
        self.shared.view[STOP] = 1
        deadline = time.monotonic() + 15
        for p in self.procs:
            if p.proc is not None and p.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):  # stopped below
                    p.proc.wait(max(0.1, deadline - time.monotonic()))
            p.close()
        self.shared.close()


def counts_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}
