"""Helpers for the gateway tests: a running gateway on a prefix of the test's own, tokens, real WebSocket
clients that collect events, and a publisher that writes MDC state and updates as the processors do."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from mdc.names import Names
from mdpipe.settings import MdcSettings, WdsSettings
from wds.server import Gateway
from wds.tokens import mint

from .conftest import REDIS_URL
from .mdp_support import mdc_settings


def wds_settings(**overrides: Any) -> WdsSettings:
    values: dict[str, Any] = {"wds_port": 0, "wds_http_port": 0, "wds_auth_timeout_s": 1.0}
    values.update(overrides)
    return WdsSettings(**values)


@contextlib.asynccontextmanager
async def running(
    settings: WdsSettings | None = None,
    mdc: MdcSettings | None = None,
    redis_url: str = REDIS_URL,
    **kw: Any,
) -> AsyncIterator[Gateway]:
    """A gateway, started and subscribed to Redis; stopped at the end. ``kw``: ``rest``, ``days``."""
    gateway = Gateway(settings or wds_settings(), mdc or mdc_settings(), redis_url=redis_url, **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    try:
        for _ in range(500):
            if gateway.server is not None and gateway.subscriber.connected:
                break
            await asyncio.sleep(0.01)
        yield gateway
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def token(gateway: Gateway, channels: list[str] | None = None, subject: str = "alice", **kw: Any) -> str:
    return mint(gateway.settings, subject, channels or ["*"], **kw)


def url(gateway: Gateway, tok: str | None = None) -> str:
    base = f"ws://127.0.0.1:{gateway.port}/ws"
    return f"{base}?token={tok}" if tok else base


class Peer:
    """A real WebSocket client that reads every event into ``events`` (unless paused)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.messages = 0
        self.reading = asyncio.Event()
        self.reading.set()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                await self.reading.wait()
                raw = await self.ws.recv()
                self.messages += 1
                self.events.extend(orjson.loads(raw))

    async def send(self, **action: Any) -> None:
        await self.ws.send(orjson.dumps(action).decode())

    def of(self, event: str, channel: str | None = None) -> list[dict[str, Any]]:
        return [
            e for e in self.events if e["event"] == event and (channel is None or e.get("channel") == channel)
        ]

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()


async def peer(address: str, *, small_buffer: bool = False, **kw: Any) -> Peer:
    """A connected ``Peer``; ``small_buffer``: a tiny socket receive buffer and one queued message, so a
    peer that stops reading is soon seen as one by the server."""
    if small_buffer:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = address.split("/")[2].split(":")
        sock.connect((host, int(port)))
        sock.setblocking(False)
        kw.update(sock=sock, max_queue=1)
    return Peer(await connect(address, open_timeout=5, **kw))


# As mdp/lua/prelude.lua publishes: the seq, the state and the update in one atomic step.
_PUBLISH = """
local seq = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('SET', KEYS[2], ARGV[2])
redis.call('PUBLISH', KEYS[3], '{"type":"stats","channel":"' .. ARGV[1] .. '","seq":' .. seq ..
  ',"ts":' .. ARGV[3] .. ',"sent":' .. ARGV[3] .. ',"src":"test","data":' .. ARGV[2] .. '}')
return seq
"""


class Market:
    """Writes a symbol's stats and publishes its update atomically, as the processors' scripts do."""

    def __init__(self, redis: Redis, names: Names) -> None:
        self.redis, self.names = redis, names
        self._script = redis.register_script(_PUBLISH)

    async def stats(self, sym: str, n: int, pad: int = 0) -> int:
        """Set ``stats.SYM`` to ``{"sym", "n"}`` (and ``pad`` bytes) and publish it; returns its seq."""
        channel = f"stats.{sym}"
        doc = {"sym": sym, "n": n, "pad": "x" * pad} if pad else {"sym": sym, "n": n}
        keys = [self.names.seq_key(channel), self.names.stats(sym), self.names.redis_channel(channel)]
        now = str(int(time.time() * 1000))
        return int(await self._script(keys=keys, args=[channel, orjson.dumps(doc), now]))
