"""A Redis pub/sub connection at the wire: RESP commands out, replies parsed by hiredis in batches.

The subscriber's hot path. redis-py's ``PubSub.get_message`` costs about 11 us of CPU per message (one
awaited call, its locks and dict per message); here one socket read of up to 256 KiB is parsed in C into
every reply it holds, about 0.4 us per message (measured on the build machine). A gateway that fans out
thousands of updates a second reads its input with a small fraction of a core instead of most of one.

``Wire`` does only what pub/sub needs: connect (``redis://``, ``rediss://``, ``unix://``), AUTH, SELECT,
CLIENT SETNAME, then SUBSCRIBE, PSUBSCRIBE, their opposites and PING. ``Pipeline`` is the processors'
write path on the same ground: whole transactions encoded by the caller, replies matched in order.
Errors are redis-py's exceptions, so callers treat them as any other connection failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

READ_BYTES = 1 << 22  # one read takes what has arrived, up to this (and the stream buffers up to twice it)
DRAIN_ABOVE = 1 << 20  # a Pipeline waits for its writes to drain once this much is buffered
#: TCP keepalive: a dead peer is found within about a minute even when nothing is being sent.
KEEPALIVE = {
    opt: value
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))
    if (opt := getattr(socket, name, None)) is not None
}


def command(*args: bytes | str | int) -> bytes:
    """One command in RESP."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Wire:
    def __init__(
        self,
        url: str,
        client_name: str,
        connect_timeout: float,
        write_timeout: float,
        keepalive: dict[int, int],
    ) -> None:
        self.url, self.client_name, self.keepalive = url, client_name, keepalive
        self.connect_timeout, self.write_timeout = connect_timeout, write_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader()

    async def connect(self) -> None:
        parts = urlsplit(self.url)
        query = parse_qs(parts.query)
        db = int(query.get("db", ["0"])[0] or 0)
        try:
            if parts.scheme == "unix":
                opened = asyncio.open_unix_connection(unquote(parts.path), limit=READ_BYTES)
            else:
                tls = ssl.create_default_context() if parts.scheme == "rediss" else None
                opened = asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 6379, ssl=tls,
                                                 limit=READ_BYTES)  # fmt: skip
                if parts.path.strip("/"):
                    db = int(parts.path.strip("/"))
            self._reader, self._writer = await asyncio.wait_for(opened, self.connect_timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise RedisConnectionError(f"cannot connect: {type(exc).__name__}: {exc}") from None
        sock = self._writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in self.keepalive.items():
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
        setup: list[bytes] = []
        if parts.password is not None:
            user, password = unquote(parts.username or ""), unquote(parts.password)
            setup.append(command("AUTH", user, password) if user else command("AUTH", password))
        if db:
            setup.append(command("SELECT", db))
        setup.append(command("CLIENT", "SETNAME", self.client_name))
        self.send(b"".join(setup))
        await self.drain()
        for _ in setup:
            reply = await self._one(self.connect_timeout)
            if isinstance(reply, hiredis.ReplyError):
                text = str(reply)
                error = (
                    AuthenticationError if "AUTH" in text.upper() or "WRONGPASS" in text else ResponseError
                )
                raise error(text)

    async def _one(self, wait_s: float) -> Any:
        while True:
            reply = self._parser.gets()
            if reply is not False:
                return reply
            await self._fill(wait_s)

    async def _fill(self, wait_s: float | None) -> bool:
        """Read what the socket holds into the parser; False on timeout (``None``: no timeout)."""
        assert self._reader is not None
        try:
            read = self._reader.read(READ_BYTES)
            data = await (read if wait_s is None else asyncio.wait_for(read, wait_s))
        except TimeoutError:
            return False
        except OSError as exc:
            raise RedisConnectionError(f"{type(exc).__name__}: {exc}") from None
        if not data:
            raise RedisConnectionError("Connection closed by server.")
        self._parser.feed(data)
        return True

    def send(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        assert self._writer is not None
        return self._writer.transport.get_write_buffer_size()

    async def drain(self) -> None:
        assert self._writer is not None
        try:
            await asyncio.wait_for(self._writer.drain(), self.write_timeout)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"{type(exc).__name__}: {exc}") from None

    async def replies(self, wait_s: float) -> list[Any]:
        """Every reply that has arrived, waiting up to ``wait_s`` for the first; [] when none came."""
        out: list[Any] = []
        gets = self._parser.gets
        while (reply := gets()) is not False:
            out.append(reply)
        if not out and await self._fill(wait_s):
            while (reply := gets()) is not False:
                out.append(reply)
        for reply in out:
            if isinstance(reply, hiredis.ReplyError):
                raise RedisError(str(reply))
        return out

    async def request(self, payload: bytes, wait_s: float) -> Any:
        """Send one command (``command(...)``) and return its reply, a ``hiredis.ReplyError`` included
        (for the caller to judge); for a connection not in pub/sub mode with nothing else in flight
        (``mdc.topology.discover``'s ``CLUSTER SHARDS``). Raises ``ConnectionError`` when no reply came
        within ``wait_s``."""
        self.send(payload)
        await self.drain()
        try:
            return await asyncio.wait_for(self._one(wait_s), wait_s)
        except TimeoutError:
            raise RedisConnectionError(f"no reply within {wait_s} s") from None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 2)


class Pipeline:
    """Commands for one connection, pipelined: ``await execute(payload, n)`` sends ``n`` commands already
    encoded in RESP (``command``, ``mdp.writes``) and returns their ``n`` replies, in order.

    A processor's writes: redis-py builds, packs and parses each command in Python (about 5 us a
    command); here a whole group's transaction is one bytes object built by the caller, and one reader
    task lets hiredis parse every reply that has arrived at once. Several callers may have requests in
    flight on the one connection (Redis answers in order, so replies are matched first in, first out),
    which also keeps their writes in the order they were sent. A reply that is an error comes back as a
    ``hiredis.ReplyError`` in the list, for the caller to judge; a broken connection, or one whose
    oldest request has waited ``timeout`` seconds for its replies, fails every request in flight with
    ``redis.exceptions.ConnectionError`` and is opened again by the next call. The timeout is kept by
    one watchdog per connection, not a timer per request: a request costs a future and a write.
    """

    def __init__(self, url: str, client_name: str, timeout: float, keepalive: dict[int, int]) -> None:
        self.url, self.client_name, self.timeout, self.keepalive = url, client_name, timeout, keepalive
        self._wire: Wire | None = None
        self._tasks: list[asyncio.Task[None]] = []  # the connection's reader and watchdog
        #: requests in flight, oldest first: (replies expected, future, replies so far, monotonic sent)
        self._waiting: deque[tuple[int, asyncio.Future[list[Any]], list[Any], float]] = deque()
        self._connecting: asyncio.Lock | None = None

    async def execute(self, payload: bytes, n: int) -> list[Any]:
        wire = self._wire or await self._connect()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._waiting.append((n, future, [], loop.time()))
        wire.send(payload)
        try:
            if wire.buffered() > DRAIN_ABOVE:  # Redis reads slower than we write: wait for it
                await wire.drain()
            return await future
        except RedisConnectionError as exc:
            self._broken(wire, exc)
            raise

    async def _connect(self) -> Wire:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._wire is not None:
                return self._wire
            wire = Wire(self.url, self.client_name, self.timeout, self.timeout, self.keepalive)
            try:
                await wire.connect()
            except BaseException:
                await wire.close()
                raise
            self._wire = wire
            self._tasks = [
                asyncio.create_task(self._read(wire), name="redis-pipeline-reader"),
                asyncio.create_task(self._watch(wire), name="redis-pipeline-watchdog"),
            ]
            return wire

    async def _watch(self, wire: Wire) -> None:
        """Break the connection when its oldest request has waited ``timeout`` for its replies."""
        loop = asyncio.get_running_loop()
        while self._wire is wire:
            await asyncio.sleep(self.timeout / 4)
            if self._waiting and loop.time() - self._waiting[0][3] > self.timeout:
                self._broken(wire, RedisConnectionError(f"no reply within {self.timeout} s"))

    async def _read(self, wire: Wire) -> None:
        parser, waiting = wire._parser, self._waiting
        try:
            while True:
                await wire._fill(None)
                while (reply := parser.gets()) is not False:
                    if not waiting:
                        raise RedisConnectionError("a reply nobody asked for")
                    n, future, replies, _ = waiting[0]
                    replies.append(reply)
                    if len(replies) == n:
                        waiting.popleft()
                        if not future.done():
                            future.set_result(replies)
        except (RedisError, OSError) as exc:
            self._broken(
                wire, exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(str(exc))
            )
        except asyncio.CancelledError:
            self._broken(wire, RedisConnectionError("closed"))
            raise

    def _broken(self, wire: Wire, exc: RedisConnectionError) -> None:
        """Fail every request in flight on ``wire`` and forget it (the next call connects again)."""
        if self._wire is not wire:
            return
        self._wire = None
        while self._waiting:
            future = self._waiting.popleft()[1]
            if not future.done():
                future.set_exception(RedisConnectionError(str(exc)))
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._tasks = []
        if wire._writer is not None:
            wire._writer.close()

    async def close(self) -> None:
        wire = self._wire
        if wire is not None:
            self._broken(wire, RedisConnectionError("closed"))
            await wire.close()
