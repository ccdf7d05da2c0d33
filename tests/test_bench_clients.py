"""The e2e bench's clients (bench/e2e/clients.py) against a scripted WebSocket server: a real client process
(``Clients``) connects, subscribes and counts what the server sends: snapshots, updates of every kind, a
seq gap, a conflated jump, updates out of order and before their snapshot, stamps (in runs, a snapshot's
and a stampless print's left out), a fragmented message, a 64-bit length, a ping it must answer, and a
close with 4008; a message that is not WDS's JSON fails the client."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
from websockets.asyncio.server import ServerConnection, serve

from bench.e2e.clients import Clients

CHANNELS = ["quotes.AAA", "trades.AAA", "stats.AAA", "leaders.gainers"]


def update(channel: str, seq: int, data: object, *, conflated: bool = False) -> dict:
    now_ms = time.time_ns() // 1_000_000
    head = {"event": "update", "conflated": True} if conflated else {"event": "update"}
    kind = channel.split(".")[0]
    return {**head, "type": kind, "channel": channel, "seq": seq, "ts": now_ms, "sent": now_ms, "src": "t",
            "data": data}  # fmt: skip


def script() -> list[list[dict]]:
    """What the server sends after the subscription's reply, message by message."""
    st = time.time_ns() - 1_000_000
    snapshots = [
        {"event": "snapshot", "channel": "quotes.AAA", "seq": 10, "resync": False, "data": {"_st": st}},
        {"event": "snapshot", "channel": "trades.AAA", "seq": 5, "resync": False, "data": None},
        {"event": "snapshot", "channel": "stats.AAA", "seq": 0, "resync": False, "data": None},
        {"event": "snapshot", "channel": "leaders.gainers", "seq": 3, "resync": False, "data": {"rows": []}},
    ]
    return [
        snapshots,
        [update("quotes.AAA", 11, {"bp": 1.5, "_st": st})],
        # sent in fragments; stamps in runs, one print without
        [update("trades.AAA", 6, [{"_st": st}, {"p": 1.1, "_st": st}, {"p": 1.2}, {"_st": st - 1000}])],
        [update("stats.AAA", 1, {"pad": "x" * 70_000})],  # a 64-bit length
        [
            update("quotes.AAA", 13, {"bp": 1.6, "_st": st}),  # 12 missing: a gap
            update("stats.AAA", 3, {"last": 2.0}, conflated=True),
            update("leaders.gainers", 3, {"rows": []}),  # not after the snapshot's 3: out of order
            update("quotes.BBB", 1, {"bp": 9.0}),  # never subscribed: out of order
        ],
    ]


async def session(handler, tmp_path: Path, until: str) -> tuple[dict[str, int], dict[str, list[int]]]:
    """One client process against ``handler`` until its count ``until`` is 1: its counts and histograms."""
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        clients = Clients(f"ws://127.0.0.1:{port}/ws?token=t", [CHANNELS], 1, tmp_path / "plan.json")
        try:
            deadline = time.monotonic() + 60
            while clients.counts()[until] == 0 and time.monotonic() < deadline:
                clients.alive()
                await asyncio.sleep(0.05)
            return clients.counts(), clients.histograms()
        finally:
            clients.close()


async def test_every_count_of_a_scripted_session(tmp_path: Path) -> None:
    messages = script()
    sent: list[bytes] = []
    answered = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        request = orjson.loads(await ws.recv())
        assert request == {"action": "subscribe", "channels": CHANNELS, "id": 1}
        for i, events in enumerate([[{"event": "subscribed", "id": 1, "channels": CHANNELS}], *messages]):
            text = orjson.dumps(events).decode()
            sent.append(text.encode())
            if i == 3:  # the trades update, in three fragments
                await ws.send([text[:40], text[40:90], text[90:]])
            else:
                await ws.send(text)
        await asyncio.wait_for(await ws.ping(b"are you there"), 10)
        answered.set()
        await ws.close(4008, "too slow")

    counts, hists = await session(handler, tmp_path, "closed_slow")
    assert answered.is_set()
    assert counts == {
        "connected": 1, "subscribed": 1, "messages": 6, "bytes": sum(map(len, sent)), "snapshots": 4,
        "quotes": 3, "trades": 1, "stats": 2, "leaders": 1, "other": 0,
        "conflated": 1, "gaps": 1, "out_of_order": 2, "stamps": 5, "closed_slow": 1, "closed": 0, "failed": 0,
    }  # fmt: skip
    assert sum(hists["e2e"]) == 5
    assert sum(hists["published"]) == 7


async def test_an_event_of_another_shape_fails_the_client(tmp_path: Path) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send('[{"event":"update","channel":"quotes.AAA","seq":"eleven"}]')  # a seq of another type
        await ws.wait_closed()

    counts, _ = await session(handler, tmp_path, "failed")
    assert (counts["connected"], counts["failed"], counts["closed"]) == (1, 1, 0)
