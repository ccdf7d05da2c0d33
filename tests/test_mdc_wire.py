"""The pub/sub wire: RESP commands, connection set-up (SELECT, CLIENT SETNAME), replies read in batches,
and errors as redis-py's exceptions, against the real Redis."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from mdc.wire import Wire, command
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
