"""The gateway's writer against real Redis and real WebSocket clients: frames written straight to the
transport (sizes where the length form changes, compression refused, nothing after a close frame),
TCP_NOTSENT_LOWAT on every client socket, and conflation that loses no print and no feed update."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import os
import socket
import struct
import time
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from mdc.names import Names
from wds.writer import NOTSENT_LOWAT, TCP_NOTSENT_LOWAT, WRITE_LIMIT

from .conftest import eventually
from .wds_support import Market, peer, running, token, url

SIOCOUTQNSD = 0x894B  # Linux: bytes in a socket's send queue not yet sent


# As mdp's scripts publish: the channel's seq and its update in one atomic step (no state written: the
# snapshot is then empty, with the seq).
_PUBLISH = """
local seq = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PUBLISH', KEYS[2], '{"type":"' .. ARGV[2] .. '","channel":"' .. ARGV[1] .. '","seq":' .. seq ..
  ',"ts":' .. ARGV[3] .. ',"sent":' .. ARGV[3] .. ',"src":"test","data":' .. ARGV[4] .. '}')
return seq
"""


class Feed:
    """Publishes trades and alerts updates as the processors do."""

    def __init__(self, redis: Redis, names: Names) -> None:
        self.names = names
        self._script = redis.register_script(_PUBLISH)

    async def publish(self, channel: str, kind: str, data: Any) -> int:
        keys = [self.names.seq_key(channel), self.names.redis_channel(channel)]
        now = str(int(time.time() * 1000))
        return int(await self._script(keys=keys, args=[channel, kind, now, orjson.dumps(data)]))


def envelope(channel: str, seq: int, size: int) -> bytes:
    """An MDC envelope whose ``update`` message (``[{"event":"update",...}]``) is ``size`` bytes."""
    head = b'{"type":"stats","channel":"%s","seq":%d,"ts":1,"sent":1,"src":"t","data":"' % (
        channel.encode(),
        seq,
    )
    pad = size - len(b'[{"event":"update",') - (len(head) - 1) - len(b'"}]')
    assert pad >= 0
    return head + b"x" * pad + b'"}'


def server_socket(gw, p) -> Any:
    (client,) = [c for c in gw.clients if c.ws.remote_address[1] == p.ws.local_address[1]]
    return client, client.ws.transport.get_extra_info("socket")


# -- frames ----------------------------------------------------------------------------------------------


async def test_messages_of_every_length_form_reach_real_clients(redis):
    """Sizes on both sides of 126 and 65,536 bytes (where the header's length takes 2, then 8 bytes):
    the websockets client, which checks every frame, reads each message whole. It offers compression,
    which WDS declines, so the raw frames are right for it."""
    sizes = [2 + 120, 125, 126, 127, 65_535, 65_536, 65_537, 300_000]
    async with running() as gw:
        peers = [await peer(url(gw, token(gw))) for _ in range(2)]
        for p in peers:
            assert p.ws.protocol.extensions == []  # permessage-deflate offered, not negotiated
            await p.send(action="subscribe", channels=["stats.S"])
        await eventually(lambda: all(p.of("snapshot") for p in peers))
        raws = []
        for i, size in enumerate(sizes):
            raw = envelope("stats.S", 10**6 + i, size)
            raws.append(raw)
            gw._on_update("stats.S", raw)
            await asyncio.sleep(0.02)  # one message each
        await eventually(lambda: all(len(p.of("update")) == len(sizes) for p in peers))
        for p in peers:
            got = p.of("update")
            assert [len(orjson.dumps([e])) for e in got] == sizes
            assert [e["data"] for e in got] == [orjson.loads(r)["data"] for r in raws]
            await p.close()


def client_frame(opcode: Opcode, data: bytes) -> bytes:
    return Frame(opcode, data).serialize(mask=True, extensions=[])


def frames_of(data: bytes) -> list[Frame]:
    """Every frame in ``data``, in order, by websockets' own parser; the last one complete."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    out: list[Frame] = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            out.append(done.value)
    return out


@pytest.mark.parametrize("closer", ["client", "server"])
async def test_nothing_is_written_after_a_close_frame_mid_stream(redis, closer):
    """A close frame, the client's or the server's, while updates stream to it: it is the last frame the
    client gets, and the other clients never notice."""
    async with running() as gw:
        tok = token(gw)
        witness = await peer(url(gw, tok))
        await witness.send(action="subscribe", channels=["stats.STORM"])
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws?token={tok} HTTP/1.1\r\nHost: wds\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        subscribe = orjson.dumps({"action": "subscribe", "channels": ["stats.STORM"]})
        writer.write(client_frame(Opcode.TEXT, subscribe))
        await eventually(lambda: witness.of("snapshot") and len(gw.channels["stats.STORM"][1]) == 2)
        (raw,) = [c for c in gw.clients if c.ws.remote_address[1] == writer.get_extra_info("sockname")[1]]
        seq = 10**6
        stop = asyncio.Event()

        async def storm() -> None:
            nonlocal seq
            while not stop.is_set():
                for _ in range(20):
                    seq += 1
                    gw._on_update("stats.STORM", envelope("stats.STORM", seq, 400))
                await asyncio.sleep(0)

        storming = asyncio.create_task(storm())
        received = await reader.read(4096)  # updates are flowing
        if closer == "client":
            writer.write(client_frame(Opcode.CLOSE, Close(1000, "bye").serialize()))
        else:
            # websockets' own close, which the gateway does not see coming (client.closing stays False)
            closing = asyncio.create_task(raw.ws.close(4008, "too slow"))
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:  # the storm goes on while the server's close waits
                received += await asyncio.wait_for(reader.read(1 << 16), 5)
            writer.write(client_frame(Opcode.CLOSE, Close(4008, "").serialize()))
        while chunk := await asyncio.wait_for(reader.read(1 << 16), 5):
            received += chunk
        stop.set()
        await storming
        if closer == "server":
            await closing
        writer.close()
        got = frames_of(received)
        assert [f.opcode for f in got].count(Opcode.CLOSE) == 1 and got[-1].opcode is Opcode.CLOSE
        assert got[0].opcode is Opcode.TEXT and len(got) > 2
        assert Close.parse(got[-1].data).code == (1000 if closer == "client" else 4008)
        await eventually(lambda: witness.of("update") and witness.of("update")[-1]["seq"] == seq)
        assert witness.close_code is None and len(gw.clients) == 1
        await witness.close()


async def test_clients_aborting_mid_stream_leave_the_others_served(redis):
    async with running() as gw:
        peers = [await peer(url(gw, token(gw))) for _ in range(6)]
        for p in peers:
            await p.send(action="subscribe", channels=["stats.AB"])
        await eventually(lambda: all(p.of("snapshot") for p in peers))
        for i in range(300):
            gw._on_update("stats.AB", envelope("stats.AB", 10**6 + i, 2000))
            if i == 100:
                for p in peers[:3]:
                    p.ws.transport.abort()  # gone without a close frame, data still coming
            await asyncio.sleep(0)
        for p in peers[3:]:
            await eventually(lambda p=p: p.of("update") and p.of("update")[-1]["seq"] == 10**6 + 299)
            assert p.close_code is None
        await eventually(lambda: len(gw.clients) == 3)
        for p in peers:
            await p.close()


# -- the kernel's buffer -----------------------------------------------------------------------------------


async def test_each_client_socket_gets_tcp_notsent_lowat_and_a_stalled_one_stays_small(redis):
    async with running() as gw:
        market = Market(redis, Names(gw.mdc.mdc_prefix))
        stalled = await peer(url(gw, token(gw)), small_buffer=True)
        fast = await peer(url(gw, token(gw)))
        for p in (stalled, fast):
            await p.send(action="subscribe", channels=["stats.BIG"])
        await eventually(lambda: stalled.of("snapshot") and fast.of("snapshot"))
        for p in (stalled, fast):
            _, sock = server_socket(gw, p)
            assert sock.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT) == NOTSENT_LOWAT
        stalled.reading.clear()
        client, sock = server_socket(gw, stalled)
        transport = client.ws.transport
        last = 0
        for n in range(150):
            last = await market.stats("BIG", n, pad=20_000)
        await eventually(lambda: fast.of("update") and fast.of("update")[-1]["seq"] == last)
        await eventually(lambda: transport.get_write_buffer_size() > WRITE_LIMIT)
        unsent = struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQNSD, struct.pack("i", 0)))[0]
        # the kernel keeps about NOTSENT_LOWAT unsent (plus what one write put in at once); the rest
        # waits in the transport, where the writer sees it and stops, and then in the outbox, conflated
        assert unsent <= NOTSENT_LOWAT + 65_536 + 4096
        for n in range(150, 153):  # the transport is past the limit now: these wait in the outbox
            last = await market.stats("BIG", n, pad=20_000)
        await eventually(lambda: fast.of("update")[-1]["seq"] == last)
        assert client.session.outbox
        stalled.reading.set()
        await eventually(lambda: stalled.of("update") and stalled.of("update")[-1]["seq"] == last)
        assert any(e.get("conflated") for e in stalled.of("update"))
        for p in (stalled, fast):
            await p.close()


# -- conflation that loses nothing -------------------------------------------------------------------------


async def test_a_client_that_fell_behind_gets_every_print_and_every_alert(redis):
    async with running() as gw:
        names = Names(gw.mdc.mdc_prefix)
        market, feed = Market(redis, names), Feed(redis, names)
        slow = await peer(url(gw, token(gw)), small_buffer=True)
        await slow.send(action="subscribe", channels=["stats.FILL", "trades.TX", "alerts"])
        await eventually(lambda: len(slow.of("snapshot")) == 3)
        snapshots = {e["channel"]: e["seq"] for e in slow.of("snapshot")}
        slow.reading.clear()
        client, _ = server_socket(gw, slow)
        for n in range(150):  # fills its socket: the writer skips it, its outbox queues
            await market.stats("FILL", n, pad=20_000)
        await eventually(lambda: client.ws.transport.get_write_buffer_size() > WRITE_LIMIT)  # skipped
        last_trade = last_alert = 0
        for n in range(40):
            trades = [{"t": n, "p": 10.0 + n, "s": 2 * n + k, "i": f"{n}.{k}"} for k in range(2)]
            last_trade = await feed.publish("trades.TX", "trades", trades)
            if n % 2:
                last_alert = await feed.publish("alerts", "alert", {"kind": "new_high", "n": n})
        await eventually(lambda: client.session.outbox.conflated > 0)
        slow.reading.set()
        await eventually(lambda: slow.of("update", "trades.TX") and
                         slow.of("update", "trades.TX")[-1]["seq"] == last_trade)  # fmt: skip
        await eventually(lambda: slow.of("update", "alerts") and
                         slow.of("update", "alerts")[-1]["seq"] == last_alert)  # fmt: skip
        trades = slow.of("update", "trades.TX")
        assert [p["s"] for e in trades for p in e["data"]] == list(range(80))  # every print, in order
        assert any(e.get("conflated") for e in trades) and len(trades) < 40
        seqs = [e["seq"] for e in trades]
        assert seqs == sorted(seqs) and seqs[0] > snapshots["trades.TX"]
        alerts = slow.of("update", "alerts")
        assert [e["data"]["n"] for e in alerts] == list(range(1, 40, 2))
        assert not any(e.get("conflated") for e in alerts)
        assert [e["seq"] for e in alerts] == list(range(snapshots["alerts"] + 1, last_alert + 1))
        await slow.close()
