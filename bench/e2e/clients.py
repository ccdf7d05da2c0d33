"""The bench's WebSocket clients: K connections spread over P processes of their own, each subscribed to
its channels of a plan (a few symbols' ``quotes``, ``trades`` and ``stats`` channels, and the leaderboards).

Each client process counts what arrives into its slot of a shared file of int64 values (``SharedInts``);
the bench reads the slots whenever it likes and takes differences over its windows, so nothing has to be
sent back at the end. Per slot: counters (``FIELDS``), then the histograms (``HISTOGRAMS``).

The clients are the load generator, so they are kept cheap per message: each connection is a plain
``asyncio.Protocol`` on uvloop speaking the protocol itself (``wire``: a hand-written upgrade, the
server's frames parsed as they come, pings answered, the close echoed), with no task, future or message
queue per message. The time is taken once per socket read, and every complete message the read finishes
is counted and checked there and then; the counts go to a list, copied to the shared file every
``LAG_TICK_S``. At most ``--concurrency`` handshakes are in flight per process; a client whose
connection or handshake fails, or that breaks the protocol, counts as ``failed``; one closed by the
server as ``closed_slow`` (code 4008) or ``closed`` (any other code, or none).

A message is decoded only as far as the checks need: msgspec fills an ``Event`` per event (its kind,
channel, ``seq``, ``sent``, ``conflated``, the stamps in its data) in C and skips the rest.

- every event: its channel and ``seq``, checked against the channel's previous one for this client: a
  jump without ``conflated`` is a gap (updates lost before the client), a step back is out of order;
- every update's ``"_st":<ns>`` (the emulator's send stamp, in each trade of a ``trades`` update and in
  a ``quote`` update; a snapshot's are old and left out): latency = ``time.time_ns()`` when the read that
  completed the message arrived, minus the stamp (same machine, same clock): histogram ``e2e``;
- every update's envelope ``sent`` (ms: when MDP published it): receive time minus that, histogram
  ``published`` (MDP publish to client: Redis pub/sub, WDS, the socket and the client);
- every ``LAG_TICK_S`` a ticker measures how late the client's event loop wakes it: histogram
  ``loop_lag`` (a client process short of CPU delays every receive time by that much).

Histograms are log scale, ``PER_OCTAVE`` buckets per doubling (2.2% wide) from 1 µs; the usual values are
bucketed by table look-up (``E2E_TABLE_US``, ``PUB_TABLE_MS``), the same buckets as ``bucket_of``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import time
from array import array
from pathlib import Path

import msgspec
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
OPEN_TIMEOUT_S = 60.0  # a client not connected by then: failed
CLOSE_TIMEOUT_S = 1.0  # after the close frames, how long the server has to close the TCP connection
E2E_TABLE_US = 1 << 19  # latencies below this (µs, 524 ms) are bucketed by a table look-up
PUB_TABLE_MS = 10_000  # the same for the publish-to-receive lags (ms)
STALL_S = 15.0  # no client more subscribed this long: the bench goes on with those it has

BOARDS = ("gainers", "losers", "volume", "gappers")


class Stamped(msgspec.Struct, gc=False):
    """A quote, a trade print or any other document of an update: only its send stamp is decoded."""

    _st: int = 0


class Event(msgspec.Struct, gc=False):
    """A server event: the fields the checks read are decoded (in C), the rest skipped."""

    event: str
    channel: str = ""
    seq: int = 0
    sent: int = 0  # ms: when MDP's script published the update
    conflated: bool = False
    data: Stamped | list[Stamped] | None = None


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
    from urllib.parse import urlsplit

    import orjson
    import uvloop

    from . import wire

    shared = SharedInts(HEADER + SLOT * args.slots, args.counters)
    view, base = shared.view, HEADER + SLOT * args.slot
    # This process's slot, copied to the shared file every LAG_TICK_S (a list is cheaper to count in), and
    # a scratch value at its end for what is counted nowhere.
    count = [0] * (SLOT + 1)
    SCRATCH = SLOT
    hist = len(FIELDS)  # e2e, then published, then loop_lag
    hist_pub, hist_lag = hist + BUCKETS, hist + 2 * BUCKETS
    c = {name: i for i, name in enumerate(FIELDS)}
    kind_slot = {f"{kind}.": c[kind] for kind in KINDS}
    plan = json.loads(Path(args.plan).read_text())[args.first : args.first + args.clients]
    url = urlsplit(args.url)
    if url.scheme != "ws":
        raise SystemExit(f"clients: {args.url}: ws:// only")
    host, port, resource = url.hostname or "127.0.0.1", url.port or 80, f"{url.path}?{url.query}"
    ns, decode = time.time_ns, msgspec.json.Decoder(list[Event]).decode
    TEXT, BINARY, CLOSE, PING = wire.TEXT, wire.BINARY, wire.CLOSE, wire.PING
    n_messages, n_bytes, n_snapshots = c["messages"], c["bytes"], c["snapshots"]
    n_conflated, n_gaps, n_ooo, n_stamps = c["conflated"], c["gaps"], c["out_of_order"], c["stamps"]

    def table(first: int, n: int, scale: int) -> list[int]:
        """The histogram slot of values 0 .. n - 1 (in units of ``scale`` µs): ``bucket_of`` by look-up."""
        slots = [first + b for b in range(BUCKETS)]
        return [slots[bucket_of(i * scale)] for i in range(n)]

    e2e_slot = table(hist, E2E_TABLE_US, 1)
    pub_slot = table(hist_pub, PUB_TABLE_MS, 1000)

    def pub_beyond(ms: int) -> int:  # the rest, rare
        return hist_pub + bucket_of(ms * 1000)

    def kind_of(channel: str) -> int:
        dot = channel.find(".")
        return kind_slot.get(channel[: dot + 1], c["other"])

    def check(conn: Conn, payload: bytes, now: int) -> None:
        """One message: its updates counted by kind and checked against their channel's previous
        ``seq``, its snapshots noted, its stamps and publish times put in their histograms."""
        count[n_messages] += 1
        count[n_bytes] += len(payload)
        now_ms, last = now // 1_000_000, conn.last
        # Stamps are counted by runs of equal ones (the events of one emulator frame share theirs):
        # ``run`` stamps equal to ``st`` so far, going to bucket ``slot`` (SCRATCH: no stamp, not counted).
        st, slot, run, stamps = 0, SCRATCH, 0, 0
        for ev in decode(payload):
            if ev.event != "update":
                if ev.event == "snapshot":
                    conn.snapshot(ev.channel, ev.seq)
                continue  # replies: not counted
            seq = ev.seq
            state = last.get(ev.channel)
            if state is None:  # an update before its snapshot: not in the protocol
                last[ev.channel] = state = [seq - 1, kind_of(ev.channel)]
                count[n_ooo] += 1
            prev = state[0]
            if seq <= prev:
                count[n_ooo] += 1
            elif ev.conflated:
                count[n_conflated] += 1
            elif seq > prev + 1:
                count[n_gaps] += seq - prev - 1
            state[0] = seq
            count[state[1]] += 1
            sent = ev.sent  # ms
            if sent:
                d = now_ms - sent
                count[pub_slot[d] if 0 <= d < PUB_TABLE_MS else pub_beyond(d)] += 1
            data = ev.data  # a quote (with its stamp), a trades update's prints (each with its stamp), ...
            if type(data) is Stamped:
                if not data._st:
                    continue  # stats and leaderboards carry no stamp
                data = (data,)
            elif data is None:
                continue
            stamps += len(data)
            for doc in data:
                if doc._st == st:
                    run += 1
                    continue
                count[slot] += run
                if slot == SCRATCH:
                    stamps -= run
                st, run = doc._st, 1
                us = (now - st) // 1000
                slot = SCRATCH if not st else e2e_slot[us] if 0 <= us < E2E_TABLE_US else hist + bucket_of(us)
        count[slot] += run
        if slot == SCRATCH:
            stamps -= run
        count[n_stamps] += stamps

    class Conn(asyncio.Protocol):
        """One client: the handshake, then the server's frames parsed as they come (``wire.Reader``); every
        complete message is counted and checked there and then."""

        __slots__ = ("channels", "ended", "head", "key", "last", "opened", "pending", "reader", "transport")

        def __init__(self, channels: list[str], opened: asyncio.Future[None]) -> None:
            self.channels = channels
            self.opened = opened  # done with the handshake: result None, or its exception
            self.transport: asyncio.Transport | None = None
            self.head = b""  # the handshake's response so far
            self.key = b""
            self.reader: wire.Reader | None = None  # once the handshake succeeded
            self.last: dict[str, list[int]] = {}  # channel -> [seq, counter slot]
            self.pending = len(channels)  # snapshots still to come
            self.ended = False  # counted as closed, closed_slow or failed

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]
            request, self.key = wire.handshake_request(host, port, resource)
            transport.write(request)  # type: ignore[attr-defined]

        def end(self, counter: int) -> None:
            if not self.ended:
                self.ended = True
                count[counter] += 1

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.opened.done():
                self.opened.set_exception(exc or ConnectionError("connection closed during the handshake"))
            elif self.reader is not None:
                self.end(c["closed"])  # without a close frame

        def snapshot(self, channel: str, seq: int) -> None:
            count[n_snapshots] += 1
            state = self.last.get(channel)
            if state is not None:
                state[0] = seq
                return
            self.last[channel] = [seq, kind_of(channel)]
            self.pending -= 1
            if self.pending == 0:
                count[c["subscribed"]] += 1

        def handshake(self, data: bytes) -> bytes:
            """The response so far with ``data``: what follows it once whole (and accepted), else b''."""
            self.head += data
            at = wire.handshake_response(self.head, self.key)
            if at < 0:
                return b""
            data, self.head = self.head[at:], b""
            self.reader = wire.Reader()
            count[c["connected"]] += 1
            subscribe = orjson.dumps({"action": "subscribe", "channels": self.channels, "id": 1})
            self.transport.write(wire.client_frame(TEXT, subscribe))
            self.opened.set_result(None)
            return data

        def data_received(self, data: bytes) -> None:
            now = ns()  # the receive time of every message in this read
            try:
                reader = self.reader
                if reader is None:
                    data = self.handshake(data)
                    if not data:
                        return
                    reader = self.reader
                for opcode, payload in reader.feed(data):
                    if opcode in (TEXT, BINARY):
                        check(self, payload, now)
                    elif opcode == PING:
                        self.transport.write(wire.client_frame(wire.PONG, payload))
                    elif opcode == CLOSE:
                        self.closed(payload)
                        return
            except Exception as exc:  # counted; the others go on
                if not self.opened.done():
                    self.opened.set_exception(exc)
                self.end(c["failed"])
                self.transport.abort()

        def closed(self, payload: bytes) -> None:
            """The server's close frame: counted, echoed; the server then closes the TCP connection (or we
            do, after ``CLOSE_TIMEOUT_S``)."""
            code = wire.close_code(payload)
            self.end(c["closed_slow"] if code == 4008 else c["closed"])
            self.transport.write(wire.client_frame(CLOSE, payload[:2]))
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self.transport.close)

    async def one(channels: list[str], gate: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        conn = Conn(channels, loop.create_future())
        try:
            async with gate, asyncio.timeout(OPEN_TIMEOUT_S):  # at most --concurrency handshakes at once
                await loop.create_connection(lambda: conn, host, port)
                await conn.opened
        except Exception:  # counted; the others go on
            conn.end(c["failed"])
            if conn.transport is not None:
                conn.transport.abort()

    async def main() -> None:
        gate = asyncio.Semaphore(args.concurrency)
        tasks = [asyncio.create_task(one(channels, gate)) for channels in plan]
        loop = asyncio.get_running_loop()
        while view[STOP] == 0:  # a flag in shared memory, set by the bench process; and the loop's lag
            due = loop.time() + LAG_TICK_S
            await asyncio.sleep(LAG_TICK_S)
            count[hist_lag + bucket_of(int((loop.time() - due) * 1e6))] += 1
            view[base : base + SLOT] = array("q", count[:SLOT])
        for t in tasks:
            t.cancel()

    uvloop.run(main())
    sys.stdout.flush()
    os._exit(0)  # many sockets: the kernel closes them at once, no close handshake each


class Clients:
    """The client processes of a run and their shared counters."""

    def __init__(
        self, url: str, plan: list[list[str]], procs: int, plan_path: Path, command: list[str] | None = None
    ) -> None:
        """``command``: what runs a client process, to which its options are added (default: this module's
        ``client_child`` through ``python -m bench.e2e``)."""
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
                *(command or [sys.executable, "-m", "bench.e2e"]), "--client-child", "--url", url,
                "--plan", str(plan_path),
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
