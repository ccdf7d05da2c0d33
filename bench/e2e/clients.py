"""The bench's WebSocket clients: K connections spread over P processes of their own, each subscribed to
its channels of a plan (a few symbols' ``quotes``, ``trades`` and ``stats`` channels, and the leaderboards).

Each client process counts what arrives into its slot of a shared file of int64 values (``SharedInts``);
the bench reads the slots whenever it likes and takes differences over its windows, so nothing has to be
sent back at the end. Per slot: counters (``FIELDS``), then the histograms (``HISTOGRAMS``).

The clients are the load generator, so they are kept cheap per message: each connection is websockets'
own sans-I/O client (``websockets.client.ClientProtocol``: handshake, framing, masking, answering pings,
the closing handshake) driven by a plain ``asyncio.Protocol`` on uvloop, with no task, future or message
queue per message. Each read from the socket is fed to the protocol, the time is taken once for it, and
every complete message it finishes is counted and checked there and then. At most ``--concurrency``
handshakes are in flight per process; a client whose connection or handshake fails counts as ``failed``,
one closed by the server as ``closed_slow`` (code 4008) or ``closed`` (any other code, or none).

Messages are parsed only as far as needed, with two compiled regular expressions over the raw bytes
(WDS writes each event as ``{"event":"update",["conflated":true,]"type":..,"channel":..,"seq":..`` or
``{"event":"snapshot","channel":..,"seq":..``):

- every event: its channel and ``seq``, checked against the channel's previous one for this client: a
  jump without ``conflated`` is a gap (updates lost before the client), a step back is out of order;
- every ``"_st":<ns>`` of a message without a snapshot (the emulator's send stamp, in each trade of a
  ``trades`` update and in a ``quote`` update): latency = ``time.time_ns()`` when the read that completed
  the message arrived, minus the stamp (same machine, same clock): histogram ``e2e``;
- every update's envelope ``sent`` (ms: when MDP's script published it): receive time minus that,
  histogram ``published`` (MDP publish to client: Redis pub/sub, WDS, the socket and the client);
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
OPEN_TIMEOUT_S = 60.0  # a client not connected by then: failed
CLOSE_TIMEOUT_S = 1.0  # after the close frames, how long the server has to close the TCP connection
E2E_TABLE_US = 1 << 17  # latencies below this (µs, 131 ms) are bucketed by a table look-up
PUB_TABLE_MS = 10_000  # the same for the publish-to-receive lags (ms)
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
    from websockets.client import ClientProtocol
    from websockets.frames import Opcode
    from websockets.http11 import Response
    from websockets.uri import parse_uri

    shared = SharedInts(HEADER + SLOT * args.slots, args.counters)
    view = shared.view
    base = HEADER + SLOT * args.slot
    hist = base + len(FIELDS)  # e2e, then published, then loop_lag
    hist_pub, hist_lag = hist + BUCKETS, hist + 2 * BUCKETS
    c = {name: base + i for i, name in enumerate(FIELDS)}
    kind_slot = {kind.encode() + b".": c[kind] for kind in KINDS}
    plan = json.loads(Path(args.plan).read_text())[args.first : args.first + args.clients]
    uri = parse_uri(args.url)
    ns, find_events, find_stamps = time.time_ns, EVENT_RE.findall, STAMP_RE.findall
    TEXT, BINARY, CONT, CLOSE = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.CLOSE
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

    def kind_of(channel: bytes) -> int:
        dot = channel.find(b".")
        return kind_slot.get(channel[: dot + 1], c["other"])

    class Conn(asyncio.Protocol):
        """One client: websockets' sans-I/O client protocol (``ClientProtocol``) fed by the loop's
        callbacks; every complete message is counted and checked as it is parsed out of a read."""

        __slots__ = ("channels", "ended", "last", "open", "opened", "parts", "pending", "transport", "ws")

        def __init__(self, channels: list[str], opened: asyncio.Future[None]) -> None:
            self.ws = ClientProtocol(uri, max_size=None)
            self.channels = channels
            self.opened = opened  # done with the handshake: result None, or its exception
            self.open = False  # the handshake succeeded
            self.transport: asyncio.Transport | None = None
            self.last: dict[bytes, list[int]] = {}  # channel -> [seq, counter slot]
            self.pending = len(channels)  # snapshots still to come
            self.parts: list[bytes] = []  # a fragmented message's frames so far
            self.ended = False  # counted as closed, closed_slow or failed

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]
            self.ws.send_request(self.ws.connect())
            self.send(self.ws.data_to_send())

        def send(self, chunks: list[bytes]) -> None:
            transport = self.transport
            for chunk in chunks:
                if chunk:
                    transport.write(chunk)
                elif transport.can_write_eof():  # the protocol's end of stream
                    transport.write_eof()
            if self.ws.close_expected():  # the server closes the TCP connection; if it does not, we do
                asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, transport.close)

        def end(self, counter: int) -> None:
            if not self.ended:
                self.ended = True
                view[counter] += 1

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.opened.done():
                self.opened.set_exception(exc or ConnectionError("connection closed during the handshake"))
            elif self.open:
                self.end(c["closed"])  # without a close frame (or after a protocol error)

        def handshake(self, events: list) -> list:
            """The frames that came with the handshake's response; the subscription sent if it succeeded."""
            ws = self.ws
            for i, event in enumerate(events):
                if type(event) is Response:
                    if ws.handshake_exc is not None:
                        self.opened.set_exception(ws.handshake_exc)
                        return []
                    self.open = True
                    view[c["connected"]] += 1
                    ws.send_text(orjson.dumps({"action": "subscribe", "channels": self.channels, "id": 1}))
                    self.send(ws.data_to_send())
                    self.opened.set_result(None)
                    return events[i + 1 :]
            return []

        def data_received(self, data: bytes) -> None:
            now = ns()  # the receive time of every message in this read
            ws = self.ws
            ws.receive_data(data)
            frames = ws.events_received()
            out = ws.data_to_send()  # pongs, the close frame's echo
            if out:
                self.send(out)
            if not self.open:
                frames = self.handshake(frames)
            if not frames:
                return
            now_ms, last = now // 1_000_000, self.last
            try:
                for frame in frames:
                    opcode = frame.opcode
                    if opcode is TEXT or opcode is BINARY:
                        if not frame.fin:
                            self.parts.append(frame.data)
                            continue
                        msg = frame.data
                    elif opcode is CONT:
                        self.parts.append(frame.data)
                        if not frame.fin:
                            continue
                        msg = b"".join(self.parts)
                        self.parts.clear()
                    elif opcode is CLOSE:
                        rcvd = ws.close_rcvd
                        self.end(c["closed_slow"] if rcvd is not None and rcvd.code == 4008 else c["closed"])
                        return
                    else:  # ping (answered by the protocol: the pong went out above) or pong
                        continue
                    view[n_messages] += 1
                    view[n_bytes] += len(msg)
                    snapshot = False
                    for event, conflated, channel, seq, sent in find_events(msg):
                        seq = int(seq)
                        state = last.get(channel)
                        if event == b"snapshot":
                            snapshot = True
                            view[n_snapshots] += 1
                            if state is None:
                                last[channel] = [seq, kind_of(channel)]
                                self.pending -= 1
                                if self.pending == 0:
                                    view[c["subscribed"]] += 1
                            else:
                                state[0] = seq
                            continue
                        if state is None:  # an update before its snapshot: not in the protocol
                            last[channel] = state = [seq - 1, kind_of(channel)]
                            view[n_ooo] += 1
                        prev = state[0]
                        if seq <= prev:
                            view[n_ooo] += 1
                        elif conflated:
                            view[n_conflated] += 1
                        elif seq > prev + 1:
                            view[n_gaps] += seq - prev - 1
                        state[0] = seq
                        view[state[1]] += 1
                        if sent:  # ms
                            d = now_ms - int(sent)
                            view[pub_slot[d] if 0 <= d < PUB_TABLE_MS else pub_beyond(d)] += 1
                    if snapshot:  # a snapshot's stamps are old: left out
                        continue
                    at = msg.find(b'"_st":')
                    if at >= 0:
                        stamps = find_stamps(msg, at)
                        view[n_stamps] += len(stamps)
                        for stamp in stamps:
                            us = (now - int(stamp)) // 1000
                            view[e2e_slot[us] if 0 <= us < E2E_TABLE_US else hist + bucket_of(us)] += 1
            except Exception:  # counted; the others go on
                self.end(c["failed"])
                self.transport.abort()

    async def one(channels: list[str], gate: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        conn = Conn(channels, loop.create_future())
        try:
            async with gate, asyncio.timeout(OPEN_TIMEOUT_S):  # at most --concurrency handshakes at once
                await loop.create_connection(lambda: conn, uri.host, uri.port, ssl=uri.secure or None)
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
            view[hist_lag + bucket_of(int((loop.time() - due) * 1e6))] += 1
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
