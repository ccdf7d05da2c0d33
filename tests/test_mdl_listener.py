"""The listener against the real massive client, the emulator, RabbitMQ and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from mdc import names
from mdl import control
from mdl.listener import FatalFeedError, Listener
from mdpipe import massive
from mdpipe.settings import MassiveSettings, MdlSettings, MdqSettings
from mdq import message, topology
from sim.recording import RecordingReader, RecordingWriter
from tests.conftest import KEY, RABBITMQ_URL, REDIS_URL, drain, eventually, http

EVERY_STOCK_TYPE = "T.*,Q.*,A.*,AM.*,LULD.*,NOI.*,FMV.*,LV.*"  # all of them: the emulator sends frames whole


@pytest.fixture
async def run_listener() -> AsyncIterator[Callable[..., Any]]:
    """``await run_listener(emulator, mdq, ...)``: a running Listener, connected; stopped at the end."""
    running: list[tuple[Listener, asyncio.Event, asyncio.Task]] = []

    async def start(
        emulator,
        mdq: MdqSettings,
        *,
        subscriptions: str = "T.*,Q.*,A.*,AM.*,LULD.*,NOI.*",
        redis_url: str | None = None,
        rabbitmq_url: str = RABBITMQ_URL,
        wait: bool = True,
        **overrides: Any,
    ) -> Listener:
        feed = MassiveSettings(
            massive_api_key=KEY,
            massive_feed=emulator.feed,
            massive_market=emulator.market,
            massive_subscriptions=subscriptions,
            massive_tls="false",
        )
        settings = MdlSettings(
            **{"mdl_http_port": 0, "mdl_backoff_initial_s": 0.05, "mdl_backoff_max_s": 0.3, **overrides}
        )
        listener = Listener(feed, mdq, settings, rabbitmq_url=rabbitmq_url, redis_url=redis_url)
        stop = asyncio.Event()
        running.append((listener, stop, asyncio.create_task(listener.run(stop))))
        if wait:
            await eventually(lambda: listener.readiness()[0], within=10)
        return listener

    yield start
    for _, stop, _task in running:
        stop.set()
    for _, _, task in running:
        with contextlib.suppress(FatalFeedError):
            await asyncio.wait_for(task, 10)


def build_frames(count: int, per_frame: int) -> tuple[list[bytes], list[dict]]:
    """Frames of every stock event type plus an unknown one, each event encoded on its own."""
    kinds = ["T", "Q", "A", "AM", "LULD", "NOI", "FMV", "ZZ"]
    symbols = [f"S{n}" for n in range(20)] + ["BRK.B"]
    frames, events = [], []
    n = 0
    for _ in range(count):
        parts = []
        for _ in range(per_frame):
            ev, sym = kinds[n % len(kinds)], symbols[n * 7 % len(symbols)]
            event: dict[str, Any] = {"ev": ev, ("T" if ev in ("LULD", "NOI") else "sym"): sym, "q": n}
            event["p"] = 100 + n / 64  # floats must survive the trip exactly
            parts.append(orjson.dumps(event))
            events.append(event)
            n += 1
        frames.append(b"[" + b",".join(parts) + b"]")
    return frames, events


@pytest.mark.parametrize("shards", [1, 3])
async def test_every_event_lands_once_in_its_queue_byte_for_byte(
    tmp_path, make_emulator, make_mdq, run_listener, shards
):
    frames, events = build_frames(300, 24)
    path = tmp_path / "feed.mdrec"
    writer = RecordingWriter(path, {"market": "stocks"})
    for i, frame in enumerate(frames):
        writer.write(1_000_000_000 + i * 1_000_000, frame)
    writer.close()
    expected: dict[str, list[bytes]] = {}
    for event in events:
        cls = topology.EVENT_CLASSES["stocks"].get(event["ev"], topology.OTHER)
        queue = topology.class_queues(mdq_name := "x", cls, shards)[
            topology.shard_of(massive.event_symbol(event), shards)
        ]
        expected.setdefault(queue.removeprefix(mdq_name + "."), []).append(orjson.dumps(event))

    mdq = make_mdq(mdq_shards=shards)
    emulator = await make_emulator(sim_replay=str(path), sim_replay_speed=20.0)
    listener = await run_listener(emulator, mdq, subscriptions=EVERY_STOCK_TYPE, mdl_batch_events=50)

    got: dict[str, list[Any]] = {}

    async def collected() -> int:
        for queue in topology.queue_names(mdq.mdq_exchange, shards):
            got.setdefault(queue.removeprefix(mdq.mdq_exchange + "."), []).extend(
                await drain(queue, settle=0.05)
            )
        return sum(m.headers[message.COUNT] for ms in got.values() for m in ms)

    async def complete() -> bool:
        return await collected() >= len(events)

    await eventually(complete, within=15)
    await collected()  # anything extra would be a duplicate

    assert set(got) == set(expected)
    for queue, messages in got.items():
        inner = [m.body[1:-1] for m in messages]
        assert all(m.body[:1] == b"[" and m.body[-1:] == b"]" for m in messages)
        assert b",".join(inner) == b",".join(expected[queue]), queue  # exactly once, in order, same bytes
        assert [m.headers[message.SEQ] for m in messages] == list(range(1, len(messages) + 1))
        for m in messages:
            assert m.headers[message.COUNT] == len(orjson.loads(m.body)) <= 50
            assert m.headers[message.CLASS] == queue.split(".")[0]
            assert m.headers[message.SOURCE] == listener.instance
            assert abs(m.headers[message.RECV_NS] - time.time_ns()) < 60e9
            assert m.delivery_mode == 1 and m.content_type == "application/json"
    assert [
        e["ev"]
        for e in orjson.loads(b"[" + b",".join(expected["other" if shards == 1 else "other.0"]) + b"]")
    ]


# -- faults from the vendor side ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        ("drop", "dropped"),
        ("close_1011", "server_error"),
        ("close_1000", "closed"),
        ("max_connections", "max_connections"),
        ("slow_consumer", "slow_consumer"),
    ],
)
async def test_listener_reconnects_after_every_close(make_emulator, mdq, run_listener, fault, cause):
    emulator = await make_emulator(sim_rate=2000, sim_symbols=200)
    listener = await run_listener(emulator, mdq)
    first = listener.client
    assert await emulator.inject(fault) == 1
    await eventually(lambda: listener.reconnects.get(cause) == 1)
    await eventually(lambda: listener.client is not first and listener.state == "connected")
    frames = listener._conn_frames
    await eventually(lambda: listener._conn_frames > frames + 5)  # data flows on the new connection
    assert set(listener.reconnects) == {cause}
    if cause in ("max_connections", "slow_consumer"):
        _, detail = listener.readiness()
        assert detail["statuses"][cause]["count"] == 1
        assert "injected" in detail["statuses"][cause]["message"]


@pytest.mark.parametrize("fault", ["oversize", "malformed", "unknown_event", "stall"])
async def test_listener_rides_out_bad_frames_and_stalls(make_emulator, mdq, run_listener, fault):
    emulator = await make_emulator(sim_rate=2000, sim_symbols=200)
    listener = await run_listener(emulator, mdq)
    client = listener.client
    await emulator.inject(fault, seconds=1.0)
    frames = listener._conn_frames
    await eventually(lambda: listener._conn_frames > frames + 20, within=8)
    assert listener.client is client and listener.reconnects == {}
    if fault == "malformed":
        assert listener.malformed == 1
    if fault == "unknown_event":
        others = await drain(f"{mdq.mdq_exchange}.other")
        assert any(e["ev"] == "ZZ" for m in others for e in orjson.loads(m.body))
    if fault == "oversize":
        await eventually(lambda: len(listener.handoff) == 0)
        assert listener.malformed == 0  # the >1 MiB frame was read and routed


async def test_listener_keeps_retrying_when_the_vendor_is_away(make_emulator, mdq, run_listener):
    emulator = await make_emulator(sim_rate=1000, sim_symbols=50)
    listener = await run_listener(emulator, mdq)
    await emulator.stop()
    await eventually(lambda: listener.reconnects.get("connect_failed", 0) >= 3)
    assert listener.state in ("connecting", "backoff") and not listener.readiness()[0]


# -- the broker going away -----------------------------------------------------------------------------


class Proxy:
    """A TCP proxy to RabbitMQ that the test can cut and restore, like a broker restart."""

    def __init__(self) -> None:
        self.port = 0
        self.server: asyncio.Server | None = None
        self.pairs: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.pairs):
            writer.transport.abort()
        self.pairs.clear()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5672)
        self.pairs |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_broker_outage_the_listener_keeps_reading_and_resumes(make_emulator, make_mdq, run_listener):
    proxy = Proxy()
    await proxy.start()
    mdq = make_mdq(mdq_message_ttl_ms=1000)
    emulator = await make_emulator(sim_rate=2000, sim_symbols=200)
    listener = await run_listener(emulator, mdq, rabbitmq_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
    client = listener.client
    connects = listener.publisher.connects
    await proxy.cut()
    await eventually(lambda: not listener.publisher.connected)
    status, _, body = await http(listener.http.port, "GET", "/readyz")
    assert status == 503 and orjson.loads(body)["vendor"] == "connected"
    frames = listener._conn_frames
    await asyncio.sleep(1.5)  # longer than the TTL: what waited is dropped as expired
    assert listener._conn_frames > frames + 20  # the read loop never waited on the broker
    assert len(listener.handoff) < listener._conn_frames - frames
    restored_ns = time.time_ns()
    await proxy.start()
    await eventually(lambda: listener.publisher.connects == connects + 1, within=10)
    await eventually(lambda: listener.readiness()[0])
    trades = await drain(f"{mdq.mdq_exchange}.trades")
    # Publishing resumed with fresh data only: frames older than the TTL when the broker came back were
    # dropped, not published late.
    oldest = min(m.headers[message.RECV_NS] for m in trades)
    assert oldest > restored_ns - 1.2e9, (restored_ns - oldest) / 1e9
    assert listener.client is client and listener.reconnects == {}


async def test_topology_with_other_arguments_is_a_clear_error(make_emulator, mdq, run_listener):
    emulator = await make_emulator(sim_rate=500, sim_symbols=50)
    first = await run_listener(emulator, mdq)
    other = mdq.model_copy(update={"mdq_message_ttl_ms": 1234})
    second = await run_listener(emulator, other, wait=False, mdl_instance="second")
    await eventually(lambda: second.publisher.last_error is not None, within=10)
    assert "other arguments" in second.publisher.last_error
    assert not second.readiness()[0]
    assert first is not second


# -- run-time control through Redis ------------------------------------------------------------------


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


async def test_subscriptions_pause_and_reconnect_at_run_time(make_emulator, mdq, run_listener, redis_client):
    emulator = await make_emulator(sim_rate=2000, sim_symbols=200)
    listener = await run_listener(emulator, mdq, subscriptions="T.*", redis_url=REDIS_URL)
    await eventually(lambda: listener.control.connected)
    await drain(f"{mdq.mdq_exchange}.quotes")

    desired = await control.request(redis_client, "stocks", subscriptions="Q.*")
    assert desired == control.Desired(("Q.*",))
    await eventually(lambda: listener.client.subs == {"Q.*"})
    await asyncio.sleep(0.3)
    await drain(f"{mdq.mdq_exchange}.trades", settle=0.1)  # what was in flight
    await asyncio.sleep(0.5)
    assert await drain(f"{mdq.mdq_exchange}.quotes")
    assert not await drain(f"{mdq.mdq_exchange}.trades", settle=0.1)

    await control.request(redis_client, "stocks", paused=True)
    await eventually(lambda: listener.client.subs == set())
    await asyncio.sleep(0.3)
    await drain(f"{mdq.mdq_exchange}.quotes", settle=0.1)
    await asyncio.sleep(0.5)
    assert not await drain(f"{mdq.mdq_exchange}.quotes", settle=0.1)
    status = orjson.loads(await redis_client.get(names.mdl_status("stocks")))
    assert status["paused"] is True and status["subscriptions"] == ["Q.*"]
    assert 0 < await redis_client.ttl(names.mdl_status("stocks")) <= names.MDL_STATUS_TTL_S

    await control.request(redis_client, "stocks", paused=False)
    await eventually(lambda: listener.client.subs == {"Q.*"})
    client = listener.client
    await control.request(redis_client, "stocks", reconnect=True)
    await eventually(lambda: listener.reconnects.get("requested") == 1)
    await eventually(lambda: listener.client is not client and listener.client.subs == {"Q.*"})


async def test_invalid_desired_state_is_refused_and_reported(make_emulator, mdq, run_listener, redis_client):
    emulator = await make_emulator(sim_rate=500, sim_symbols=50)
    listener = await run_listener(emulator, mdq, subscriptions="T.*", redis_url=REDIS_URL)
    await eventually(lambda: listener.control.connected)
    with pytest.raises(control.ControlError):
        await control.request(redis_client, "stocks", subscriptions="NOPE.AAPL")
    # a writer that skipped validation: the listener refuses it and keeps what it has
    await redis_client.set(names.mdl_desired("stocks"), b'{"subscriptions":"T.*,XX.Y"}')
    await redis_client.publish(names.mdl_control("stocks"), b'{"action":"reload"}')
    await redis_client.publish(names.mdl_control("stocks"), b"not json")
    await eventually(lambda: listener.control.rejected is not None)
    assert "XX.Y" in listener.control.rejected
    assert listener.desired.subscriptions == ("T.*",)

    async def reported() -> dict:
        raw = await redis_client.get(names.mdl_status("stocks"))
        return orjson.loads(raw) if raw else {}

    async def rejection_reported() -> bool:
        return "XX.Y" in ((await reported()).get("rejected") or "")

    await eventually(rejection_reported)


async def test_requests_start_from_what_the_listener_follows_and_never_undo_each_other(
    make_emulator, mdq, run_listener, redis_client
):
    with pytest.raises(control.ControlError, match="no subscriptions known"):
        await control.request(redis_client, "stocks", paused=True)  # no listener, nothing asked yet
    emulator = await make_emulator(sim_rate=500, sim_symbols=50)
    listener = await run_listener(emulator, mdq, subscriptions="T.*,Q.AAPL", redis_url=REDIS_URL)
    await eventually(lambda: redis_client.exists(names.mdl_status("stocks")))
    # a pause before any change keeps the subscriptions the listener was started with
    assert await control.request(redis_client, "stocks", paused=True) == control.Desired(
        ("T.*", "Q.AAPL"), True
    )
    await eventually(lambda: listener.client.subs == set())
    # many at once: every request starts from the state the previous one left
    changes = [control.request(redis_client, "stocks", subscriptions=f"T.*,Q.S{i}") for i in range(12)]
    await asyncio.gather(*changes[:6], control.request(redis_client, "stocks", paused=False), *changes[6:])
    final = control.parse_desired(await redis_client.get(names.mdl_desired("stocks")), "stocks")
    assert final.paused is False and final.subscriptions[0] == "T.*"
    await eventually(lambda: listener.client.subs == set(final.subscriptions))


async def test_desired_state_in_redis_wins_at_start(make_emulator, mdq, run_listener, redis_client):
    await control.request(redis_client, "stocks", subscriptions=["Q.*", "T.AAPL"])
    emulator = await make_emulator(sim_rate=500, sim_symbols=50)
    listener = await run_listener(emulator, mdq, subscriptions="T.*", redis_url=REDIS_URL)
    await eventually(lambda: listener.client is not None and listener.client.subs == {"Q.*", "T.AAPL"})


# -- the tap -----------------------------------------------------------------------------------------


async def test_tap_records_every_frame_for_replay(tmp_path, make_emulator, mdq, run_listener):
    emulator = await make_emulator(sim_rate=2000, sim_symbols=100)
    tap = tmp_path / "tap.mdrec"
    listener = await run_listener(emulator, mdq, mdl_tap_file=str(tap))
    await eventually(lambda: listener._conn_frames > 30)
    await emulator.stop()  # no more frames
    frames = listener._conn_frames
    await listener._tap.close()  # flush; the fixture's stop closes it again harmlessly
    listener._tap = None
    with RecordingReader(tap) as reader:
        recorded = list(reader)
    assert len(recorded) == frames
    assert all(orjson.loads(r.payload) for r in recorded)


# -- the process ---------------------------------------------------------------------------------------


async def mdl_process(emulator, mdq: MdqSettings, **env: str) -> asyncio.subprocess.Process:
    environ = {
        **os.environ,
        "MASSIVE_API_KEY": KEY,
        "MASSIVE_FEED": emulator.feed,
        "MASSIVE_SUBSCRIPTIONS": "T.*",
        "MDQ_EXCHANGE": mdq.mdq_exchange,
        "MDL_HTTP_PORT": "0",
        "REDIS_URL": REDIS_URL,
        **env,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mdpipe", "mdl", env=environ, stderr=asyncio.subprocess.PIPE
    )


async def test_wrong_api_key_exits_non_zero_with_one_clear_line(emulator, mdq):
    secret = "wrong-key-123456"
    process = await mdl_process(emulator, mdq, MASSIVE_API_KEY=secret, LOG_LEVEL="WARNING")
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert lines[-1].startswith("mdpipe mdl: the vendor refused MASSIVE_API_KEY")
    assert "Traceback" not in stderr.decode()
    assert secret not in stderr.decode()


async def test_process_stops_cleanly_on_sigterm(emulator, mdq):
    process = await mdl_process(emulator, mdq)
    await eventually(lambda: len(emulator.clients) == 1, within=15)
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert b"Traceback" not in stderr
    await eventually(lambda: emulator.clients == [])


def test_settings_table_names_the_listener_settings():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in ("MDQ_SHARDS", "MDQ_MESSAGE_TTL_MS", "MDL_HANDOFF_FRAMES", "MDL_TAP_FILE"):
        assert f"`{name}`" in readme
