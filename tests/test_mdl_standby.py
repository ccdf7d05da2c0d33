"""Standby listeners: the lease (mdl.lease) decides which of several ``mdpipe mdl`` replicas of a market
holds the one vendor connection.

First the pure core against a fake clock; then real processes (``mdpipe mdl`` subprocesses) in front of
the emulator (in this process, ``SIM_MAX_CONNECTIONS=0``: a second connection would show, not close the
first), RabbitMQ and Redis: the leader killed with SIGKILL, paused with SIGSTOP, stopped with SIGTERM.
Messages are told apart by ``mdq-src``, the publishing instance (``MDL_INSTANCE``). Timeouts for what
must happen eventually are generous (a loaded 2-core CI machine); what must never happen (two vendor
connections, a message of a fenced leader) is asserted strictly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import uuid
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
from redis.asyncio import Redis

from bench.mdl_failover import Consumer, Replica, replica_env
from mdc import names
from mdl.lease import Change, Lease, LeaseCore, holder_name
from mdl.listener import _Fenced
from mdpipe.settings import MdlSettings
from tests.conftest import RABBITMQ_URL, REDIS_URL, delete_mdq, eventually

TTL = 1.5  # the default MDL_LEASE_TTL_S
TAKEOVER_S = 2.0  # what the lease promises after a kill -9 (bench/mdl_failover.py measures it)
TAKEOVER_SLACK_S = 1.5  # a loaded CI machine may take longer to schedule the standby


# -- the core, sans I/O ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def core(clock: Clock, value: str = "tok a") -> LeaseCore:
    return LeaseCore(value, 1.5, retry_s=0.2, clock=clock)


def test_acquire_sets_the_deadline_from_the_send_time_minus_the_margin():
    clock = Clock()
    lease = core(clock)
    assert not lease.valid() and lease.due_in() == 0
    sent = lease.attempt()
    clock.now += 0.1  # the answer takes 100 ms
    assert lease.result(sent, "tok a") == Change(True, "acquired")
    assert lease.deadline == pytest.approx(100.0 + 1.5 - 0.3)  # from the send, not the answer
    assert lease.valid() and lease.due_in() == pytest.approx(0.4)  # renew a third of the TTL after sending
    clock.now = 101.199
    assert lease.valid() and lease.expire() is None
    clock.now = 101.2
    assert not lease.valid()
    assert lease.expire() == Change(False, "expired")
    assert not lease.leader and lease.due_in() == pytest.approx(0.2)


def test_a_standby_retries_and_learns_the_holder():
    clock = Clock()
    lease = core(clock)
    sent = lease.attempt()
    assert lease.result(sent, "tok b") is None
    assert not lease.leader and holder_name(lease.holder) == "b"
    assert lease.due_in() == pytest.approx(0.2)
    clock.now += 0.2
    assert lease.due_in() == 0


def test_renewals_extend_and_failures_leave_the_deadline_to_decide():
    clock = Clock()
    lease = core(clock)
    lease.result(lease.attempt(), "tok a")
    clock.now = 100.5
    sent = lease.attempt()
    assert lease.result(sent, "tok a") is None and lease.deadline == pytest.approx(101.7)
    clock.now = 101.0
    assert lease.result(lease.attempt(), None, failed=True) is None  # Redis did not answer
    assert lease.leader and lease.due_in() == pytest.approx(0.2)  # retried soon, not in TTL/3
    assert lease.op_timeout() == pytest.approx(0.5)
    clock.now = 101.6
    assert lease.op_timeout() == pytest.approx(0.1)  # never waits past the deadline
    assert lease.due_in() == 0
    clock.now = 101.7
    assert lease.result(lease.attempt(), None, failed=True) == Change(False, "expired")


def test_a_late_answer_cannot_extend_past_its_send_time():
    """A paused holder (SIGSTOP) resumes with a renewal sent before the pause answered: still expired."""
    clock = Clock()
    lease = core(clock)
    lease.result(lease.attempt(), "tok a")
    clock.now = 100.5
    sent = lease.attempt()
    clock.now = 105.0  # paused for 4.5 s with the renewal in flight
    assert not lease.valid()
    assert lease.result(sent, "tok a") == Change(False, "expired")
    assert not lease.valid()


def test_an_acquire_answered_too_late_is_not_used():
    clock = Clock()
    lease = core(clock)
    sent = lease.attempt()
    clock.now += 1.3
    assert lease.result(sent, "tok a") is None and not lease.leader


def test_a_renewal_refused_means_the_lease_was_taken():
    clock = Clock()
    lease = core(clock)
    lease.result(lease.attempt(), "tok a")
    clock.now = 100.5
    assert lease.result(lease.attempt(), None) == Change(False, "taken")
    assert not lease.valid()


def test_release_steps_down_and_retries_at_once():
    clock = Clock()
    lease = core(clock)
    lease.result(lease.attempt(), "tok a")
    assert lease.released() == Change(False, "released")
    assert lease.released() is None and not lease.valid()


def test_settings_check_the_lease_timings():
    settings = MdlSettings()
    assert settings.mdl_lease and settings.mdl_lease_ttl_s == 1.5 and settings.mdl_lease_retry_s == 0.2
    with pytest.raises(ValueError, match="mdl_lease_retry_s"):
        MdlSettings(mdl_lease_ttl_s=0.5, mdl_lease_retry_s=0.5)
    with pytest.raises(ValueError, match="retry_s"):
        LeaseCore("v", 1.0, retry_s=1.0)
    assert names.mdl_lease("stocks") == "mdl:stocks:lease"


def test_the_fence_cuts_a_publish_round_short():
    """The publisher iterates the round's messages; the fence is checked before each one."""
    answers = iter([True, True, False, True])
    fenced = _Fenced(["m1", "m2", "m3", "m4"], lambda: next(answers))
    assert list(fenced) == ["m1", "m2"] and fenced.passed == 2


# -- the adapter against Redis ---------------------------------------------------------------------------


@pytest.fixture
async def lease_key() -> AsyncIterator[str]:
    market = f"test-{uuid.uuid4().hex[:8]}"  # a key of this test's own
    yield market
    redis = Redis.from_url(REDIS_URL)
    await redis.delete(names.mdl_lease(market))
    await redis.aclose()


class Running:
    """A ``Lease`` running in a task, its changes noted."""

    def __init__(self, url: str, market: str, instance: str, ttl_s: float = 0.6) -> None:
        self.changes: list[Change] = []
        self.lease = Lease(url, market, instance, ttl_s=ttl_s, retry_s=0.05, on_change=self.changes.append)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.lease.run(self.stop))

    async def close(self, release: bool = True) -> None:
        self.stop.set()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if release:
            await self.lease.release()


async def test_one_lease_holder_then_a_handover_on_release(lease_key):
    a = Running(REDIS_URL, lease_key, "a")
    await eventually(lambda: a.lease.leader, within=5)
    b = Running(REDIS_URL, lease_key, "b")
    await eventually(lambda: b.lease.holder == "a", within=5)
    await asyncio.sleep(1.0)  # over a TTL: a renews, b keeps trying
    assert a.lease.valid() and not b.lease.leader and a.changes == [Change(True, "acquired")]
    await a.close()
    assert a.changes[-1] == Change(False, "released")
    await eventually(lambda: b.lease.leader, within=1)  # at its next try, not after the TTL
    assert b.lease.holder == "b"
    await b.close()
    redis = Redis.from_url(REDIS_URL)
    assert not await redis.exists(names.mdl_lease(lease_key))  # released
    await redis.aclose()


async def test_a_key_taken_from_under_the_holder_steps_it_down(lease_key):
    a = Running(REDIS_URL, lease_key, "a")
    await eventually(lambda: a.lease.leader, within=5)
    redis = Redis.from_url(REDIS_URL)
    await redis.set(names.mdl_lease(lease_key), "other-token c", px=5000)
    await eventually(lambda: not a.lease.leader, within=2)
    assert a.changes[-1] == Change(False, "taken")
    await eventually(lambda: a.lease.holder == "c", within=2)  # learnt at its next try as a standby
    await a.close()
    assert await redis.get(names.mdl_lease(lease_key)) == b"other-token c"  # not ours to delete
    await redis.aclose()


async def test_a_hung_redis_cannot_hold_the_leader_past_its_deadline(lease_key):
    """Redis stops answering (a proxy that swallows everything): the holder steps down at its deadline."""
    swallowing = asyncio.Event()
    pairs: list[asyncio.StreamWriter] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = "127.0.0.1", 6379
        up_reader, up_writer = await asyncio.open_connection(host, port)
        pairs.extend((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if not swallowing.is_set():
                        dst.write(data)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    a = Running(f"redis://127.0.0.1:{port}/15", lease_key, "a")
    try:
        await eventually(lambda: a.lease.leader, within=5)
        loop = asyncio.get_running_loop()
        swallowing.set()
        cut = loop.time()
        deadline = a.lease.core.deadline
        await eventually(lambda: not a.lease.leader, within=3)
        stepped = loop.time()
        assert a.changes[-1] == Change(False, "expired")
        assert stepped <= deadline + 0.5, (stepped - cut, deadline - cut)  # at the deadline, not later
        assert stepped - cut <= 0.6 * 0.8 + 0.5
    finally:
        await a.close(release=False)
        server.close()
        for writer in pairs:
            writer.transport.abort()


# -- real processes --------------------------------------------------------------------------------------


class Cluster:
    """Replicas of ``mdpipe mdl`` for one emulator and exchange, a consumer of the trades queue."""

    def __init__(self, emulator, exchange: str) -> None:
        self.emulator, self.exchange = emulator, exchange
        self.env = replica_env(emulator, exchange, RABBITMQ_URL, REDIS_URL)
        self.replicas: list[Replica] = []
        self.consumer: Consumer | None = None

    async def replica(self, name: str) -> Replica:
        replica = await Replica(name, self.env).start()
        self.replicas.append(replica)
        return replica

    async def consume(self) -> Consumer:
        self.consumer = await Consumer(RABBITMQ_URL, f"{self.exchange}.trades").start()
        return self.consumer

    async def pair(self) -> tuple[Replica, Replica]:
        """``a`` started first and leading, data from it flowing; ``b`` standing by."""
        a = await self.replica("a")
        await eventually(a.leading, within=30)
        b = await self.replica("b")
        await eventually(b.standing_by, within=30)
        consumer = await self.consume()
        await eventually(lambda: consumer.count_from("a") > 3, within=10)
        assert (await b.readyz())["leader"] == "a"
        assert len(self.emulator.clients) == 1
        return a, b

    async def takeover(self, old: Replica, new: Replica, signum: int) -> float:
        """Send ``signum`` to ``old``; seconds from then to the first message of ``new`` arriving here."""
        consumer = self.consumer
        assert consumer is not None
        sent_at = asyncio.get_running_loop().time()
        old.signal(signum)
        await eventually(lambda: consumer.first_from(new.name, sent_at), within=10)
        takeover = consumer.first_from(new.name, sent_at) - sent_at  # type: ignore[operator]
        print(f"{signal.Signals(signum).name} to the first message of the new leader: {takeover:.3f} s")
        return takeover

    def admitted_after(self, t: float) -> int:
        """Connections the emulator authenticated after ``t`` (loop time = monotonic)."""
        counts = [(0.0, 0), *self.emulator.client_counts]
        return sum(1 for (_, p), (when, n) in itertools.pairwise(counts) if n > p and when > t)

    async def close(self) -> None:
        for replica in self.replicas:
            await replica.stop()
        if self.consumer is not None:
            await self.consumer.close()


@pytest.fixture
async def cluster(make_emulator) -> AsyncIterator[Callable[[], Cluster]]:
    redis = Redis.from_url(REDIS_URL)
    keys = (names.mdl_lease("stocks"), names.mdl_status("stocks"), names.mdl_desired("stocks"))
    await redis.delete(*keys)
    from mdpipe.settings import MdqSettings

    mdq = MdqSettings(mdq_exchange=f"test-{uuid.uuid4().hex[:10]}")
    emulator = await make_emulator(sim_rate=500, sim_symbols=50, sim_max_connections=0)
    made = Cluster(emulator, mdq.mdq_exchange)
    try:
        yield lambda: made
    finally:
        await made.close()
        for replica in made.replicas:
            replica.close()
        await delete_mdq(mdq)
        await redis.delete(*keys)
        await redis.aclose()


def logs(*replicas: Replica) -> str:
    return "\n".join(f"--- {r.name}:\n{r.log()[-3000:]}" for r in replicas)


async def test_kill_9_of_the_leader_the_standby_takes_over_within_2_s(cluster):
    c = cluster()
    a, b = await c.pair()
    takeover = await c.takeover(a, b, signal.SIGKILL)
    assert takeover < TAKEOVER_S + TAKEOVER_SLACK_S, logs(a, b)
    assert c.emulator.peak_clients == 1, list(c.emulator.client_counts)  # never two connections at once
    detail = await b.readyz()
    assert detail["role"] == "leader" and detail["leader"] == "b" and detail["ready"]
    assert await b.metric("mdpipe_mdl_leader") == 1
    assert await b.metric("mdpipe_mdl_takeovers_total") == 1
    redis = Redis.from_url(REDIS_URL)
    try:
        value = await redis.get(names.mdl_lease("stocks"))
        ttl_ms = await redis.pttl(names.mdl_lease("stocks"))
        assert holder_name(value.decode()) == "b" and 0 < ttl_ms <= TTL * 1000

        async def status() -> dict:
            raw = await redis.get(names.mdl_status("stocks"))
            return orjson.loads(raw) if raw else {}

        await eventually(lambda: status_is(status, instance="b", role="leader", leader="b"), within=5)
    finally:
        await redis.aclose()
    assert "lease lost" not in b.log() and "lease acquired" in b.log()


async def status_is(read, **expected) -> bool:
    got = await read()
    return all(got.get(k) == v for k, v in expected.items())


async def test_a_paused_leader_resumes_fenced_publishes_nothing_and_never_reconnects(cluster):
    c = cluster()
    a, b = await c.pair()
    loop = asyncio.get_running_loop()
    a.signal(signal.SIGSTOP)
    try:
        await eventually(b.leading, within=3 * TTL + 5)
        await eventually(lambda: c.consumer.count_from("b") > 3, within=10)
        await asyncio.sleep(max(0.0, 3 * TTL - 1.0))  # paused for about 3 x TTL in all
    finally:
        resumed_at = loop.time()
        a.signal(signal.SIGCONT)
    # The paused process still has its socket open (the kernel keeps it): the vendor sees it until the
    # resumed process closes it, at once, finding its deadline passed.
    await eventually(lambda: len(c.emulator.clients) == 1, within=5)
    await eventually(a.standing_by, within=10)
    await asyncio.sleep(2 * TTL)  # while b leads, a tries the lease every 0.2 s
    assert c.consumer.count_from("a", after=resumed_at) == 0, logs(a, b)  # fenced: nothing after resuming
    assert c.admitted_after(resumed_at) == 0  # and a never connected again
    assert await b.leading() and c.consumer.count_from("b", after=resumed_at + TTL) > 0
    detail = await a.readyz()
    assert detail["role"] == "standby" and detail["leader"] == "b" and detail["ready"]
    assert await a.metric("mdpipe_mdl_lease_lost_total", cause="expired") == 1
    assert await a.metric("mdpipe_mdl_leader") == 0
    assert "lease lost" in a.log()


async def test_a_clean_stop_hands_over_faster_than_the_ttl(cluster):
    c = cluster()
    a, b = await c.pair()
    takeover = await c.takeover(a, b, signal.SIGTERM)
    assert takeover < TTL, logs(a, b)
    assert await a.stop() == 0
    assert c.emulator.peak_clients == 1, list(c.emulator.client_counts)
    assert "Traceback" not in a.log()


async def test_without_the_lease_the_listener_always_leads(cluster):
    c = cluster()
    c.env["MDL_LEASE"] = "false"
    a = await c.replica("a")
    await eventually(a.leading, within=30)
    detail = await a.readyz()
    assert detail["lease"] is None and detail["leader"] == "a"
    redis = Redis.from_url(REDIS_URL)
    try:
        assert not await redis.exists(names.mdl_lease("stocks"))
    finally:
        await redis.aclose()
    with contextlib.suppress(Exception):
        await a.stop()
