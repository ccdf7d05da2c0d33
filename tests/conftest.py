"""Shared fixtures: emulators on ephemeral ports, and a helper to run the real massive client."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import pytest
from massive import WebSocketClient
from redis.asyncio import Redis

from mdpipe.settings import MdqSettings, SimSettings
from mdq import topology
from sim.server import Emulator

START = "2026-11-20T14:30:00Z"  # a fixed market clock, so tests are deterministic
KEY = "test-key"
ALL_STOCKS = ["T.*", "Q.*", "A.*", "AM.*", "LULD.*", "NOI.*"]  # every event type the emulator sends
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/15"  # a database of its own, emptied by the tests that use it


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Settings are read from the environment: none of ours may leak in from the shell."""
    for name in list(os.environ):
        if name.startswith(("MDQ_", "MDL_", "MDC_", "MDP_", "MASSIVE_", "SIM_", "WDS_", "SCP_", "PYDAL_")):
            monkeypatch.delenv(name)


@pytest.fixture
async def make_emulator() -> AsyncIterator[Callable[..., Awaitable[Emulator]]]:
    """``await make_emulator(sim_rate=...)``: a started emulator on ephemeral ports, stopped at the end."""
    started: list[Emulator] = []

    async def make(**overrides: Any) -> Emulator:
        settings = SimSettings(
            **{
                "sim_port": 0,
                "sim_http_port": 0,
                "sim_api_key": KEY,
                "sim_start": START,
                "sim_symbols": 500,
                "sim_rate": 5000,
                **overrides,
            }
        )
        emulator = Emulator(settings)
        await emulator.start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        await emulator.stop()


@pytest.fixture
async def emulator(make_emulator) -> Emulator:
    return await make_emulator()


def client_for(emulator: Emulator, subscriptions: list[str], **kw: Any) -> WebSocketClient:
    """The real massive client pointed at ``emulator``."""
    kw.setdefault("api_key", KEY)
    kw.setdefault("raw", True)
    return WebSocketClient(
        feed=emulator.feed, market=emulator.market, secure=False, subscriptions=subscriptions, **kw
    )


class Collector:
    """Runs ``client.connect`` in a task and keeps what the processor receives."""

    def __init__(self, client: WebSocketClient, **connect_kw: Any) -> None:
        self.client = client
        self.received: list[Any] = []
        self._arrived = asyncio.Event()
        self.task = asyncio.create_task(client.connect(self._process, **connect_kw))

    async def _process(self, message: Any) -> None:
        self.received.append(message)
        self._arrived.set()

    async def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = 10.0) -> None:
        async def until() -> None:
            while not predicate(self.received):
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(until(), timeout)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 5)
        if not self.task.done():
            self.task.cancel()


async def http_exchange(port: int, raw: bytes) -> tuple[int, str, bytes]:
    """Send ``raw`` bytes to an HTTP server on 127.0.0.1; returns (status, head text, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.decode("latin-1"), body


async def http(port: int, method: str, target: str, headers: dict[str, str] | None = None):
    """One well-formed HTTP/1.1 request; returns (status, head text, body)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: mdpipe", "Content-Length: 0"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return await http_exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


@pytest.fixture
async def make_mdq() -> AsyncIterator[Callable[..., MdqSettings]]:
    """``make_mdq(mdq_shards=4, ...)``: MDQ settings on an exchange of the test's own; its queues and
    exchange are deleted at the end, so tests never see each other's messages."""
    made: list[MdqSettings] = []

    def make(**overrides: Any) -> MdqSettings:
        exchange = f"test-{uuid.uuid4().hex[:10]}"
        settings = MdqSettings(mdq_exchange=exchange, **overrides)
        made.append(settings)
        return settings

    yield make
    await delete_mdq(*made)


async def delete_mdq(*made: MdqSettings) -> None:
    """Delete the queues and exchanges of these MDQ settings (a test's own)."""
    if not made:
        return
    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        for settings in made:
            for name in topology.queue_names(settings.mdq_exchange, settings.mdq_shards):
                await channel.queue_delete(name)
            await channel.exchange_delete(settings.mdq_exchange)
            await channel.queue_delete(topology.dead_letter_name(settings.mdq_exchange))
            await channel.exchange_delete(topology.dead_letter_name(settings.mdq_exchange))


@pytest.fixture
async def mdq(make_mdq) -> MdqSettings:
    return make_mdq()


async def drain(
    queue: str, *, settle: float = 0.3, within: float = 3.0
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """The messages in ``queue``, in order (acknowledged): until none came for ``settle`` s, or for
    ``within`` s at most while data keeps flowing."""
    connection = await aio_pika.connect(RABBITMQ_URL)
    got: list[aio_pika.abc.AbstractIncomingMessage] = []
    loop = asyncio.get_running_loop()
    async with connection:
        channel = await connection.channel()
        queue_ = await channel.get_queue(queue, ensure=True)
        began = idle_since = loop.time()
        while loop.time() - idle_since < settle and loop.time() - began < within:
            message = await queue_.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.02)
                continue
            got.append(message)
            idle_since = loop.time()
    return got


async def eventually(predicate: Callable[[], object], within: float = 5.0) -> None:
    """Wait for a condition of some component's state (no event to await there); fail after ``within`` s.

    ``predicate`` returns something true or false, or an awaitable of it (conditions read over the network).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.02)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """A client of the tests' Redis database; tests keep to a key prefix of their own."""
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()
