"""The wire: RESP commands, connection set-up (SELECT, CLIENT SETNAME), replies read in batches, the
processors' pipelined connection, and errors as redis-py's exceptions, against the real Redis (and a
server that never answers)."""

from __future__ import annotations

import asyncio

import hiredis
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from mdc.wire import Pipeline, Wire, command
from mdpipe.private_services import free_port

from .conftest import REDIS_URL


def test_command_is_resp():
    assert command("PING") == b"*1\r\n$4\r\nPING\r\n"
    assert command(b"SUBSCRIBE", "md:a", 15) == b"*3\r\n$9\r\nSUBSCRIBE\r\n$4\r\nmd:a\r\n$2\r\n15\r\n"
    assert command("SET", "k", "é") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\xc3\xa9\r\n"


async def test_a_wire_selects_names_subscribes_and_reads_every_reply_at_once():
    wire = Wire(REDIS_URL, "mdc-wire-test", 5, 5, {})
    await wire.connect()
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        names = [c["name"] for c in await r.client_list()]
        assert "mdc-wire-test" in names
        wire.send(command("SUBSCRIBE", "wire:a") + command("PING", "sync"))
        await wire.drain()
        got: list = []
        while [b"pong", b"sync"] not in got:
            got += await wire.replies(2)
        assert got[0] == [b"subscribe", b"wire:a", 1]
        for i in range(500):
            await r.publish("wire:a", b"m%d" % i)
        messages: list = []
        while len(messages) < 500:
            messages += [x for x in await wire.replies(2) if x[0] == b"message"]
        assert [m[2] for m in messages] == [b"m%d" % i for i in range(500)]  # in order, none lost
        assert await wire.replies(0.05) == []  # nothing more: an empty batch after the wait
        wire.send(command("NOSUCHCOMMAND"))
        await wire.drain()
        with pytest.raises(RedisError):
            await wire.replies(2)
    finally:
        await wire.close()
        await r.aclose()


async def test_a_closed_or_absent_server_is_a_connection_error():
    with pytest.raises(RedisConnectionError):
        await Wire(f"redis://127.0.0.1:{free_port()}/0", "x", 2, 2, {}).connect()
    wire = Wire(REDIS_URL, "mdc-wire-killed", 5, 5, {})
    await wire.connect()
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        for c in await r.client_list():
            if c["name"] == "mdc-wire-killed":
                await r.client_kill_filter(_id=c["id"])
        with pytest.raises(RedisConnectionError):
            await wire.replies(2)
    finally:
        await wire.close()
        await r.aclose()


async def test_a_pipeline_matches_replies_in_order_to_requests_in_flight():
    pipe = Pipeline(REDIS_URL, "mdc-pipeline-test", 5, {})
    try:
        key = f"pipe:{free_port()}"
        first = command("MULTI") + command("INCR", key) + command("INCR", key) + command("EXEC")
        second = command("GET", key) + command("HGET", key, "x")  # a wrong type: an error reply
        a, b = await asyncio.gather(pipe.execute(first, 4), pipe.execute(second, 2))
        assert a[0] == b"OK" and a[3] == [1, 2]
        assert b[0] == b"2" and isinstance(b[1], hiredis.ReplyError) and "WRONGTYPE" in str(b[1])
        assert await pipe.execute(command("DEL", key), 1) == [1]
    finally:
        await pipe.close()


async def test_a_pipeline_fails_what_is_in_flight_when_the_server_is_silent_or_gone_and_reconnects():
    accepted: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        answered = False
        while await reader.read(65536):  # answers the set-up (CLIENT SETNAME), then nothing
            if not answered:
                writer.write(b"+OK\r\n")
                answered = True

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pipe = Pipeline(f"redis://127.0.0.1:{port}/0", "silent", 0.4, {})
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(RedisConnectionError, match="no reply within"):
            await pipe.execute(command("PING"), 1)
        assert asyncio.get_running_loop().time() - started < 2  # the watchdog, not forever
        accepted[-1].close()
        task = asyncio.ensure_future(pipe.execute(command("PING"), 1))  # a new connection ...
        await asyncio.sleep(0.2)
        accepted[-1].close()  # ... which the server closes
        with pytest.raises(RedisConnectionError):
            await task
        assert len(accepted) == 2
    finally:
        await pipe.close()
        server.close()
