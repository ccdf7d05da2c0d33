"""The bots' WDS client against a real gateway and real Redis: snapshot then updates, callbacks, a
gateway restart, a gap repaired by a fresh snapshot, refused channels and tokens."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from mdc.envelope import encode
from mdc.names import Names
from mdpipe.backoff import Backoff
from wds.client import Snapshot, Update, WdsAuthError, WdsClient, WdsError
from wds.server import Gateway

from .conftest import eventually
from .mdp_support import mdc_settings
from .wds_support import Market, running, token, url, wds_settings


def client_for(gw: Gateway, tok: Any = None, **kw: Any) -> WdsClient:
    kw.setdefault("backoff", Backoff(0.05, 0.2, 10.0))  # fast reconnects for the tests
    return WdsClient(url(gw), tok or token(gw), **kw)


async def next_item(client: WdsClient) -> Snapshot | Update:
    return await asyncio.wait_for(anext(client), 5)


async def stored(redis: Redis, gw: Gateway, sym: str) -> Any:
    return orjson.loads(await redis.get(Names(gw.mdc.mdc_prefix).stats(sym)))


async def test_snapshot_then_updates_in_order(redis):
    async with running() as gw:
        market = Market(redis, Names(gw.mdc.mdc_prefix))
        await market.stats("AAPL", 1)
        async with client_for(gw, channels=["stats.AAPL"]) as client:
            assert await next_item(client) == Snapshot("stats.AAPL", 1, {"sym": "AAPL", "n": 1}, False)
            assert client.connected
            for n in range(2, 7):  # one at a time: the server would conflate a burst
                seq = await market.stats("AAPL", n)
                item = await next_item(client)
                assert isinstance(item, Update)
                assert (item.channel, item.seq, item.data, item.type, item.conflated) == (
                    "stats.AAPL", seq, {"sym": "AAPL", "n": n}, "stats", False,
                )  # fmt: skip
            assert client.state["stats.AAPL"] == (6, await stored(redis, gw, "AAPL"))
            assert client.stats["gaps"] == client.stats["stale"] == client.stats["dropped"] == 0
        assert not client.connected
        assert [i async for i in client] == []  # iteration ends with the client


async def test_callbacks_and_run_with_a_stop_event(redis):
    async with running() as gw:
        market = Market(redis, Names(gw.mdc.mdc_prefix))
        await market.stats("A", 1)
        client = client_for(gw, channels=["stats.A", "stats.B"], max_pending=1)
        of_a: list[Any] = []
        every: list[Any] = []

        async def later(item: Any) -> None:
            every.append(item)

        client.on("stats.A", of_a.append)
        client.on(None, later)
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        try:
            await eventually(lambda: len(every) == 2)
            assert of_a == [Snapshot("stats.A", 1, {"sym": "A", "n": 1})]
            assert {i.channel: (i.seq, i.data) for i in every} == {
                "stats.A": (1, {"sym": "A", "n": 1}),
                "stats.B": (0, None),  # nothing published yet
            }
            await market.stats("B", 1)
            await market.stats("A", 2)
            await eventually(lambda: len(every) == 4)
            assert [(i.channel, i.seq) for i in of_a] == [("stats.A", 1), ("stats.A", 2)]
            assert client.state == {
                "stats.A": (2, {"sym": "A", "n": 2}),
                "stats.B": (1, {"sym": "B", "n": 1}),
            }
            assert client.stats["dropped"] == 3  # nobody iterated: the queue kept the newest only

            client.unsubscribe(["stats.A"])  # while connected
            client.subscribe(["stats.C"])
            await eventually(lambda: "stats.C" in client.state)
            assert set(client.state) == {"stats.B", "stats.C"}
            await market.stats("A", 3)
            await market.stats("B", 2)
            await eventually(lambda: client.state["stats.B"][0] == 2)
            assert len(of_a) == 2
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)


async def test_reconnects_after_a_gateway_restart(redis):
    mdc = mdc_settings()
    market = Market(redis, Names(mdc.mdc_prefix))
    await market.stats("R", 1)
    tokens: list[str] = []
    got: list[Any] = []
    async with contextlib.AsyncExitStack() as stack:
        gw = await stack.enter_async_context(running(mdc=mdc))
        port = gw.port

        def fresh() -> str:  # a bot fetching a fresh token at each (re)connect
            tokens.append(token(gw))
            return tokens[-1]

        client = client_for(gw, fresh, channels=["stats.R"])
        client.on(None, got.append)
        async with client:
            await eventually(lambda: client.state.get("stats.R") == (1, {"sym": "R", "n": 1}))
            await stack.aclose()  # the gateway stops: its clients are told 1001
            await eventually(lambda: not client.connected)
            await market.stats("R", 2)  # missed while away: the fresh snapshot brings it
            async with running(wds_settings(wds_port=port), mdc=mdc):
                await eventually(lambda: client.connected and client.state["stats.R"][0] == 2)
                assert client.reconnects >= 1
                assert len(tokens) >= 2  # one per connection attempt
                assert got[-1] == Snapshot("stats.R", 2, {"sym": "R", "n": 2})
                await market.stats("R", 3)
                await eventually(lambda: client.state["stats.R"] == (3, {"sym": "R", "n": 3}))
                assert isinstance(got[-1], Update) and got[-1].seq == 3
                assert client.stats["gaps"] == 0


async def test_a_gap_is_counted_and_repaired_by_a_fresh_snapshot(redis):
    async with running() as gw:
        names = Names(gw.mdc.mdc_prefix)
        market = Market(redis, names)
        await market.stats("G", 1)
        client = client_for(gw, channels=["stats.G"])
        snapshots: list[Snapshot] = []
        client.on("stats.G", lambda i: snapshots.append(i) if isinstance(i, Snapshot) else None)
        async with client:
            await eventually(lambda: snapshots)
            now = int(time.time() * 1000)
            lost = encode("stats", "stats.G", 5, now, now, "test", {"sym": "G", "n": 5})  # 2 to 4 lost
            await redis.publish(names.redis_channel("stats.G"), lost)
            await eventually(lambda: len(snapshots) == 2)
            assert client.stats["gaps"] == 1
            assert snapshots[1] == Snapshot("stats.G", 1, {"sym": "G", "n": 1})  # Redis's truth wins
            assert client.state["stats.G"] == (1, {"sym": "G", "n": 1})
            await market.stats("G", 2)
            await eventually(lambda: client.state["stats.G"] == (2, {"sym": "G", "n": 2}))
            assert client.stats["gaps"] == 1


async def test_refused_channels_are_dropped_and_a_bad_static_token_raises(redis):
    async with running() as gw:
        errors: list[WdsError] = []
        limited = token(gw, ["stats.*"])
        client = client_for(
            gw, limited, channels=["stats.OK", "trades.NO", "nonsense"], on_error=errors.append
        )
        async with client:
            await eventually(lambda: "stats.OK" in client.state and len(errors) == 2)
            assert {(e.code, e.channels) for e in errors} == {
                ("forbidden_channel", ("trades.NO",)),
                ("unknown_channel", ("nonsense",)),
            }
            assert client.channels == ["stats.OK"]
            assert client.errors == errors

        bad = client_for(gw, "not-a-token", channels=["stats.OK"])
        with pytest.raises(WdsAuthError) as raised:
            await asyncio.wait_for(bad.run(asyncio.Event()), 5)
        assert raised.value.code == "auth_failed"
        assert bad.reconnects == 0 and not bad.connected

        with pytest.raises(WdsAuthError):  # iteration raises it too
            async with client_for(gw, "not-a-token") as bad:
                await asyncio.wait_for(anext(bad), 5)


async def test_many_channels_go_in_frames_under_the_limit_and_under_the_action_rate():
    settings = wds_settings(wds_max_frame_bytes=512, wds_actions_per_s=5)  # ~30 channels per frame
    async with running(settings) as gw:
        channels = [f"stats.S{i}" for i in range(300)]
        async with client_for(gw, channels=channels) as client:
            await eventually(lambda: len(client.state) == 300)
            assert client.errors == []  # no frame_too_large, no rate_limited
