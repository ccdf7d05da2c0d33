"""The real ``massive.WebSocketClient`` against the emulator, over a real socket.

What a listener relies on, checked end to end: authentication, subscription filtering, text and binary
client frames, parsed mode, every fault switch of ``sim.server.FAULTS`` and how the vendor's client
reacts to it, the ``max_connections`` and ``slow_consumer`` rules, the HTTP side and URL paths.

Most tests run the client in raw mode, where the processor gets each frame as received (a ``str``):
the helpers below flatten those frames into events. Every wait is on a condition (``Collector.wait_for``,
``eventually``) with a timeout; the stall tests prove an absence by timing the frames that arrive.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from typing import Any

import orjson
import pytest
from massive.exceptions import AuthError
from massive.websocket.models import EquityQuote, EquityTrade
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from mdpipe.settings import parse_start
from sim import metrics
from sim.server import FAULTS, MALFORMED
from tests.conftest import KEY, START, Collector, client_for, eventually, http

MiB = 1024 * 1024

# -- helpers ----------------------------------------------------------------------------------------


def events(frames: list[Any]) -> list[dict[str, Any]]:
    """Every event of the raw frames received, in order; frames that are not JSON arrays are skipped."""
    out: list[dict[str, Any]] = []
    for frame in frames:
        try:
            parsed = orjson.loads(frame)
        except orjson.JSONDecodeError:
            continue
        if isinstance(parsed, list):
            out.extend(e for e in parsed if isinstance(e, dict))
    return out


def data(frames: list[Any], ev: str | None = None) -> list[dict[str, Any]]:
    """The data events (not status), optionally of one type."""
    return [e for e in events(frames) if e.get("ev") != "status" and (ev is None or e.get("ev") == ev)]


def statuses(frames: list[Any], status: str | None = None) -> list[dict[str, Any]]:
    return [
        e for e in events(frames) if e.get("ev") == "status" and (status is None or e["status"] == status)
    ]


def ack_frames(frames: list[Any], message: str) -> list[int]:
    """Indices of the frames holding a ``success`` status with ``message``."""
    return [
        i
        for i, frame in enumerate(frames)
        if any(e["message"] == message for e in statuses([frame], "success"))
    ]


def opened() -> float:
    return metrics.CONNECTIONS.labels("opened")._value.get()


def ended(outcome: str) -> float:
    return metrics.CONNECTIONS.labels(outcome)._value.get()


async def raises_from(task: asyncio.Task, within: float = 5.0) -> BaseException:
    """The exception ``task`` (a ``client.connect``) ends with; fails if it returns."""
    try:
        await asyncio.wait_for(task, within)
    except TimeoutError:
        raise AssertionError("connect() did not end") from None
    except Exception as exc:
        return exc
    raise AssertionError("connect() returned instead of raising")


def url(emulator, path: str | None = None) -> str:
    return f"ws://{emulator.feed}/{emulator.market if path is None else path}"


async def recv_json(ws: ClientConnection) -> Any:
    return orjson.loads(await asyncio.wait_for(ws.recv(), 3))


def shrink_socket_buffers(emulator, client, size: int = 16 * 1024) -> None:
    """Small kernel buffers on both ends of ``client``'s connection to ``emulator``."""
    ws = client.websocket
    [server_side] = [c.ws for c in emulator.clients if c.ws.remote_address == ws.local_address]
    for sock in (ws.transport.get_extra_info("socket"), server_side.transport.get_extra_info("socket")):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class TimedCollector(Collector):
    """Also keeps when each frame arrived (monotonic seconds)."""

    def __init__(self, client, **connect_kw: Any) -> None:
        self.times: list[float] = []
        super().__init__(client, **connect_kw)

    async def _process(self, message: Any) -> None:
        self.times.append(time.monotonic())
        await super()._process(message)


class BlockingCollector(Collector):
    """A processor that stops on its first frame until ``release`` is set: the client stops reading."""

    def __init__(self, client, **connect_kw: Any) -> None:
        self.release = asyncio.Event()
        super().__init__(client, **connect_kw)

    async def _process(self, message: Any) -> None:
        await super()._process(message)
        await self.release.wait()


# -- authentication ---------------------------------------------------------------------------------


async def test_right_key_gets_acks_and_data(emulator):
    collector = Collector(client_for(emulator, ["T.*"]))
    try:
        await collector.wait_for(lambda got: len(data(got, "T")) >= 5, timeout=3)
    finally:
        await collector.close()
    assert statuses(collector.received, "success")[0]["message"] == "subscribed to: T.*"
    assert {e["ev"] for e in data(collector.received)} == {"T"}


async def test_wrong_key_makes_connect_raise_auth_error(emulator):
    before = ended("auth_failed")
    collector = Collector(client_for(emulator, ["T.*"], api_key="wrong-key"))
    try:
        exc = await raises_from(collector.task)
    finally:
        await collector.close()
    assert isinstance(exc, AuthError)
    assert "authentication failed" in str(exc)
    assert collector.received == []
    await eventually(lambda: ended("auth_failed") == before + 1)


async def test_client_that_never_authenticates_is_timed_out(make_emulator):
    emulator = await make_emulator(sim_auth_timeout=0.3)
    async with ws_connect(url(emulator)) as ws:
        began = time.monotonic()
        assert await recv_json(ws) == [
            {"ev": "status", "status": "connected", "message": "Connected Successfully"}
        ]
        [timeout] = await recv_json(ws)
        waited = time.monotonic() - began
        with pytest.raises(ConnectionClosedError) as info:
            await asyncio.wait_for(ws.recv(), 3)
    assert timeout["ev"] == "status"
    assert timeout["status"] == "auth_timeout"
    assert 0.2 <= waited < 2.0
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1008
    assert emulator.clients == []


# -- subscriptions ----------------------------------------------------------------------------------


async def test_only_subscribed_events_arrive_each_acknowledged(emulator):
    subscriptions = {("T", "AAPL"), ("Q", "MSFT"), ("A", "*")}
    collector = Collector(client_for(emulator, [f"{ev}.{sym}" for ev, sym in subscriptions]))
    try:
        await collector.wait_for(
            lambda got: len(statuses(got, "success")) >= 3 and data(got, "T") and data(got, "Q"), timeout=5
        )
    finally:
        await collector.close()
    acks = {e["message"] for e in statuses(collector.received, "success")}
    assert acks == {f"subscribed to: {ev}.{sym}" for ev, sym in subscriptions}
    assert not statuses(collector.received, "error")
    received = data(collector.received)
    assert received
    for event in received:
        assert (event["ev"], event["sym"]) in subscriptions or (event["ev"], "*") in subscriptions, event


async def test_unsubscribe_at_runtime_stops_that_type(emulator):
    client = client_for(emulator, ["T.*", "Q.*"])
    collector = Collector(client)
    try:
        await collector.wait_for(lambda got: data(got, "T") and data(got, "Q"), timeout=3)
        client.unsubscribe("Q.*")
        await collector.wait_for(lambda got: ack_frames(got, "unsubscribed to: Q.*"), timeout=3)
        [ack] = ack_frames(collector.received, "unsubscribed to: Q.*")
        await collector.wait_for(lambda got: len(data(got[ack + 1 :], "T")) >= 200, timeout=3)
    finally:
        await collector.close()
    after = collector.received[ack + 1 :]
    assert data(after, "T")
    assert data(after, "Q") == []


# -- client frames, text and binary -----------------------------------------------------------------


@pytest.mark.parametrize("codec", [json, orjson], ids=["text-json", "binary-orjson"])
async def test_client_frames_as_text_or_binary(emulator, codec):
    client = client_for(emulator, ["T.*", "Q.*"], custom_json=codec)
    # stdlib json gives str (text frames), orjson gives bytes (binary frames)
    assert isinstance(client.json.dumps({}), bytes if codec is orjson else str)
    collector = Collector(client)
    try:
        await collector.wait_for(
            lambda got: len(statuses(got, "success")) == 2 and data(got, "T") and data(got, "Q"), timeout=3
        )
    finally:
        await collector.close()
    assert {e["message"] for e in statuses(collector.received, "success")} == {
        "subscribed to: T.*",
        "subscribed to: Q.*",
    }
    assert not statuses(collector.received, "error")


# -- parsed mode ------------------------------------------------------------------------------------


async def test_parsed_mode_yields_model_objects(emulator):
    collector = Collector(client_for(emulator, ["T.*", "Q.*"], raw=False))

    def kinds(got: list[Any]) -> set[type]:
        return {type(m) for batch in got for m in batch}

    try:
        await collector.wait_for(lambda got: {EquityTrade, EquityQuote} <= kinds(got), timeout=3)
    finally:
        await collector.close()
    assert all(isinstance(batch, list) and batch for batch in collector.received)
    assert kinds(collector.received) == {EquityTrade, EquityQuote}
    trade = next(m for batch in collector.received for m in batch if isinstance(m, EquityTrade))
    assert trade.symbol
    assert trade.price > 0
    assert trade.size > 0


# -- faults -----------------------------------------------------------------------------------------


def test_every_fault_is_covered():
    """A new fault switch fails this until a test below covers it (the REST faults and the market's pause
    and resume: tests/test_sim_rest.py)."""
    assert {f for f in FAULTS if not f.startswith("rest_") and f not in ("pause", "resume")} == {
        "max_connections",
        "slow_consumer",
        "drop",
        "close_1000",
        "close_1011",
        "oversize",
        "malformed",
        "unknown_event",
        "stall",
    }


@pytest.mark.parametrize("fault", ["max_connections", "slow_consumer"])
async def test_fault_status_then_policy_close(emulator, fault):
    before = ended(fault)
    collector = Collector(client_for(emulator, ["T.*"], max_reconnects=0))
    try:
        await collector.wait_for(lambda got: data(got, "T"), timeout=3)
        assert await emulator.inject(fault) == 1
        exc = await raises_from(collector.task)
    finally:
        await collector.close()
    assert isinstance(exc, ConnectionClosedError)
    assert exc.rcvd is not None
    assert (exc.rcvd.code, exc.rcvd.reason) == (1008, fault)
    [status] = statuses(collector.received, fault)
    assert status["message"] == "injected by the emulator"
    assert emulator.clients == []
    await eventually(lambda: ended(fault) == before + 1)


@pytest.mark.parametrize(
    ("fault", "sent", "rcvd"),
    [
        ("drop", None, None),  # TCP aborted, no close frame: the client sees 1006
        ("close_1011", 1011, 1011),
        ("oversize", 1009, None),  # the client's default max_size (1 MiB) fails the connection
    ],
)
async def test_fault_closes_and_client_reconnects(emulator, fault, sent, rcvd):
    client = client_for(emulator, ["T.*"])
    collector = Collector(client)
    try:
        await collector.wait_for(lambda got: data(got, "T"), timeout=3)
        first = client.websocket
        before = opened()
        assert await emulator.inject(fault) == 1
        # a second ack means the client reconnected and resubscribed; then data flows again
        await collector.wait_for(lambda got: len(ack_frames(got, "subscribed to: T.*")) == 2, timeout=3)
        second_ack = ack_frames(collector.received, "subscribed to: T.*")[1]
        await collector.wait_for(lambda got: data(got[second_ack + 1 :], "T"), timeout=3)
    finally:
        await collector.close()
    assert first is not None
    assert client.websocket is not first
    close_sent, close_rcvd = first.protocol.close_sent, first.protocol.close_rcvd
    assert (close_sent and close_sent.code) == sent
    assert (close_rcvd and close_rcvd.code) == rcvd
    assert first.close_code == (rcvd or 1006)
    assert opened() >= before + 1
    assert all(len(frame) < MiB for frame in collector.received)


async def test_fault_close_1000_ends_the_massive_client(emulator):
    """A normal closure makes connect() return: the client never reconnects by itself (MDL must)."""
    client = client_for(emulator, ["T.*"])
    collector = Collector(client)
    try:
        await collector.wait_for(lambda got: data(got, "T"), timeout=3)
        first = client.websocket
        assert await emulator.inject("close_1000") == 1
        assert await asyncio.wait_for(collector.task, 5) is None
    finally:
        await collector.close()
    assert first is not None and first.close_code == 1000
    assert emulator.clients == []


async def test_oversize_frame_arrives_whole_without_max_size(emulator):
    collector = Collector(client_for(emulator, ["T.*", "Q.*"]), max_size=None)
    try:
        await collector.wait_for(lambda got: data(got, "T"), timeout=3)
        await emulator.inject("oversize")
        await collector.wait_for(lambda got: any(len(frame) > MiB for frame in got), timeout=3)
        [big] = [frame for frame in collector.received if len(frame) > MiB]
        at = collector.received.index(big)
        await collector.wait_for(lambda got: data(got[at + 1 :], "T"), timeout=3)  # same connection goes on
    finally:
        await collector.close()
    assert isinstance(big, str)
    oversize = orjson.loads(big)
    assert len(oversize) > 5000
    assert {(e["ev"], e["sym"]) for e in oversize} == {("Q", "SPY")}
    assert len(ack_frames(collector.received, "subscribed to: Q.*")) == 1  # no reconnect


async def test_malformed_frame_reaches_raw_processor_as_is(emulator):
    collector = Collector(client_for(emulator, ["T.*"]))
    try:
        await collector.wait_for(lambda got: data(got, "T"), timeout=3)
        await emulator.inject("malformed")
        await collector.wait_for(lambda got: MALFORMED.decode() in got, timeout=3)
        at = collector.received.index(MALFORMED.decode())
        await collector.wait_for(lambda got: data(got[at + 1 :], "T"), timeout=3)
    finally:
        await collector.close()
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(collector.received[at])
    assert len(ack_frames(collector.received, "subscribed to: T.*")) == 1  # no reconnect


async def test_malformed_frame_makes_parsed_connect_raise(emulator):
    """Parsed mode json-decodes every frame inside connect() and lets the error out: the client stops.
    This is why the listener reads in raw mode."""
    collector = Collector(client_for(emulator, ["T.*"], raw=False))
    try:
        await collector.wait_for(lambda got: len(got) >= 1, timeout=3)
        await emulator.inject("malformed")
        exc = await raises_from(collector.task)
    finally:
        await collector.close()
    assert isinstance(exc, json.JSONDecodeError)
    assert all(isinstance(m, EquityTrade) for batch in collector.received for m in batch)


async def test_unknown_event_passes_through_raw(emulator):
    collector = Collector(client_for(emulator, ["T.*"]))
    try:
        await collector.wait_for(lambda got: data(got, "T"), timeout=3)
        await emulator.inject("unknown_event")
        await collector.wait_for(lambda got: data(got, "ZZ"), timeout=3)
        at = next(i for i, frame in enumerate(collector.received) if data([frame], "ZZ"))
        await collector.wait_for(lambda got: data(got[at + 1 :], "T"), timeout=3)
    finally:
        await collector.close()
    [zz] = data(collector.received, "ZZ")
    assert zz["sym"] == "AAPL"
    assert {e["ev"] for e in data(collector.received)} == {"T", "ZZ"}


async def test_unknown_event_dropped_by_parsed_mode(emulator, caplog):
    caplog.set_level("WARNING", logger="WebSocketClient")

    def warned() -> bool:
        return any("Unknown event type 'ZZ'" in r.getMessage() for r in caplog.records)

    collector = Collector(client_for(emulator, ["T.*"], raw=False))
    try:
        await collector.wait_for(lambda got: len(got) >= 1, timeout=3)
        await emulator.inject("unknown_event")
        await eventually(warned, within=3)  # the client read the ZZ frame and dropped it
        seen = len(collector.received)
        await collector.wait_for(lambda got: len(got) >= seen + 3, timeout=3)
    finally:
        await collector.close()
    assert not collector.task.done() or collector.task.exception() is None
    assert all(isinstance(m, EquityTrade) for batch in collector.received for m in batch)


async def test_stall_pauses_data_then_resumes(emulator):
    stall = 1.0
    collector = TimedCollector(client_for(emulator, ["T.*", "Q.*"]))
    try:
        await collector.wait_for(lambda got: len(data(got)) >= 10, timeout=3)
        injected = time.monotonic()
        assert await emulator.inject("stall", seconds=stall) == 1
        await collector.wait_for(
            lambda got: collector.times[-1] > injected + stall and data(got[-1:]), timeout=stall + 3
        )
    finally:
        await collector.close()
    stamps = [t for t, frame in zip(collector.times, collector.received, strict=True) if data([frame])]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps) >= 0.8 * stall
    assert max(gaps) < stall + 1.0
    assert any(t > injected + stall for t in stamps)


async def test_stall_longer_than_the_buffer_resumes_without_slow_consumer(make_emulator):
    # the default feed is 3 frames per 50 ms tick: 32 frames are about 0.5 s, less than the stall
    emulator = await make_emulator(sim_buffer_frames=32)
    stall = 1.0
    collector = TimedCollector(client_for(emulator, ["T.*", "Q.*"], max_reconnects=0))

    def resumed_or_kicked(got: list[Any]) -> bool:
        resumed = collector.times[-1] > injected + stall and data(got[-1:])
        return bool(resumed or statuses(got[-1:], "slow_consumer"))

    try:
        await collector.wait_for(lambda got: len(data(got)) >= 10, timeout=3)
        injected = time.monotonic()
        await emulator.inject("stall", seconds=stall)
        await collector.wait_for(resumed_or_kicked, timeout=stall + 3)
    finally:
        await collector.close()
    assert not statuses(collector.received, "slow_consumer")
    assert any(t > injected + stall for t in collector.times)


# -- the vendor's rules -----------------------------------------------------------------------------


async def test_second_connection_closes_the_first(emulator):
    first = Collector(client_for(emulator, ["T.*"], max_reconnects=0))
    second: Collector | None = None
    try:
        await first.wait_for(lambda got: data(got, "T"), timeout=3)
        second = Collector(client_for(emulator, ["T.*"]))
        exc = await raises_from(first.task)
        await second.wait_for(lambda got: data(got, "T"), timeout=3)
        seen = len(data(second.received))
        await second.wait_for(lambda got: len(data(got)) > seen + 20, timeout=3)
    finally:
        await first.close()
        if second is not None:
            await second.close()
    assert isinstance(exc, ConnectionClosedError)
    assert exc.rcvd is not None
    assert exc.rcvd.code == 1008
    [status] = statuses(first.received, "max_connections")
    assert "Maximum number of websocket connections exceeded" in status["message"]
    assert not statuses(second.received, "max_connections")
    assert len(emulator.clients) <= 1


async def test_reader_that_falls_behind_is_a_slow_consumer(make_emulator):
    """A processor that blocks stops the client's reads: the emulator closes it as a slow consumer,
    while a client that keeps reading the same feed stays connected.

    About 20 frames a second and a 32-frame buffer: a client is closed after ~1.4 s of lag, which a
    reading client never reaches even on a busy machine (a buffer smaller than one tick's frames would
    close every client). Small socket buffers make the blocked client's backlog reach the emulator
    within a few frames rather than after megabytes of kernel buffering."""
    emulator = await make_emulator(
        sim_buffer_frames=32, sim_rate=2000, sim_tick_ms=100, sim_frame_events=100, sim_max_connections=0
    )
    before = ended("slow_consumer")
    fast = Collector(client_for(emulator, ["T.*", "Q.*"], max_reconnects=0))
    slow = BlockingCollector(client_for(emulator, ["T.*", "Q.*"], max_reconnects=0), max_queue=1)
    try:
        await slow.wait_for(lambda got: len(got) >= 1, timeout=3)  # now blocked on its first frame
        shrink_socket_buffers(emulator, slow.client)
        await eventually(lambda: len(emulator.clients) == 1, within=6)  # one closed while it is blocked
        [survivor] = emulator.clients
        assert fast.client.websocket is not None
        assert survivor.ws.remote_address == fast.client.websocket.local_address  # the fast one stays
        slow.release.set()
        exc = await raises_from(slow.task, within=5)
        seen = len(data(fast.received))
        await fast.wait_for(lambda got: len(data(got)) >= seen + 5, timeout=3)
    finally:
        slow.release.set()
        await slow.close()
        await fast.close()
    assert isinstance(exc, ConnectionClosedError)
    if statuses(slow.received, "slow_consumer"):  # it got the status if it drained in time
        assert exc.rcvd is not None
        assert exc.rcvd.code == 1008
    assert not statuses(fast.received, "slow_consumer")
    await eventually(lambda: ended("slow_consumer") == before + 1)


# -- HTTP side and URL paths ------------------------------------------------------------------------


async def test_http_health_readiness_and_metrics(emulator):
    port = emulator.http.port
    status, _, body = await http(port, "GET", "/healthz")
    assert status == 200
    assert orjson.loads(body) == {"status": "ok"}
    status, _, body = await http(port, "GET", "/readyz")
    assert status == 200
    ready = orjson.loads(body)
    assert ready.pop("clock_ms") >= parse_start(START)  # the market time released so far
    assert ready == {"ready": True, "mode": "synthetic", "market": "stocks", "clients": 0, "paused": False}
    status, head, body = await http(port, "GET", "/metrics")
    assert status == 200
    assert "text/plain" in head
    assert b"mdpipe_sim_frames_sent_total" in body
    assert b"mdpipe_sim_connections_total" in body


async def test_http_fault_injection_needs_the_key(emulator):
    port = emulator.http.port
    target = "/faults?name=stall&seconds=0.1"
    status, _, _ = await http(port, "POST", target)
    assert status == 401
    status, _, _ = await http(port, "POST", target, {"Authorization": "Bearer wrong"})
    assert status == 401
    status, _, body = await http(port, "POST", target, {"Authorization": f"Bearer {KEY}"})
    assert status == 200
    assert orjson.loads(body) == {"fault": "stall", "clients": 0}
    status, _, body = await http(port, "POST", "/faults?name=nope", {"Authorization": f"Bearer {KEY}"})
    assert status == 400
    assert "unknown fault" in orjson.loads(body)["error"]
    status, _, body = await http(port, "GET", "/faults")
    assert status == 200
    assert set(orjson.loads(body)["faults"]) == set(FAULTS)


@pytest.mark.parametrize(
    ("path", "reason"),
    [("options", "market not served by this emulator: /options"), ("nonsense", "unknown market: /nonsense")],
)
async def test_wrong_path_is_refused_with_404(emulator, path, reason):
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(url(emulator, path), open_timeout=3):
            pass
    assert info.value.response.status_code == 404
    assert reason in info.value.response.body.decode()
    async with ws_connect(url(emulator), open_timeout=3) as ws:  # the served market is accepted
        [greeting] = await recv_json(ws)
    assert greeting["status"] == "connected"
