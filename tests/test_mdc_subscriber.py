"""The MDC subscriber against a real Redis: delivery, filters, unsubscribing, bad input, reconnects,
streams, the thread mode and gap counting. Each test has a prefix and a client name of its own."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from mdc import envelope
from mdc.envelope import Update
from mdc.names import Names
from mdc.subscriber import (
    CONFLATED_PRINTS,
    FEED,
    FEED_WAITING,
    LATEST,
    PRINTS,
    Subscriber,
    conflation,
    merge_prints,
)
from mdpipe.backoff import Backoff
from tests.conftest import REDIS_URL, eventually


@pytest.fixture
async def r() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make(prefix) -> Callable[..., Subscriber]:
    """A subscriber under the test's prefix, named after it, with a fast backoff."""

    def make_(**kw: Any) -> Subscriber:
        kw.setdefault("backoff", Backoff(0.05, 0.2, 60.0))
        kw.setdefault("client_name", f"mdc-test-{prefix}")
        return Subscriber(REDIS_URL, prefix, **kw)

    return make_


@pytest.fixture
async def start() -> AsyncIterator[Callable[[Subscriber], Awaitable[Subscriber]]]:
    """``await start(sub)``: ``sub.run`` in a task, connected; at the end, stopped, which must be prompt."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start_(sub: Subscriber) -> Subscriber:
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(sub.run(stop))))
        await eventually(lambda: sub.connected, within=3)
        return sub

    yield start_
    for stop, task in running:
        stop.set()
        await asyncio.wait_for(task, 1.5)


async def publish(
    r: aioredis.Redis, prefix: str, channel: str, seq: int, type_: str = "trades", data: Any = None
) -> int:
    """Publish an envelope on ``channel``; returns how many subscriptions received it."""
    body = envelope.encode(
        type_, channel, seq, 1763649000000 + seq, 1763649000001 + seq, "test:1", data or {"n": seq}
    )
    return await r.publish(Names(prefix).redis_channel(channel), body)


def subscribed(r: aioredis.Redis, name: str, channels: int, patterns: int) -> Callable[[], Awaitable[bool]]:
    """For ``eventually``: the connection named ``name`` has that many subscriptions on the server."""

    async def check() -> bool:
        # every type: a connection without subscriptions is no longer listed as "pubsub"
        clients = [c for c in await r.client_list() if c["name"] == name]
        return len(clients) == 1 and (int(clients[0]["sub"]), int(clients[0]["psub"])) == (channels, patterns)

    return check


def gone(r: aioredis.Redis, name: str) -> Callable[[], Awaitable[bool]]:
    """For ``eventually``: no pub/sub connection named ``name`` is left on the server."""

    async def check() -> bool:
        return all(c["name"] != name for c in await r.client_list())

    return check


async def numsub(r: aioredis.Redis, redis_channel: str) -> int:
    [(_, count)] = await r.pubsub_numsub(redis_channel)
    return count


async def test_channel_pattern_and_type_filter_with_sync_and_async_callbacks(r, prefix, make, start):
    sub = make()
    exact: list[Update] = []
    pattern: list[Update] = []
    minute_bars: list[Update] = []

    async def on_exact(update: Update) -> None:
        await asyncio.sleep(0)
        exact.append(update)

    sub.on("trades.AAPL", on_exact)
    sub.on("trades.*", pattern.append)
    sub.on("bars.*", minute_bars.append, types=["bar.1m"])
    await start(sub)
    await eventually(subscribed(r, sub.client_name, 1, 2))

    assert await publish(r, prefix, "quotes.AAPL", 1, "quote") == 0  # no pattern matches it
    assert await publish(r, prefix, "trades.AAPL", 7) == 2  # the channel and the pattern
    assert await publish(r, prefix, "trades.MSFT", 3) == 1
    await publish(r, prefix, "bars.AAPL", 1, "bar.1s")
    await publish(r, prefix, "bars.AAPL", 2, "bar.1m")
    await eventually(lambda: len(exact) == 1 and len(pattern) == 2 and len(minute_bars) == 1)

    assert exact == [
        Update("trades", "trades.AAPL", 7, 1763649000007, 1763649000008, "test:1", {"n": 7}),
    ]
    assert [(u.channel, u.seq) for u in pattern] == [("trades.AAPL", 7), ("trades.MSFT", 3)]
    # the bar.1s went first on the same channel, so it was filtered out, not late
    assert [(u.type, u.seq) for u in minute_bars] == [("bar.1m", 2)]
    assert sub.stats["delivered"] == 4
    assert sub.stats["received"] == 5  # bars.AAPL twice, trades.AAPL twice (channel and pattern), MSFT


async def test_off_stops_delivery_and_unsubscribes(r, prefix, make, start):
    sub = await start(make())  # nothing registered yet: it subscribes as callbacks come
    first: list[Update] = []
    second: list[Update] = []
    h1 = sub.on("trades.AAPL", first.append)
    h2 = sub.on("trades.AAPL", second.append)
    hp = sub.on("stats.*", lambda u: None)
    await eventually(subscribed(r, sub.client_name, 1, 1))

    await publish(r, prefix, "trades.AAPL", 1)
    await eventually(lambda: len(first) == 1 and len(second) == 1)

    assert sub.off(h1)
    assert not sub.off(h1)  # once only
    await publish(r, prefix, "trades.AAPL", 2)
    await eventually(lambda: len(second) == 2)
    assert len(first) == 1
    assert await numsub(r, f"{prefix}:trades.{{AAPL}}") == 1  # the other callback still needs it

    assert sub.off(h2)
    assert sub.off(hp)
    await eventually(subscribed(r, sub.client_name, 0, 0))
    assert await numsub(r, f"{prefix}:trades.{{AAPL}}") == 0
    assert await publish(r, prefix, "trades.AAPL", 3) == 0
    assert await publish(r, prefix, "stats.AAPL", 1, "stats") == 0
    assert sub.connected


async def test_malformed_messages_are_counted_and_logged_once(r, prefix, make, start, caplog):
    caplog.set_level(logging.WARNING, logger="mdc.subscriber")
    sub = make()
    got: list[Update] = []
    sub.on("trades.AAPL", got.append)
    await start(sub)
    await eventually(subscribed(r, sub.client_name, 1, 0))

    channel = f"{prefix}:trades.{{AAPL}}"
    await r.publish(channel, b"not json")
    await r.publish(channel, b'{"type": "trades"}')  # fields missing
    await r.publish(channel, b"[1, 2]")
    await r.publish(channel, b'{"type":"t","channel":"c","seq":"1","ts":1,"sent":1,"src":"s","data":null}')
    await publish(r, prefix, "trades.AAPL", 1)
    await eventually(lambda: len(got) == 1)

    assert got[0].seq == 1
    assert sub.stats["malformed"] == 4
    assert sub.stats["delivered"] == 1
    logged = [rec for rec in caplog.records if "not an MDC update" in rec.getMessage()]
    assert len(logged) == 1  # at most once a minute


async def test_a_failing_callback_is_counted_and_delivery_goes_on(r, prefix, make, start, caplog):
    caplog.set_level(logging.ERROR, logger="mdc.subscriber")
    sub = make()
    after: list[int] = []
    other: list[int] = []

    def fails_first(update: Update) -> None:
        if update.seq == 1:
            raise RuntimeError("boom")
        after.append(update.seq)

    sub.on("trades.AAPL", fails_first)
    sub.on("trades.AAPL", lambda u: other.append(u.seq))
    await start(sub)
    await eventually(subscribed(r, sub.client_name, 1, 0))

    for seq in (1, 2, 3):
        await publish(r, prefix, "trades.AAPL", seq)
    await eventually(lambda: after == [2, 3] and other == [1, 2, 3])

    assert sub.stats["callback_errors"] == 1
    [record] = [rec for rec in caplog.records if "callback failed" in rec.getMessage()]
    assert record.exc_info is not None
    assert "boom" in str(record.exc_info[1])


async def test_reconnects_and_resubscribes_after_the_server_kills_the_connection(r, prefix, make, start):
    resubscribed: list[int] = []
    sub = make(on_resubscribed=lambda: resubscribed.append(sub.reconnects))
    exact: list[int] = []
    pattern: list[int] = []
    sub.on("trades.AAPL", lambda u: exact.append(u.seq))
    sub.on("trades.*", lambda u: pattern.append(u.seq))
    await start(sub)
    await eventually(subscribed(r, sub.client_name, 1, 1))
    await publish(r, prefix, "trades.AAPL", 1)
    await eventually(lambda: exact == [1] and pattern == [1])
    assert sub.reconnects == 0
    assert resubscribed == []

    [killed] = [c["id"] for c in await r.client_list(_type="pubsub") if c["name"] == sub.client_name]
    assert await r.client_kill_filter(_id=killed) == 1
    await eventually(lambda: sub.reconnects >= 1 and len(resubscribed) >= 1, within=5)
    assert sub.connected
    ids = [c["id"] for c in await r.client_list(_type="pubsub") if c["name"] == sub.client_name]
    assert killed not in ids

    # seq 2..4 were "missed" while away: that is what on_resubscribed is for, not a gap
    await publish(r, prefix, "trades.AAPL", 5)
    await eventually(lambda: exact == [1, 5] and pattern == [1, 5])
    assert sub.stats["gaps"] == 0


async def test_stream_in_order_and_dropping_the_oldest_when_full(r, prefix, make):
    async with make() as sub:
        updates = sub.stream("stats.*")
        await eventually(subscribed(r, sub.client_name, 0, 1))
        for seq in range(1, 11):
            await publish(r, prefix, "stats.AAPL", seq, "stats")
        got = [await asyncio.wait_for(anext(updates), 2) for _ in range(10)]
        assert [u.seq for u in got] == list(range(1, 11))

        slow = sub.stream("stats.MSFT", maxsize=5)
        await eventually(subscribed(r, sub.client_name, 1, 1))
        for seq in range(1, 51):
            await publish(r, prefix, "stats.MSFT", seq, "stats")
        await eventually(lambda: sub.stats["delivered"] >= 10 + 50 + 50)  # both streams got all 50
        latest = [await asyncio.wait_for(anext(slow), 2) for _ in range(5)]
        assert [u.seq for u in latest] == [46, 47, 48, 49, 50]  # the newest survive
        assert slow.dropped == 45
        assert sub.stats["dropped"] == 45
        assert len(slow) == 0

        await slow.aclose()
        with pytest.raises(StopAsyncIteration):
            await anext(slow)
        await eventually(subscribed(r, sub.client_name, 0, 1))
        await updates.aclose()
        await eventually(subscribed(r, sub.client_name, 0, 0))


async def test_a_stream_left_by_return_unsubscribes(r, prefix, make):
    async with make() as sub:

        async def first_halt() -> Update:
            async for update in sub.stream("halts", types=["halt"]):
                return update
            raise AssertionError("the stream ended")

        task = asyncio.create_task(first_halt())
        await eventually(subscribed(r, sub.client_name, 1, 0))
        await publish(r, prefix, "halts", 1, "resume")  # filtered out
        await publish(r, prefix, "halts", 2, "halt")
        update = await asyncio.wait_for(task, 2)
        assert (update.type, update.seq) == ("halt", 2)
        await eventually(subscribed(r, sub.client_name, 0, 0))  # the stream was garbage: unsubscribed


async def test_a_slow_callback_never_blocks_the_reader(r, prefix, make, start):
    sub = make(max_pending=5)
    gate = asyncio.Event()
    seen: list[int] = []

    async def slow(update: Update) -> None:
        await gate.wait()
        seen.append(update.seq)

    sub.on("trades.AAPL", slow)
    await start(sub)
    await eventually(subscribed(r, sub.client_name, 1, 0))
    for seq in range(1, 51):
        await publish(r, prefix, "trades.AAPL", seq)
    await eventually(lambda: sub.stats["received"] == 50)  # read while the callback is stuck on seq 1
    gate.set()
    await eventually(lambda: bool(seen) and seen[-1] == 50)
    assert seen == [1, 46, 47, 48, 49, 50]
    assert sub.stats["dropped"] == 44


async def test_conflating_keeps_the_newest_update_per_channel_while_the_dispatcher_is_behind(
    r, prefix, make, start
):
    sub = make(conflate=True)
    gate = asyncio.Event()
    raw: list[tuple[str, int, int]] = []
    decoded: list[int] = []

    async def slow(update: Update) -> None:
        await gate.wait()
        decoded.append(update.seq)

    sub.on("trades.AAPL", slow)
    sub.on(
        "trades.*", lambda ch, data, skipped: raw.append((ch, envelope.decode(data).seq, skipped)), raw=True
    )
    await start(sub)
    await eventually(subscribed(r, sub.client_name, 1, 1))
    for seq in range(1, 51):
        await publish(r, prefix, "trades.AAPL", seq)
        await publish(r, prefix, "trades.MSFT", seq)
    await eventually(lambda: sub.stats["received"] == 150)  # AAPL twice (channel and pattern), MSFT once
    gate.set()
    await eventually(lambda: bool(decoded) and decoded[-1] == 50)
    # while the callback waited on AAPL's seq 1, each channel and pattern kept one waiting update: the
    # newest, counting the ones it replaced; nothing was lost to the queue's bound, no skip is a gap
    assert decoded == [1, 50]
    assert raw == [("trades.AAPL", 50, 49), ("trades.MSFT", 50, 49)]
    assert sub.stats["dropped"] == 0 and sub.stats["gaps"] == 0
    assert sub.stats["conflated"] == 48 + 49 + 49


async def test_conflating_trades_keeps_their_prints_and_feeds_keep_their_updates(r, prefix, make, start):
    """Behind on its input, the subscriber gives a trades update the prints of those it replaces (oldest
    first, the newest CONFLATED_PRINTS), and keeps a feed's updates in order up to FEED_WAITING."""
    sub = make(conflate=True)
    gate = asyncio.Event()
    got: dict[str, list[tuple[Any, int, int]]] = {}

    async def stuck(update: Update) -> None:
        await gate.wait()

    def raw(channel: str, data: bytes, skipped: int) -> None:
        update = envelope.decode(data)
        got.setdefault(channel, []).append((update.data, update.seq, skipped))

    sub.on("stats.GATE", stuck)
    for channel in ("trades.AAPL", "trades.MSFT", "alerts"):
        sub.on(channel, raw, raw=True)
    await start(sub)
    await eventually(subscribed(r, sub.client_name, 4, 0))
    await publish(r, prefix, "stats.GATE", 1, "stats")
    await eventually(lambda: sub.stats["received"] == 1)  # the dispatcher waits on it from now on
    for seq in range(1, 151):
        await publish(r, prefix, "trades.AAPL", seq, data=[{"s": seq}])
    for seq in range(1, 4):
        await publish(r, prefix, "trades.MSFT", seq, data=[{"s": 2 * seq}, {"s": 2 * seq + 1}])
    over = FEED_WAITING + 20
    for seq in range(1, over + 1):
        await publish(r, prefix, "alerts", seq, "alert")
    await eventually(lambda: sub.stats["received"] == 1 + 150 + 3 + over)
    gate.set()
    await eventually(lambda: len(got.get("alerts", ())) == FEED_WAITING)
    [(aapl, seq, skipped)] = got["trades.AAPL"]
    assert [p["s"] for p in aapl] == list(range(151 - CONFLATED_PRINTS, 151)) and (seq, skipped) == (150, 149)
    [(msft, seq, skipped)] = got["trades.MSFT"]
    assert [p["s"] for p in msft] == [2, 3, 4, 5, 6, 7] and (seq, skipped) == (3, 2)
    alerts = got["alerts"]
    assert [seq for _, seq, _ in alerts] == list(range(21, over + 1))  # the oldest 20 went
    assert [skipped for _, _, skipped in alerts] == [20] + [0] * (FEED_WAITING - 1)
    assert sub.stats["conflated"] == 149 + 2 + 20 and sub.stats["gaps"] == 0


def test_merge_prints_keeps_the_newer_envelope_and_refuses_what_is_not_prints():
    older = envelope.encode("trades", "trades.A", 1, 10, 11, "a", [{"s": 1}])
    newer = envelope.encode("trades", "trades.A", 2, 20, 21, "b", [{"s": 2}, {"s": 3}])
    merged = envelope.decode(merge_prints(older, newer))
    assert (merged.seq, merged.ts, merged.sent, merged.src) == (2, 20, 21, "b")
    assert merged.data == [{"s": 1}, {"s": 2}, {"s": 3}]
    odd = envelope.encode("trades", "trades.A", 1, 10, 11, "a", {"s": 1})
    assert merge_prints(odd, newer) == newer and merge_prints(b"not json", newer) == newer
    assert conflation("trades.A") == PRINTS and conflation("alerts") == conflation("halts") == FEED
    assert conflation("quotes.A") == conflation("stats.A") == conflation("leaders.volume") == LATEST


async def test_thread_mode(r, prefix, make):
    sub = make()
    arrived = threading.Event()
    threads: list[str] = []

    def on_trade(update: Update) -> None:
        threads.append(threading.current_thread().name)
        arrived.set()

    sub.on("trades.AAPL", on_trade)
    sub.start_thread()
    try:
        await eventually(lambda: sub.connected, within=3)
        await eventually(subscribed(r, sub.client_name, 1, 0))
        await publish(r, prefix, "trades.AAPL", 1)
        assert await asyncio.to_thread(arrived.wait, 3)
        assert threads == ["mdc-subscriber"]

        # a stream read in this loop, fed from the subscriber's thread
        quotes = sub.stream("quotes.AAPL")
        await eventually(subscribed(r, sub.client_name, 2, 0))
        await publish(r, prefix, "quotes.AAPL", 1, "quote")
        assert (await asyncio.wait_for(anext(quotes), 2)).type == "quote"
    finally:
        assert await asyncio.to_thread(sub.stop_thread, 2)
    assert not sub.connected
    await eventually(gone(r, sub.client_name))  # the connection was closed


async def test_gaps_in_seq_are_counted_per_channel(r, prefix, make, start):
    sub = make()
    got: list[int] = []
    exact = sub.on("trades.AAPL", lambda u: got.append(u.seq))
    pattern = sub.on("trades.*", lambda u: None)  # every update arrives twice: a repeat is no gap
    await start(sub)
    await eventually(subscribed(r, sub.client_name, 1, 1))

    for seq in (1, 2, 3, 5, 6, 9):
        await publish(r, prefix, "trades.AAPL", seq)
    for seq in (40, 41):  # another channel's first seq is no gap
        await publish(r, prefix, "trades.MSFT", seq)
    await eventually(lambda: len(got) == 6 and sub.stats["delivered"] == 6 + 8)
    assert sub.stats["gaps"] == 2

    # not subscribed for a while: what was published meanwhile is no gap
    sub.off(exact)
    sub.off(pattern)
    await eventually(subscribed(r, sub.client_name, 0, 0))
    sub.on("trades.AAPL", lambda u: got.append(u.seq))
    await eventually(subscribed(r, sub.client_name, 1, 0))
    await publish(r, prefix, "trades.AAPL", 20)
    await publish(r, prefix, "trades.AAPL", 22)
    await eventually(lambda: got[-2:] == [20, 22])
    assert sub.stats["gaps"] == 3


async def test_unreachable_redis_is_retried_the_password_never_logged_and_stop_is_prompt(prefix, caplog):
    caplog.set_level(logging.INFO, logger="mdc.subscriber")
    sub = Subscriber("redis://bot:s3cr3t-pw@127.0.0.1:1/15", prefix, backoff=Backoff(0.02, 0.05, 60.0))
    sub.on("trades.AAPL", lambda u: None)
    stop = asyncio.Event()
    task = asyncio.create_task(sub.run(stop))

    def warnings() -> list[logging.LogRecord]:
        return [rec for rec in caplog.records if rec.levelno == logging.WARNING]

    await eventually(lambda: len(warnings()) >= 3)
    assert not sub.connected

    stop.set()
    await asyncio.wait_for(task, 1.0)
    for record in caplog.records:
        assert "s3cr3t-pw" not in record.getMessage()
        assert all("s3cr3t-pw" not in str(value) for value in record.__dict__.values())
    assert warnings()[0].redis == "redis://bot:***@127.0.0.1:1/15"


def test_invalid_registrations_are_refused(make):
    sub = make()
    with pytest.raises(ValueError, match="invalid channel"):
        sub.on("trades AAPL", print)
    with pytest.raises(ValueError, match="invalid channel"):
        sub.on("", print)
    with pytest.raises(TypeError):
        sub.on("trades.AAPL", "not callable")  # type: ignore[arg-type]
    assert sub.on("trades.[AM]*", print).pattern
    assert not sub.on("trades.AAPL", print).pattern


async def test_confirmed_means_subscribed_and_raw_callbacks_get_the_bytes(r, prefix, make, start):
    sub = await start(make())
    raw: list[tuple[str, bytes]] = []
    decoded: list[Update] = []
    sub.on("stats.A", lambda channel, data: raw.append((channel, data)), raw=True)
    sub.on("stats.A", decoded.append)
    await sub.confirmed()
    # confirmed: the very next publish is received, without waiting for the reader's poll
    assert await publish(r, prefix, "stats.A", 1, "stats") == 1
    await eventually(lambda: raw and decoded)
    assert raw[0][0] == "stats.A" and raw[0][1].startswith(b'{"type":"stats","channel":"stats.A","seq":1,')
    assert decoded[0].seq == 1
    await sub.confirmed()  # nothing new registered: returns at once
    await r.publish(f"{prefix}:stats.{{A}}", b"not an envelope")
    await publish(r, prefix, "stats.A", 2, "stats")
    await eventually(lambda: len(decoded) == 2)
    assert [d for _, d in raw][1] == b"not an envelope"  # raw means unchecked: the gateway checks
    assert sub.stats["malformed"] == 1


async def test_a_quiet_connection_stays_up_on_its_keepalive(prefix, make, start, monkeypatch):
    """Regression: the reply to the subscribe-confirming PING once left the keepalive waiting for
    another reply, so a subscriber without traffic reconnected every PING_EVERY_S + PING_TIMEOUT_S."""
    import mdc.subscriber as module

    monkeypatch.setattr(module, "PING_EVERY_S", 0.2)
    monkeypatch.setattr(module, "PING_TIMEOUT_S", 0.3)
    sub = await start(make())
    sub.on("stats.QUIET", lambda update: None)
    await sub.confirmed()
    await asyncio.sleep(1.5)  # several keepalive rounds without a message
    assert sub.connected and sub.reconnects == 0
