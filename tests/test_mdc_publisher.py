"""``mdc.publisher``: a service outside the pipeline publishes on ``signals.NAME`` with the envelope, a
``seq`` that never goes back whoever publishes, a snapshot, validation, bounds and reconnects; and the
Redis user ``mdc.acl`` declares lets it publish under its own name only. Real Redis throughout; a real
WDS gateway and client at the end."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import redis as sync_redis
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from mdc import acl, migrate
from mdc.envelope import Update, decode, encode_raw
from mdc.names import Names, is_known_channel, signal_channel, signal_owner
from mdc.publisher import BlockingPublisher, Pending, Publisher, Signal, prepare
from mdc.reader import Reader
from mdc.subscriber import FEED, Subscriber, conflation
from mdpipe.backoff import Backoff
from wds.protocol import _ENVELOPE

from .conftest import REDIS_URL, eventually
from .mdp_support import mdc_settings
from .proxy_support import Proxy
from .strategies import JSON
from .wds_support import peer, running, token, url


@pytest.fixture
def prefix() -> str:
    return f"t{secrets.token_hex(5)}"


@pytest.fixture(autouse=True)
async def _clean(prefix: str) -> AsyncIterator[None]:
    yield
    client = Redis.from_url(REDIS_URL)
    names = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if names:
        await client.delete(*names)
    await client.aclose()


DB = REDIS_URL.rsplit("/", 1)[1]
ROOT = Path(__file__).resolve().parent.parent


def fast_backoff() -> Backoff:
    return Backoff(0.02, 0.1, 1.0)


@contextlib.asynccontextmanager
async def listening(target: str, prefix: str, redis_url: str = REDIS_URL) -> AsyncIterator[list[Update]]:
    """The updates of ``target`` (a channel or pattern), as an ``mdc.subscriber`` receives them."""
    sub = Subscriber(redis_url, prefix)
    got: list[Update] = []
    sub.on(target, got.append)
    stop = asyncio.Event()
    task = asyncio.create_task(sub.run(stop))
    try:
        await sub.confirmed()
        yield got
    finally:
        stop.set()
        await task


# -- validation, sans I/O ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"name": "Bad"}, "signal name"),
        ({"name": "a" * 41}, "signal name"),
        ({"suffix": "no spaces"}, "suffix"),
        ({"suffix": ""}, "suffix"),
        ({"suffix": "x" * 65}, "suffix"),
        ({"type": "Upper"}, "type"),
        ({"type": 'q"uote'}, "type"),
        ({"ts": -1}, "ts"),
        ({"ts": 1.5}, "ts"),
        ({"ts": True}, "ts"),
        ({"data": {1, 2}}, "not JSON"),
        ({"data": {1: "int key"}}, "not JSON"),
        ({"data": "x" * 70_000}, "bytes of JSON"),
    ],
)
def test_prepare_refuses_what_may_not_go_and_says_why(kwargs, reason):
    args = {"name": "crosses", "data": {"sym": "AAPL"}, **kwargs}
    name, data = args.pop("name"), args.pop("data")
    with pytest.raises(ValueError, match=reason):
        prepare(name, data, **args)


@given(
    data=JSON,
    suffix=st.none() | st.text(max_size=70),
    type_=st.text(max_size=45),
    seq=st.integers(1, 2**62),
)
def test_prepared_updates_make_envelopes_every_reader_accepts(data, suffix, type_, seq):
    try:
        signal = prepare("fuzz", data, suffix=suffix, type=type_ or "signal", ts=1_700_000_000_000)
    except ValueError:
        return  # refused with a reason: nothing queued
    assert is_known_channel(signal.channel) and signal_owner(signal.channel) == "fuzz"
    raw = encode_raw(
        signal.type.encode(), signal.channel.encode(), seq, signal.ts, b"1", b'"src"', signal.data
    )
    update = decode(raw)
    assert (update.channel, update.seq, update.type, update.data) == (signal.channel, seq, signal.type, data)
    assert _ENVELOPE.match(raw)  # WDS splices it without parsing


def test_signal_channels_belong_to_their_name_only():
    assert signal_channel("crosses", "O:SPY251219C00650000") == "signals.crosses.O:SPY251219C00650000"
    assert signal_owner("signals.crosses.AAPL") == "crosses" and signal_owner("signals") is None
    assert signal_owner("trades.AAPL") is None and signal_owner("signals.Bad") is None
    assert conflation("signals.crosses") == FEED  # each signal is an event: none replaces another


def test_pending_is_bounded_and_drops_the_oldest():
    pending = Pending(3)
    made = [Signal("signals.x", "signal", i, b"%d" % i) for i in range(5)]
    for signal in made:
        pending.add(signal)
    assert [s.ts for s in pending.items] == [2, 3, 4] and pending.dropped == 2
    batch = pending.batch(2)
    pending.add(Signal("signals.x", "signal", 5, b"5"))  # full: drops ts 2, which is in the batch
    pending.sent(batch)  # removes only what is still queued of it
    assert [s.ts for s in pending.items] == [4, 5] and pending.dropped == 3
    with pytest.raises(ValueError, match="at least 1"):
        Pending(0)


# -- against Redis ---------------------------------------------------------------------------------------


async def test_published_updates_are_the_envelope_with_seq_and_the_snapshot_keeps_the_newest(redis, prefix):
    names = Names(prefix)
    async with listening("signals.crosses.*", prefix) as got:
        async with Publisher(REDIS_URL, "crosses", prefix=prefix, recent=3, ttl_s=60, instance="w1") as pub:
            for i in range(5):
                pub.publish({"sym": "AAPL", "i": i}, suffix="AAPL", type="cross", ts=1000 + i)
            await pub.flush()
            assert pub.last_seq == {"signals.crosses.AAPL": 5} and pub.figures()["published"] == 5
        await eventually(lambda: len(got) == 5)
    assert [u.seq for u in got] == [1, 2, 3, 4, 5] and [u.data["i"] for u in got] == [0, 1, 2, 3, 4]
    assert {(u.type, u.channel, u.src) for u in got} == {("cross", "signals.crosses.AAPL", "w1")}
    # byte for byte what mdc.envelope writes (Lua and Python: one format)
    newest = (await redis.lrange(names.signal_recent("signals.crosses.AAPL"), 0, 0))[0]
    last = got[-1]
    assert newest == encode_raw(b"cross", last.channel.encode(), 5, 1004, b"%d" % last.sent, b'"w1"',
                                orjson.dumps(last.data))  # fmt: skip
    snap = await Reader(redis, names).snapshot("signals.crosses.AAPL")
    assert snap.seq == 5 and [u["data"]["i"] for u in snap.data["recent"]] == [2, 3, 4]  # oldest first
    assert 0 < await redis.ttl(names.signal_recent("signals.crosses.AAPL")) <= 60
    assert await redis.ttl(names.signal_seq("signals.crosses.AAPL")) == -1  # the seq never expires
    empty = await Reader(redis, names).snapshot("signals.nobody")
    assert (empty.seq, empty.data) == (0, {"recent": []})


async def test_seq_never_goes_back_with_several_publishers_on_one_channel(redis, prefix):
    pubs = [Publisher(REDIS_URL, "shared", prefix=prefix, instance=f"p{i}") for i in range(3)]
    blocking = BlockingPublisher(REDIS_URL, "shared", prefix=prefix, instance="pb")
    n = 300
    async with listening("signals.shared", prefix) as got:
        for pub in pubs:
            await pub.start()
        for i in range(n):
            for j, pub in enumerate(pubs):
                pub.publish({"from": j, "i": i})
            blocking.publish({"from": "b", "i": i})
            if i % 50 == 0:
                await asyncio.sleep(0)  # let the senders interleave their batches
        for pub in pubs:
            await pub.flush()
        await asyncio.to_thread(blocking.flush, 10)
        await eventually(lambda: len(got) == 4 * n, within=10)
    assert [u.seq for u in got] == list(range(1, 4 * n + 1))  # one order, no repeat, no gap
    for source in ("p0", "p1", "p2", "pb"):  # each publisher's own updates keep their order
        mine = [u.data["i"] for u in got if u.src == source]
        assert mine == list(range(n))
    snap = await Reader(redis, Names(prefix)).snapshot("signals.shared")
    assert snap.seq == 4 * n and snap.data["recent"][-1]["seq"] == 4 * n
    for pub in pubs:
        await pub.close()
    blocking.close()


async def test_a_cut_connection_keeps_the_queue_bounded_and_resends_in_order(redis, prefix):
    host, port = "127.0.0.1", 6379
    proxy = await Proxy(host, port).start()
    pub = Publisher(
        f"redis://{host}:{proxy.port}/{DB}", "cuts", prefix=prefix, max_pending=5, backoff=fast_backoff()
    )
    await pub.start()
    try:
        pub.publish({"i": 0})
        await pub.flush()
        assert pub.connected
        proxy.cut()
        for i in range(1, 11):
            pub.publish({"i": i})
        await eventually(lambda: pub.stats["errors"] > 0 and not pub.connected)
        assert len(pub.pending) == 5 and pub.dropped == 5  # the oldest went, counted
        proxy.mend()
        async with asyncio.timeout(10):
            await pub.flush()
        assert pub.connected
    finally:
        await pub.close()
        await proxy.close()
    recent = await Reader(redis, Names(prefix)).snapshot("signals.cuts")
    assert [u["data"]["i"] for u in recent.data["recent"]] == [0, 6, 7, 8, 9, 10]
    assert [u["seq"] for u in recent.data["recent"]] == [1, 2, 3, 4, 5, 6]


async def test_its_heartbeat_says_how_it_is_and_goes_with_it(redis, prefix):
    names = Names(prefix)
    async with Publisher(REDIS_URL, "beats", prefix=prefix, instance="w9") as pub:
        pub.publish({"ok": True})
        await pub.flush()
        await eventually(lambda: redis.exists(names.heartbeat("signals.beats", "w9")))
        (beat,) = await Reader(redis, names).heartbeats()
        assert beat["component"] == "signals.beats" and beat["instance"] == "w9" and "pending" in beat
    assert await Reader(redis, names).heartbeats() == []


def test_blocking_publisher_validates_in_the_callers_thread(prefix):
    with pytest.raises(ValueError, match="signal name"):
        BlockingPublisher(REDIS_URL, "Not-A-Name", prefix=prefix)
    with BlockingPublisher(REDIS_URL, "blocking", prefix=prefix, heartbeat=False) as pub:
        with pytest.raises(ValueError, match="not JSON"):
            pub.publish(object())
        pub.publish({"n": 1}, suffix="MSFT")
        pub.flush(10)
        assert pub.publisher.last_seq == {"signals.blocking.MSFT": 1}
    store = sync_redis.Redis.from_url(REDIS_URL)
    assert store.get(Names(prefix).signal_seq("signals.blocking.MSFT")) == b"1"
    store.close()


async def test_plugins_publish_through_the_same_script_with_a_snapshot(redis):
    """The processors' plug-ins (mdp/lua/plugin.lua) use mdc's publish_signal: same keys, same bytes;
    a channel whose seq an older version kept goes on from it once ``mdc.migrate`` moved it."""
    from mdp.scripts import source
    from mdp.writes import Context

    names = Names(f"t{secrets.token_hex(5)}")
    ctx = Context(names, "mdp-1", ttl_s=60, feed=5, done_ms=1000).script_context(77)
    args = orjson.dumps(
        {"recent": 2, "ttl": 30, "records": [["pub", "signals.momentum", "signal", 5, '{"a":1}']] * 3}
    )
    try:
        await redis.hset(f"{names.prefix}:seq", "signals.momentum", 40)  # where an older version kept it
        assert await migrate.upgrade(redis, names) == {"seq": 1, "keys": 0}
        assert await redis.eval(source("plugin"), 1, names.day(), ctx, args) == 3
        snap = await Reader(redis, names).snapshot("signals.momentum")
        assert snap.seq == 43 and [u["seq"] for u in snap.data["recent"]] == [42, 43]  # on from 40
        assert not await redis.exists(f"{names.prefix}:seq")
        raw = (await redis.lrange(names.signal_recent("signals.momentum"), 0, 0))[0]
        assert raw == encode_raw(b"signal", b"signals.momentum", 43, 5, b"77", b'"mdp-1"', b'{"a":1}')
    finally:
        await redis.delete(*[k async for k in redis.scan_iter(match=f"{names.prefix}:*")])


# -- who may publish what ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def service_user(redis: Redis, name: str, prefix: str) -> AsyncIterator[str]:
    """The Redis user ``mdc.acl`` declares for ``name``; its URL. Deleted at the end."""
    password = secrets.token_urlsafe(18)
    await redis.execute_command("ACL", "SETUSER", *acl.setuser_args(name, password, prefix))
    try:
        yield f"redis://{acl.user(name)}:{password}@127.0.0.1:6379/{DB}"
    finally:
        await redis.execute_command("ACL", "DELUSER", acl.user(name))


async def test_a_service_publishes_only_under_its_own_name(redis, prefix):
    name = f"svc{secrets.token_hex(3)}"
    async with service_user(redis, name, prefix) as service_url:
        async with Publisher(service_url, name, prefix=prefix, instance="own") as pub:
            pub.publish({"mine": True}, suffix="AAPL")
            await pub.flush()
            assert pub.last_seq == {f"signals.{name}.AAPL": 1}
        # the same credential under another service's name: refused, counted, retried, never sent
        other = Publisher(service_url, "momentum", prefix=prefix, backoff=fast_backoff(), heartbeat=False)
        await other.start()
        other.publish({"forged": True})
        await eventually(lambda: other.stats["errors"] >= 2)
        assert other.stats["published"] == 0 and not other.connected
        await other.close(grace_s=0.1)
        assert await redis.get(Names(prefix).signal_seq("signals.momentum")) is None
        service = Redis.from_url(service_url)
        try:
            with pytest.raises(NoPermissionError):
                await service.publish(Names(prefix).redis_channel("trades.AAPL"), b"{}")
            with pytest.raises(NoPermissionError):
                await service.set(Names(prefix).stats("AAPL"), b"{}")
            with pytest.raises(NoPermissionError):
                await service.incr(Names(prefix).seq())
            with pytest.raises(NoPermissionError):
                await service.execute_command("ACL", "LIST")
            # it reads the market like any reader: snapshots in MULTI/EXEC, subscriptions
            await redis.set(Names(prefix).stats("AAPL"), b'{"last":1}')
            assert (await Reader(service, Names(prefix)).snapshot("stats.AAPL")).data == {"last": 1}
        finally:
            await service.aclose()
        async with listening("stats.*", prefix, service_url) as got:  # a pattern, as the example worker
            envelope = encode_raw(b"stats", b"stats.AAPL", 1, 1, b"1", b'"t"', b"{}")
            await redis.publish(Names(prefix).redis_channel("stats.AAPL"), envelope)
            await eventually(lambda: len(got) == 1)


# -- through WDS to a WebSocket client -------------------------------------------------------------------


async def test_a_wds_client_gets_the_snapshot_then_live_signals_and_tokens_scope_them():
    mdc = mdc_settings()
    async with running(mdc=mdc) as gateway, Publisher(REDIS_URL, "crosses", prefix=mdc.mdc_prefix) as pub:
        for i in range(3):
            pub.publish({"sym": "AAPL", "i": i})
        await pub.flush()
        client = await peer(url(gateway, token(gateway, ["signals.crosses"])))
        await client.send(action="subscribe", channels=["signals.crosses", "signals.other"])
        await eventually(lambda: client.of("snapshot", "signals.crosses") and client.of("error"))
        (snap,) = client.of("snapshot", "signals.crosses")
        assert snap["seq"] == 3 and [u["data"]["i"] for u in snap["data"]["recent"]] == [0, 1, 2]
        assert client.of("error")[0]["code"] == "forbidden_channel"
        pub.publish({"sym": "AAPL", "i": 3})
        await eventually(lambda: client.of("update", "signals.crosses"))
        (live,) = client.of("update", "signals.crosses")
        assert live["seq"] == 4 and live["data"] == {"sym": "AAPL", "i": 3}
        await client.close()
    store = Redis.from_url(REDIS_URL)
    await store.delete(*[k async for k in store.scan_iter(match=f"{mdc.mdc_prefix}:*")])
    await store.aclose()


async def test_the_twenty_line_example_of_the_docs_runs_as_its_own_user(redis, prefix):
    """docs/mdc.md's example, as printed (its URL and prefix pointed at this test's), publishes a jump."""
    doc = (ROOT / "docs" / "mdc.md").read_text()
    section = doc[doc.index("## Publishing from outside the pipeline") :]
    code = section[section.index("```python\n") + 10 : section.index("\n```", section.index("```python"))]
    assert len([line for line in code.splitlines() if line.strip()]) <= 20, "the docs promise twenty lines"
    async with service_user(redis, "jumps", prefix) as url:
        code = code.replace('"redis://mdpipe-jumps:PASSWORD@127.0.0.1:6379/0"', repr(url))
        code = code.replace('Subscriber(REDIS, "md")', f"Subscriber(REDIS, {prefix!r})")
        code = code.replace('Publisher(REDIS, "jumps")', f"Publisher(REDIS, 'jumps', prefix={prefix!r})")
        code = code.replace("asyncio.run(main())", "")
        namespace: dict = {}
        exec(compile(code, "docs/mdc.md", "exec"), namespace)  # noqa: S102 - the docs' own example
        async with listening("signals.jumps", prefix) as got:
            task = asyncio.create_task(namespace["main"]())
            await eventually(lambda: redis.execute_command("PUBSUB", "NUMPAT"))  # its bars.* subscription
            for i, close in enumerate((100.0, 100.5, 103.0)):
                bar = orjson.dumps({"t": i * 60_000, "o": close, "h": close, "l": close, "c": close})
                envelope = encode_raw(b"bar.1m", b"bars.AAPL", i + 1, i * 60_000, b"1", b'"mdp"', bar)
                await redis.publish(Names(prefix).redis_channel("bars.AAPL"), envelope)
            await eventually(lambda: got)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    (jump,) = got
    assert jump.type == "jump" and jump.data == {"sym": "AAPL", "from": 100.5, "to": 103.0}
