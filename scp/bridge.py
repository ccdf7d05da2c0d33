"""The data-plane side of the control plane: Redis and RabbitMQ, reached from WSGI threads.

SCP's request handlers are synchronous (py4web under gunicorn); the MDC reader, the listener's control
requests and aio-pika are asynchronous. Rather than a second, synchronous copy of those contracts, each
worker process runs one event loop in a daemon thread and hands it coroutines (``Bridge.call``), with
a timeout: a slow Redis or broker answers 503, it never holds a WSGI thread for long.

Built lazily per process (after gunicorn forks), and closed at exit. Its Redis client is the
``Target``'s: a ``RedisCluster`` on a Redis Cluster, with which the reader, the control requests and
the signal SCAN work as they are (``mdc.reader``, ``mdl.control``, ``scp.api``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aio_pika
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from mdc.connect import Target
from mdc.names import Names
from mdc.reader import Reader
from mdq import topology
from mdq.connection import connect as amqp_connect

T = TypeVar("T")
TIMEOUT_S = 3.0


class Unavailable(Exception):
    """Redis or RabbitMQ did not answer in time: the message is safe to show (no URL, no password)."""


class Bridge:
    def __init__(self, target: Target, amqp_url: str, prefix: str, exchange: str, shards: int) -> None:
        self.target, self.amqp_url = target, amqp_url
        self.names = Names(prefix)
        self.exchange, self.shards = exchange, shards
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="scp-bridge", daemon=True)
        self._thread.start()
        self.redis: Redis | RedisCluster = self.call(self._redis, timeout=TIMEOUT_S)
        self.reader = Reader(self.redis, self.names)
        self._amqp: aio_pika.abc.AbstractConnection | None = None
        self._amqp_lock: asyncio.Lock | None = None

    async def _redis(self) -> Redis | RedisCluster:
        # made on the bridge's loop: an asyncio client's connections belong to the loop that opens them
        return self.target.client(
            socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S, max_connections=32
        )

    def call(self, work: Callable[[], Awaitable[T]], timeout: float = TIMEOUT_S) -> T:
        """Run ``work()`` on the bridge's loop; ``Unavailable`` when it fails to connect or takes too long."""
        future = asyncio.run_coroutine_threadsafe(_within(work, seconds=timeout), self.loop)
        try:
            return future.result(timeout + 1)
        except TimeoutError:
            future.cancel()
            raise Unavailable("timed out") from None
        except (OSError, ConnectionError) as exc:
            raise Unavailable(type(exc).__name__) from None
        except Exception as exc:
            if _is_connection_error(exc):
                raise Unavailable(type(exc).__name__) from None
            raise

    # -- RabbitMQ -------------------------------------------------------------------------------------

    async def queues(self) -> list[dict[str, Any]]:
        """Depth and consumers of every MDQ queue (passive declares: nothing is created)."""
        if self._amqp_lock is None:
            self._amqp_lock = asyncio.Lock()
        async with self._amqp_lock:
            if self._amqp is None or self._amqp.is_closed:
                self._amqp = await amqp_connect(self.amqp_url, "mdpipe-scp")
        out = []
        names = [*topology.queue_names(self.exchange, self.shards), topology.dead_letter_name(self.exchange)]
        for name in names:
            channel = await self._amqp.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
                result = queue.declaration_result
                out.append(
                    {"name": name, "messages": result.message_count, "consumers": result.consumer_count}
                )
            except aio_pika.exceptions.ChannelClosed:
                out.append({"name": name, "missing": True})
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
        return out

    async def redis_health(self) -> dict[str, Any]:
        started = time.perf_counter()
        await self.redis.ping()
        return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}

    def close(self) -> None:
        async def shut() -> None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
            if self._amqp is not None:
                with contextlib.suppress(Exception):
                    await self._amqp.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(2)
        self.loop.call_soon_threadsafe(self.loop.stop)


async def _within(work: Callable[[], Awaitable[T]], *, seconds: float) -> T:
    async with asyncio.timeout(seconds):
        return await work()


def _is_connection_error(exc: BaseException) -> bool:
    from aiormq.exceptions import AMQPConnectionError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeout

    return isinstance(exc, RedisConnectionError | RedisTimeout | AMQPConnectionError)


_bridges: dict[int, Bridge] = {}
_lock = threading.Lock()


def bridge(factory: Callable[[], Bridge]) -> Bridge:
    """This process's bridge (one per process: a fork gets its own)."""
    pid = os.getpid()
    with _lock:
        found = _bridges.get(pid)
        if found is None:
            found = _bridges[pid] = factory()
            atexit.register(found.close)
        return found
