"""The MDQ queues and the consumer helper against the real RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import orjson
import pytest

from mdpipe.backoff import Backoff
from mdq import message, topology
from mdq.batching import Batcher
from mdq.consumer import Consumer, Retry
from mdq.message import Batch
from mdq.publisher import Publisher
from tests.conftest import RABBITMQ_URL, drain, eventually


def fast_backoff() -> Backoff:
    return Backoff(0.05, 0.2, 1.0)


@pytest.fixture
async def started() -> AsyncIterator[Any]:
    """``await started(link)``: runs a Publisher or Consumer until the test ends; waits until connected."""
    running: list[tuple[asyncio.Event, asyncio.Task]] = []

    async def start(link):
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(link.run(stop))))
        await asyncio.wait_for(link.ready.wait(), 10)
        return link

    yield start
    for stop, task in running:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


def texts(events: list[dict[str, Any]]) -> list[str]:
    """Events as the batcher takes them: each one's JSON text without its braces."""
    return [orjson.dumps(event).decode()[1:-1] for event in events]


async def publish(publisher: Publisher, queue: str, events: list[Any], *, batcher: Batcher | None = None):
    batcher = batcher or Batcher("test", 1000)
    batcher.add(queue, queue.split(".")[1], texts(events), time.time_ns())
    await publisher.publish(batcher.flush())


async def test_a_message_older_than_the_ttl_is_gone(make_mdq, started):
    mdq = make_mdq(mdq_message_ttl_ms=200)
    publisher = await started(Publisher(RABBITMQ_URL, mdq, fast_backoff()))
    queue = f"{mdq.mdq_exchange}.trades"
    await publish(publisher, queue, [{"ev": "T", "sym": "OLD"}])
    await asyncio.sleep(0.5)
    await publish(publisher, queue, [{"ev": "T", "sym": "NEW"}])
    [only] = await drain(queue, settle=0.1)
    assert b"NEW" in only.body


async def test_max_length_drops_the_oldest(make_mdq, started):
    mdq = make_mdq(mdq_max_length=10)
    publisher = await started(Publisher(RABBITMQ_URL, mdq, fast_backoff()))
    queue = f"{mdq.mdq_exchange}.quotes"
    batcher = Batcher("test", 1000)
    for n in range(15):
        await publish(publisher, queue, [{"ev": "Q", "n": n}], batcher=batcher)
    kept = await drain(queue, settle=0.1)
    assert [m.headers[message.SEQ] for m in kept] == list(range(6, 16))


async def test_max_bytes_drops_the_oldest(make_mdq, started):
    mdq = make_mdq(mdq_max_bytes=1024 * 1024)
    publisher = await started(Publisher(RABBITMQ_URL, mdq, fast_backoff()))
    queue = f"{mdq.mdq_exchange}.aggregates"
    batcher = Batcher("test", 1000)
    for _ in range(8):
        await publish(publisher, queue, [{"ev": "A", "pad": "x" * 200_000}], batcher=batcher)
    kept = await drain(queue, settle=0.1)
    assert 1 <= len(kept) <= 5 and sum(len(m.body) for m in kept) <= 1024 * 1024
    assert [m.headers[message.SEQ] for m in kept] == list(range(9 - len(kept), 9))  # the newest


async def test_queues_are_declared_bounded_and_durable(make_mdq, started):
    mdq = make_mdq(mdq_shards=2)
    await started(Publisher(RABBITMQ_URL, mdq, fast_backoff()))
    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        for name in topology.queue_names(mdq.mdq_exchange, 2):
            # passive declare with the same arguments succeeds; other arguments would be refused
            queue = await channel.declare_queue(name, durable=True, arguments=topology.queue_arguments(mdq))
            assert queue.declaration_result.message_count == 0
        assert len(topology.queue_names(mdq.mdq_exchange, 2)) == 2 * len(topology.CLASSES)


class Recorder:
    """A handler that keeps what it handled; ``fail`` makes it raise that exception once per event."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.fail: dict[str, BaseException] = {}
        self.always_retry: set[str] = set()

    async def __call__(self, batch: Batch) -> None:
        for event in batch.events:
            if event.get("id") in self.always_retry:
                raise Retry("still down")
            exc = self.fail.pop(event.get("id"), None)
            if exc is not None:
                raise exc
        self.batches.append(batch)

    def ids(self) -> list[str]:
        return [e["id"] for b in self.batches for e in b.events]


async def test_consumer_acks_retries_rejects_and_skips_stale(make_mdq, started):
    mdq = make_mdq(mdq_message_ttl_ms=1000)
    queue = f"{mdq.mdq_exchange}.trades"
    publisher = await started(Publisher(RABBITMQ_URL, mdq, fast_backoff()))
    handler = Recorder()
    handler.fail = {"retry-me": Retry("redis down"), "broken": ValueError("bug")}
    consumer = await started(Consumer(RABBITMQ_URL, mdq, [queue], handler, fast_backoff(), retry_delay=0.05))
    batcher = Batcher("test", 1)
    for event_id in ("a", "retry-me", "broken", "b"):
        await publish(publisher, queue, [{"ev": "T", "id": event_id}], batcher=batcher)
    await eventually(lambda: handler.ids()[-1:] == ["b"])
    assert handler.ids() == ["a", "retry-me", "b"]  # retried in order; the failed one is not redelivered
    assert (consumer.stats.handled, consumer.stats.retried, consumer.stats.failed) == (3, 1, 1)

    # a handler that keeps asking to retry holds its queue until the message is older than the TTL
    handler.always_retry = {"stuck"}
    await publish(publisher, queue, [{"ev": "T", "id": "stuck"}], batcher=batcher)
    await eventually(lambda: consumer.stats.stale == 1, within=5)
    assert consumer.stats.retried > 2
    await publish(publisher, queue, [{"ev": "T", "id": "after"}], batcher=batcher)
    await eventually(lambda: handler.ids()[-1:] == ["after"])

    # stale: received long before it is consumed
    old = Batcher("test", 10)
    old.add(queue, "trades", texts([{"ev": "T", "id": "stale"}]), time.time_ns() - 10 * 10**9)
    # and malformed: not the MDQ format
    await publisher.publish(old.flush())
    async with await aio_pika.connect(RABBITMQ_URL) as connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(aio_pika.Message(b"not json", headers={}), routing_key=queue)
    await eventually(lambda: consumer.stats.stale == 2 and consumer.stats.malformed == 1)
    assert "stale" not in handler.ids()


async def test_standby_consumer_takes_over_a_shard(make_mdq, started):
    mdq = make_mdq()
    queue = f"{mdq.mdq_exchange}.quotes"
    publisher = await started(Publisher(RABBITMQ_URL, mdq, fast_backoff()))
    first, second = Recorder(), Recorder()
    active = Consumer(RABBITMQ_URL, mdq, [queue], first, fast_backoff(), name="first")
    stop_active = asyncio.Event()
    active_task = asyncio.create_task(active.run(stop_active))
    await asyncio.wait_for(active.ready.wait(), 10)
    await started(Consumer(RABBITMQ_URL, mdq, [queue], second, fast_backoff(), name="second"))
    batcher = Batcher("test", 1)
    for n in range(5):
        await publish(publisher, queue, [{"ev": "Q", "id": f"q{n}"}], batcher=batcher)
    await eventually(lambda: len(first.ids()) == 5)
    assert second.ids() == []  # single active consumer: the standby waits

    stop_active.set()
    await asyncio.wait_for(active_task, 10)
    for n in range(5, 8):
        await publish(publisher, queue, [{"ev": "Q", "id": f"q{n}"}], batcher=batcher)
    await eventually(lambda: second.ids() == ["q5", "q6", "q7"])


class Grouper:
    """A two-step handler that keeps its groups; ``hold`` keeps the first commit waiting until set."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.hold = asyncio.Event()
        self.repeats: list[bool] = []

    def prepare(self, batches: list[Batch]) -> list[str]:
        ids = [e["id"] for b in batches for e in b.events]
        if "bad" in ids:
            raise ValueError("a bug in the processor")
        self.repeats += [b.repeat for b in batches]
        return ids

    async def commit(self, ids: list[str]) -> None:
        await self.hold.wait()
        self.groups.append(ids)

    def ids(self) -> list[str]:
        return [i for group in self.groups for i in group]


async def grouping(make_mdq, started, group_events: int) -> tuple[Any, str, Publisher, Grouper, Consumer]:
    """A publisher and a consumer with a ``Grouper`` on the quotes queue of a fresh exchange."""
    mdq = make_mdq()
    queue = f"{mdq.mdq_exchange}.quotes"
    publisher = await started(Publisher(RABBITMQ_URL, mdq, fast_backoff()))
    handler = Grouper()
    consumer = Consumer(RABBITMQ_URL, mdq, [queue], handler, fast_backoff(), group_events=group_events)
    return mdq, queue, publisher, handler, await started(consumer)


async def test_consumer_groups_the_waiting_messages_in_order(make_mdq, started):
    _, queue, publisher, handler, consumer = await grouping(make_mdq, started, group_events=4)
    batcher = Batcher("test", 1)
    sent = [f"q{n}" for n in range(10)]
    for event_id in sent:
        await publish(publisher, queue, [{"ev": "Q", "id": event_id}], batcher=batcher)
    await asyncio.sleep(0.3)  # the first commit waits: the rest arrive and wait in their turn
    handler.hold.set()
    await eventually(lambda: handler.ids() == sent)
    sizes = [len(group) for group in handler.groups]
    assert max(sizes) == 4 and all(size <= 4 for size in sizes)  # bounded by group_events
    assert consumer.stats.handled == 10 and consumer.stats.groups == len(sizes) < 10


async def test_a_bad_message_in_a_group_is_rejected_alone(make_mdq, started):
    mdq, queue, publisher, handler, consumer = await grouping(make_mdq, started, group_events=100)
    batcher = Batcher("test", 1)
    await publish(publisher, queue, [{"ev": "Q", "id": "first"}], batcher=batcher)
    await asyncio.sleep(0.1)
    for event_id in ("a", "bad", "b"):
        await publish(publisher, queue, [{"ev": "Q", "id": event_id}], batcher=batcher)
    await asyncio.sleep(0.3)
    handler.hold.set()
    await eventually(lambda: handler.ids() == ["first", "a", "b"])
    assert (consumer.stats.handled, consumer.stats.failed) == (3, 1)
    dead = await drain(topology.dead_letter_name(mdq.mdq_exchange), settle=0.2)
    assert [orjson.loads(m.body)[0]["id"] for m in dead] == ["bad"]


async def test_messages_in_flight_at_a_stop_are_redelivered_marked(make_mdq, started):
    mdq = make_mdq()
    queue = f"{mdq.mdq_exchange}.trades"
    publisher = await started(Publisher(RABBITMQ_URL, mdq, fast_backoff()))
    stuck = Grouper()  # never commits
    first = Consumer(RABBITMQ_URL, mdq, [queue], stuck, fast_backoff(), group_events=1)
    first.stop_grace_s = 0.1
    stop_first = asyncio.Event()
    first_task = asyncio.create_task(first.run(stop_first))
    await asyncio.wait_for(first.ready.wait(), 10)
    batcher = Batcher("test", 1)
    for event_id in ("a", "b", "c"):
        await publish(publisher, queue, [{"ev": "T", "id": event_id}], batcher=batcher)
    await eventually(lambda: stuck.repeats == [False, False])  # one committing, one prepared
    stop_first.set()
    await asyncio.wait_for(first_task, 10)
    assert first.stats.handled == 0

    second = Grouper()
    second.hold.set()
    await started(Consumer(RABBITMQ_URL, mdq, [queue], second, fast_backoff(), group_events=1))
    await eventually(lambda: second.ids() == ["a", "b", "c"])  # the order is kept
    assert second.repeats == [True, True, True]  # all three had been delivered to the first
