"""The gateway against real Redis and real WebSocket clients: auth, snapshot stitching under a publish
storm, slow clients, Redis restarts, many clients."""

from __future__ import annotations

import asyncio
import base64
import itertools
import random
import resource
import signal
import time

import orjson
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from mdc.names import Names
from mdpipe.private_services import free_port

from .conftest import eventually, http
from .mdp_support import mdc_settings
from .test_mdp_service import private_redis
from .wds_support import Market, Peer, peer, running, token, url, wds_settings


async def market_for(gateway, redis: Redis) -> Market:
    return Market(redis, Names(gateway.mdc.mdc_prefix))


# -- auth ------------------------------------------------------------------------------------------------


async def test_auth_by_url_or_first_frame_and_refusals(redis):
    async with running() as gw:
        a = await peer(url(gw, token(gw)))
        await eventually(lambda: a.of("authenticated"))
        assert a.of("authenticated")[0]["sub"] == "alice"

        b = await peer(url(gw))
        await b.send(action="auth", token=token(gw, subject="bob"), id="hello")
        await eventually(lambda: b.of("authenticated"))
        assert b.of("authenticated")[0]["id"] == "hello"

        expired = token(gw, ttl_s=60, now=time.time() - 120)
        other = wds_settings(wds_token_secret="another-secret-of-at-least-32-characters!")
        from wds.tokens import mint

        forged = mint(other, "mallory", ["*"])
        head, _, sig = token(gw).split(".")
        tampered = ".".join([head, base64.urlsafe_b64encode(b'{"sub":"root"}').decode().rstrip("="), sig])
        none = (
            ".".join(
                base64.urlsafe_b64encode(orjson.dumps(x)).decode().rstrip("=")
                for x in ({"alg": "none", "typ": "JWT"}, {"sub": "root", "exp": int(time.time()) + 60})
            )
            + "."
        )
        for bad, code, close in (
            (expired, "token_expired", 4002),
            (forged, "auth_failed", 4001),
            (tampered, "auth_failed", 4001),
            (none, "auth_failed", 4001),
        ):
            c = await peer(url(gw, bad))
            await eventually(lambda c=c: c.close_code is not None)
            assert (c.of("error")[0]["code"], c.close_code) == (code, close), code

        silent = await peer(url(gw))  # no token, no auth frame: closed after WDS_AUTH_TIMEOUT_S
        await eventually(lambda: silent.close_code == 4001, within=3)
        assert silent.of("error")[0]["code"] == "auth_required"
        assert len(gw.clients) == 2
        for p in (a, b):
            await p.close()


async def test_an_authenticated_connection_keeps_neither_its_token_nor_its_headers(redis):
    """The handshake request (its URL carries the token) is dropped once the client is authenticated:
    no secret lingers in memory, and an idle connection is some 4 KB lighter."""
    async with running() as gw:
        tok = token(gw)
        a = await peer(url(gw, tok), additional_headers={"X-Padding": "p" * 2000})
        await eventually(lambda: a.of("authenticated"))
        [client] = gw.clients
        assert tok not in client.ws.request.path and not client.ws.request.headers
        assert client.ws.response is None
        await a.send(action="ping", id=1)  # the connection still works
        await eventually(lambda: a.of("pong"))
        await a.close()


async def test_handshake_refuses_other_paths_and_origins():
    async with running(wds_settings(wds_allowed_origins="https://app.example")) as gw:
        for address, headers, status in (
            (f"ws://127.0.0.1:{gw.port}/other", None, 404),
            (url(gw), {"Origin": "https://evil.example"}, 403),
        ):
            with pytest.raises(InvalidStatus) as info:
                await connect(address, additional_headers=headers, open_timeout=5)
            assert info.value.response.status_code == status
        ok = await peer(url(gw, token(gw)), additional_headers={"Origin": "https://app.example"})
        await eventually(lambda: ok.of("authenticated"))
        await ok.close()


async def test_forbidden_unknown_and_too_many_channels(redis):
    async with running(wds_settings(wds_max_subscriptions=2)) as gw:
        p = await peer(url(gw, token(gw, ["stats.*"])))
        await p.send(
            action="subscribe", channels=["stats.A", "quotes.A", "bogus", "stats.B", "stats.C"], id=1
        )
        await eventually(lambda: len(p.of("error")) == 3 and p.of("subscribed"))
        assert {e["code"]: e["channels"] for e in p.of("error")} == {
            "unknown_channel": ["bogus"],
            "forbidden_channel": ["quotes.A"],
            "too_many_subscriptions": ["stats.C"],
        }
        assert p.of("subscribed")[0]["channels"] == ["stats.A", "stats.B"]
        await eventually(lambda: len(p.of("snapshot")) == 2)
        assert p.of("snapshot")[0]["data"] is None and p.of("snapshot")[0]["seq"] == 0
        await p.close()


async def test_a_token_expiring_on_a_live_connection_closes_it_unless_renewed(redis):
    async with running() as gw:
        short = token(gw, ttl_s=60, now=time.time() - 58.5)  # 1.5 s left
        p = await peer(url(gw, short))
        renewed = await peer(url(gw, short))
        await renewed.send(action="auth", token=token(gw))
        await eventually(lambda: p.close_code == 4002, within=5)
        assert p.of("error")[-1]["code"] == "token_expired"
        await renewed.send(action="ping", id=9)
        await eventually(lambda: renewed.of("pong"))
        assert renewed.close_code is None
        await renewed.close()


async def test_a_client_that_does_not_answer_pings_is_closed_with_the_documented_code(redis):
    """docs/wds-protocol.md: 1011 ``keepalive ping timeout`` after WDS_PING_INTERVAL_S +
    WDS_PING_TIMEOUT_S; a client that reads (and so answers pings) stays."""
    async with running(wds_settings(wds_ping_interval_s=1, wds_ping_timeout_s=1)) as gw:
        deaf, alive = await peer(url(gw, token(gw))), await peer(url(gw, token(gw)))
        deaf.ws.transport.pause_reading()  # pings unread, so unanswered
        await asyncio.sleep(3.5)
        deaf.ws.transport.resume_reading()
        await eventually(lambda: deaf.ws.close_code is not None, within=5)
        assert (deaf.ws.close_code, deaf.ws.close_reason) == (1011, "keepalive ping timeout")
        assert alive.close_code is None
        await alive.close()


async def test_connections_per_token_are_limited(redis):
    async with running(wds_settings(wds_connections_per_token=2)) as gw:
        tok = token(gw)
        peers = [await peer(url(gw, tok)) for _ in range(3)]
        await eventually(lambda: peers[2].close_code == 4009)
        assert peers[0].close_code is None and peers[1].close_code is None
        for p in peers:
            await p.close()


# -- snapshot and stream ---------------------------------------------------------------------------------


async def test_snapshot_then_updates_without_gap_under_a_publish_storm(redis):
    async with running() as gw:
        market = await market_for(gw, redis)
        syms = ["AAA", "BBB", "CCC"]
        for sym in syms:
            await market.stats(sym, 0)
        stop = asyncio.Event()
        published: dict[str, int] = {}

        async def storm() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                sym = syms[n % 3]
                published[sym] = await market.stats(sym, n)

        storming = asyncio.create_task(storm())
        peers = []
        for _ in range(20):  # clients subscribe while the storm goes on
            p = await peer(url(gw, token(gw)))
            await p.send(action="subscribe", channels=[f"stats.{s}" for s in syms])
            peers.append(p)
            await asyncio.sleep(random.uniform(0, 0.02))
        await asyncio.sleep(0.3)
        stop.set()
        await storming
        for p in peers:
            for sym in syms:
                channel = f"stats.{sym}"
                await eventually(lambda p=p, c=channel, s=sym: any(
                    e.get("seq") == published[s] for e in p.events if e.get("channel") == c
                ))  # fmt: skip
                (snap,) = p.of("snapshot", channel)
                seqs = [e["seq"] for e in p.of("update", channel)]
                # stitched: nothing older than the snapshot, nothing missing, in order
                assert all(s > snap["seq"] for s in seqs)
                assert seqs == list(range(snap["seq"] + 1, snap["seq"] + 1 + len(seqs)))
                assert snap["data"] is None or snap["data"]["sym"] == sym
        await asyncio.gather(*(p.close() for p in peers))
        assert sum(len(p.of("update")) for p in peers) > 100


async def test_unsubscribe_stops_updates_and_max_hz_throttles(redis):
    async with running() as gw:
        market = await market_for(gw, redis)
        p = await peer(url(gw, token(gw)))
        await p.send(action="subscribe", channels=["stats.FAST"])
        await p.send(action="subscribe", channels=["stats.SLOW"], max_hz=2)
        await eventually(lambda: len(p.of("snapshot")) == 2)
        started = time.monotonic()
        for n in range(40):
            await market.stats("FAST", n)
            await market.stats("SLOW", n)
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
        await eventually(
            lambda: p.of("update", "stats.SLOW") and p.of("update", "stats.SLOW")[-1]["data"]["n"] == 39
        )
        assert len(p.of("update", "stats.FAST")) == 40
        slow = p.of("update", "stats.SLOW")
        assert len(slow) <= 2 * elapsed + 2 and any(e.get("conflated") for e in slow)
        await p.send(action="unsubscribe", channels=["stats.FAST"], id="u")
        await eventually(lambda: p.of("unsubscribed"))
        before = len(p.of("update", "stats.FAST"))
        await market.stats("FAST", 100)
        await p.send(action="ping")
        await eventually(lambda: p.of("pong"))
        assert len(p.of("update", "stats.FAST")) == before
        assert not gw.channels.get("stats.FAST")  # the last client left: unsubscribed on Redis too
        await p.close()


async def test_the_updates_of_one_loop_turn_leave_as_one_message_per_client(redis):
    async with running() as gw:
        channels = [f"stats.T{i}" for i in range(5)]
        peers = [await peer(url(gw, token(gw))) for _ in range(3)]
        for p in peers:
            await p.send(action="subscribe", channels=channels)
        await eventually(lambda: all(len(p.of("snapshot")) == 5 for p in peers))
        await asyncio.sleep(0.1)
        before = [p.messages for p in peers]
        now = int(time.time() * 1000)
        for i, channel in enumerate(channels):  # one turn: as the subscriber dispatches a read
            gw._on_update(channel, orjson.dumps({"type": "stats", "channel": channel, "seq": 10**6 + i,
                                                 "ts": now, "sent": now, "data": {"n": i}}))  # fmt: skip
        await eventually(lambda: all(len(p.of("update")) == 5 for p in peers))
        await asyncio.sleep(0.1)
        assert [p.messages - b for p, b in zip(peers, before, strict=True)] == [1, 1, 1]
        for p in peers:
            assert [e["data"]["n"] for e in p.of("update")] == [0, 1, 2, 3, 4]
            assert not any(e.get("conflated") for e in p.of("update"))
            await p.close()


# -- slow clients ----------------------------------------------------------------------------------------


async def test_a_slow_client_converges_and_does_not_slow_the_others(redis):
    async with running() as gw:
        market = await market_for(gw, redis)
        channels = [f"stats.S{i}" for i in range(5)]
        slow = await peer(url(gw, token(gw)), small_buffer=True)
        fast = await peer(url(gw, token(gw)))
        for p in (slow, fast):
            await p.send(action="subscribe", channels=channels)
        await eventually(lambda: len(slow.of("snapshot")) == 5 and len(fast.of("snapshot")) == 5)
        slow.reading.clear()  # stops reading: its socket fills, then WDS queues and conflates
        last: dict[str, int] = {}
        lags = []
        for n in range(300):
            sym = f"S{n % 5}"
            last[f"stats.{sym}"] = await market.stats(sym, n, pad=20_000)
            if n % 50 == 0:
                sent = time.monotonic()
                await eventually(lambda s=last[f"stats.{sym}"], c=f"stats.{sym}": any(
                    e.get("seq") == s for e in fast.of("update", c)))  # fmt: skip
                lags.append(time.monotonic() - sent)
        (client,) = [c for c in gw.clients if c.ws.remote_address[1] == slow.ws.local_address[1]]
        assert len(client.session.outbox) <= 5  # at most one update per channel waits
        assert client.session.outbox.bytes <= gw.settings.wds_client_buffer_bytes
        assert max(lags) < 1.0  # the fast one kept up the whole time
        slow.reading.set()
        for channel, seq in last.items():
            await eventually(lambda c=channel, s=seq: any(e.get("seq") == s for e in slow.of("update", c)))
        assert any(e.get("conflated") for e in slow.of("update"))
        assert slow.close_code is None
        for p in (slow, fast):
            await p.close()


async def test_a_client_stuck_too_long_is_closed(redis):
    async with running(wds_settings(wds_slow_close_s=0.5)) as gw:
        market = await market_for(gw, redis)
        stuck = await peer(url(gw, token(gw)), small_buffer=True)
        await stuck.send(action="subscribe", channels=["stats.BIG"])
        await eventually(lambda: stuck.of("snapshot"))
        stuck.reading.clear()
        for n in range(200):
            await market.stats("BIG", n, pad=20_000)
        await eventually(lambda: any(c.closing for c in gw.clients), within=5)
        stuck.reading.set()  # reads again within the close timeout: gets the data, then the close frame
        await eventually(lambda: stuck.close_code == 4008, within=5)
        await eventually(lambda: not gw.clients)
        _, _, body = await http(gw.http.port, "GET", "/metrics")
        assert b'mdpipe_wds_closes_total{code="4008"} 1.0' in body


# -- Redis restarts --------------------------------------------------------------------------------------


async def test_redis_restart_resyncs_clients_who_stay_connected():
    port = free_port()
    address = f"redis://127.0.0.1:{port}/0"
    mdc = mdc_settings()
    with private_redis(port) as server:
        redis = Redis.from_url(address)
        await eventually(lambda: _answers(redis))
        async with running(mdc=mdc, redis_url=address) as gw:
            market = Market(redis, Names(mdc.mdc_prefix))
            await market.stats("R", 1)
            p = await peer(url(gw, token(gw)))
            await p.send(action="subscribe", channels=["stats.R"])
            await eventually(lambda: p.of("snapshot"))
            server.send_signal(signal.SIGKILL)
            server.wait()
            await eventually(lambda: not gw.subscriber.connected)
            with private_redis(port):
                await redis.aclose()
                redis = Redis.from_url(address)
                await eventually(lambda: _answers(redis))
                market = Market(redis, Names(mdc.mdc_prefix))
                await market.stats("R", 7)  # seq starts again at 1: the restarted Redis kept nothing
                await eventually(lambda: any(e.get("resync") for e in p.of("snapshot")), within=15)
                await market.stats("R", 8)
                await eventually(lambda: p.of("update") and p.of("update")[-1]["data"]["n"] == 8)
                assert p.close_code is None
                await p.close()
        await redis.aclose()


async def _answers(redis: Redis) -> bool:
    try:
        return bool(await redis.ping())
    except Exception:
        return False


# -- many clients ----------------------------------------------------------------------------------------


async def test_a_thousand_clients_on_one_process(redis):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2500 and hard >= 2500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2500, hard))
    async with running() as gw:
        market = await market_for(gw, redis)
        tok = token(gw)
        gw.settings.wds_connections_per_token = 2000
        peers = await asyncio.gather(*(peer(url(gw, tok)) for _ in range(1000)))
        for i, p in enumerate(peers):
            await p.send(action="subscribe", channels=[f"stats.M{i % 10}", "stats.ALL"])
        await eventually(lambda: all(len(p.of("snapshot")) == 2 for p in peers), within=30)
        assert len(gw.channels) == 11  # one Redis subscription per channel, whatever the clients
        seqs = [await market.stats("ALL", n) for n in range(5)]

        def converged(p: Peer) -> bool:  # at the newest; a skipped update (WDS behind) is marked conflated
            got = p.of("update", "stats.ALL")
            return bool(got) and got[-1]["seq"] == seqs[-1]

        await eventually(lambda: all(converged(p) for p in peers), within=30)
        for p in peers:
            got = [p.of("snapshot", "stats.ALL")[0], *p.of("update", "stats.ALL")]
            for before, after in itertools.pairwise(got):
                assert after["seq"] == before["seq"] + 1 or after.get("conflated") is True, got
        status, _, body = await http(gw.http.port, "GET", "/readyz")
        assert status == 200 and orjson.loads(body)["clients"] == 1000
        await asyncio.gather(*(p.close() for p in peers))
        await eventually(lambda: not gw.clients, within=10)
