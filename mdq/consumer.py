"""The MDQ consumer helper for processors: prefetch, decoding, age check, grouping, ack and nack, reconnects.

``Consumer(url, settings, queues, handler).run(stop)`` declares the topology and consumes ``queues`` with
a per-consumer prefetch (never global QoS, which RabbitMQ 4 removed). A queue's messages are handled in
order, in *groups*: the messages already prefetched and waiting, up to ``group_events`` events, are
handed over together (under load this is what lets a processor fold many messages into one write).

The handler is either a plain ``async handler(batch)`` (one message per group), or a ``GroupHandler``
with two steps, so that a queue's next group is prepared while the previous one is being committed:

- ``prepare(batches) -> work``: synchronous, no I/O (a processor plans its Redis writes here);
- ``await commit(work)``: the I/O. Commits of one queue run one after the other, in order;
- ``reset()`` (optional): called at the start of every session, before anything is delivered: a
  handler that keeps state in memory learns that another consumer may have had its queues meanwhile.
- ``lost(queue, why)`` (optional, synchronous): events of ``queue`` may be missing from what was and
  will be delivered: ``session`` (its first message in a session: a start or a takeover), ``gap`` (a
  hole in ``mdq-seq``: the queue shed messages by TTL or length), ``stale`` (a message too old to
  apply was dropped here), ``restart`` (the listener started again) or ``reconnect`` (its vendor
  connection changed, ``mdq-conn``). A handler that can fetch the state again (a processor's
  hydration) does.

Then, for each group:

- the commit returns: its messages are acknowledged;
- the commit raises ``Retry`` (say, Redis is down): it is called again with the same work after
  ``retry_delay``, holding the queue so its order is kept, until it succeeds or the group's newest
  message is older than the TTL (then the group is dropped as stale: newer data has superseded it);
- the message is malformed (``MalformedMessage``), or ``prepare`` or ``commit`` raises anything else:
  it is rejected without requeue, so RabbitMQ moves it to the bounded dead-letter queue
  (``mdq.dead``), logged and counted; never acknowledged silently, never redelivered in a loop. When
  ``prepare`` fails on a group of several messages, each is prepared alone, so one bad message does
  not take its neighbours with it;
- the message is older than the TTL when it arrives (``mdq-recv-ns``): acknowledged unprocessed and
  counted as stale; its state is superseded by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aio_pika
import orjson

from mdpipe.backoff import Backoff
from mdpipe.settings import MdqSettings

from . import topology
from .connection import Link, first_done, lost
from .message import CLASS, COUNT, QUEUE, REASON, RECV_NS, SEQ, SOURCE, Batch, MalformedMessage, decode

log = logging.getLogger(__name__)


class Retry(Exception):
    """Raised by a handler: requeue the message and try again later."""


class GroupHandler(Protocol):
    """A handler in two steps: ``prepare`` (no I/O) overlaps the previous group's ``commit``."""

    def prepare(self, batches: list[Batch]) -> Any: ...

    async def commit(self, work: Any) -> None: ...


class _OneByOne:
    """A plain ``async handler(batch)`` as a ``GroupHandler`` of one message per group."""

    def __init__(self, handler: Callable[[Batch], Awaitable[None]]) -> None:
        self.handler = handler

    def prepare(self, batches: list[Batch]) -> Batch:
        return batches[0]

    async def commit(self, work: Batch) -> None:
        await self.handler(work)


Handler = Callable[[Batch], Awaitable[None]] | GroupHandler
Incoming = aio_pika.abc.AbstractIncomingMessage
Received = tuple[Incoming, Batch]


@dataclass
class ConsumerStats:
    handled: int = 0
    stale: int = 0
    malformed: int = 0
    failed: int = 0
    retried: int = 0
    groups: int = 0  # commits: handled / groups is the mean group size
    seq_gaps: int = 0  # messages missing by mdq-seq (dropped by TTL, length limit or the listener)
    #: (queue, listener) -> (seq, recv_ns, conn) of the newest message
    _last: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)

    def saw(self, queue: str, batch: Batch) -> tuple[bool, str | None]:
        """Count gaps in the listener's ``mdq-seq``. Returns whether ``batch`` is not after the newest
        message seen from its listener run (same seq or lower, not later: maybe a repeat), and why
        events before it may be missing (``gap``, ``restart``, ``reconnect``), if they may."""
        key = (queue, batch.source)
        if key not in self._last and len(self._last) >= 10_000:
            self._last.clear()  # bounded: listener instances come and go
        last = self._last.get(key)
        why = None
        if last is not None:
            seq, recv_ns, conn = last
            if batch.seq <= seq and batch.recv_ns <= recv_ns:
                return True, None
            if batch.seq > seq + 1:
                self.seq_gaps += batch.seq - seq - 1
                why = "gap"
            elif batch.seq <= seq:  # a listener that restarts under the same name counts from 0 again
                why = "restart"
            if why is None and batch.conn != conn:
                why = "reconnect"
        elif self._last and any(q == queue for q, _ in self._last):
            why = "restart"  # another listener instance (a new name) feeds the queue now
        self._last[key] = (batch.seq, batch.recv_ns, batch.conn)
        return False, why


class Consumer(Link):
    def __init__(
        self,
        url: str,
        settings: MdqSettings,
        queues: list[str],
        handler: Handler,
        backoff: Backoff,
        *,
        prefetch: int = 16,
        group_events: int = 0,
        retry_delay: float = 0.5,
        name: str = "mdpipe",
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(url, name, backoff)
        #: called with handled, stale, malformed, failed or retried for each message (for metrics)
        self.on_outcome = on_outcome or (lambda outcome: None)
        self.settings, self.queues = settings, queues
        if hasattr(handler, "prepare") and hasattr(handler, "commit"):
            self.handler: GroupHandler = handler  # type: ignore[assignment]
            #: a group grows while it has fewer events than this (it always takes one message)
            self.group_events = group_events
        else:
            self.handler, self.group_events = _OneByOne(handler), 0  # type: ignore[arg-type]
        self.prefetch, self.retry_delay = prefetch, retry_delay
        #: on stop, how long a commit in flight may go on (what it wrote is then acknowledged)
        self.stop_grace_s = 5.0
        self.stats = ConsumerStats()
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._seen: set[str] = set()

    async def dead_letter(self, batch: Batch, items: list[object], reason: str) -> bool:
        """Send ``items`` (parts of ``batch`` the handler could not use) to the dead-letter queue, as a
        JSON array with the batch's headers and ``mdq-reason``. False when the channel is down."""
        channel = self._channel
        if channel is None or channel.is_closed:
            return False
        headers = {
            REASON: reason[:500],
            QUEUE: batch.queue,
            SOURCE: batch.source,
            SEQ: batch.seq,
            RECV_NS: batch.recv_ns,
            CLASS: batch.cls,
            COUNT: len(items),
        }
        exchange = await channel.get_exchange(
            topology.dead_letter_name(self.settings.mdq_exchange), ensure=False
        )
        try:
            await exchange.publish(
                aio_pika.Message(orjson.dumps(items), headers=headers, content_type="application/json"),
                routing_key=batch.queue,
            )
        except Exception as exc:  # the channel died under us: the caller counts the loss
            log.warning("dead letter not sent", extra={"queue": batch.queue, "error": repr(exc)})
            return False
        return True

    async def session(self, connection: aio_pika.abc.AbstractConnection, stop: asyncio.Event) -> None:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)  # per consumer
        await topology.declare(channel, self.settings)
        self._channel = channel
        queues = [await channel.get_queue(name, ensure=True) for name in self.queues]
        self._seen: set[str] = set()  # queues that delivered in this session
        reset = getattr(self.handler, "reset", None)
        if reset is not None:
            reset()
        self.up()
        await first_done(stop.wait(), lost(channel), *(self._consume(q) for q in queues))

    async def _consume(self, queue: aio_pika.abc.AbstractQueue) -> None:
        # Deliveries wait in ``inbox`` (at most ``prefetch`` of them: the broker sends no more until
        # some are acknowledged) so that a group can take every one already there.
        inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()

        async def deliver(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            inbox.put_nowait(message)

        tag = await queue.consume(deliver)
        committing: asyncio.Task[None] | None = None
        try:
            while True:
                group = await self._take(queue.name, inbox)
                if not group:
                    continue
                parts = self._prepare(queue.name, group)
                if committing is not None:
                    await committing  # one commit at a time per queue: a queue's writes stay in order
                committing = asyncio.create_task(self._commit(queue.name, parts))
        finally:
            if committing is not None:
                # Stopping: let the commit in flight finish, so what it wrote is acknowledged
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(committing), self.stop_grace_s)
                committing.cancel()
            with contextlib.suppress(Exception):
                if not queue.channel.is_closed:
                    await queue.cancel(tag)
                    while not inbox.empty():  # back to the queue, in order, for whoever comes next
                        await inbox.get_nowait().nack(requeue=True)

    async def _take(self, queue: str, inbox: asyncio.Queue[Incoming]) -> list[Received]:
        """The next group: one message (waiting for it), then those already delivered, while the group
        has fewer than ``group_events`` events. Malformed and stale messages are settled here."""
        group: list[Received] = []
        events = 0
        message = await inbox.get()
        while True:
            batch = await self._accept(queue, message)
            if batch is not None:
                group.append((message, batch))
                events += len(batch.events)
            if events >= self.group_events or inbox.empty():
                return group
            message = inbox.get_nowait()

    async def _accept(self, queue: str, message: aio_pika.abc.AbstractIncomingMessage) -> Batch | None:
        stats = self.stats
        try:
            batch = decode(message.body, message.headers, queue, bool(message.redelivered))
        except MalformedMessage as exc:
            stats.malformed += 1
            self.on_outcome("malformed")
            log.warning("malformed message rejected", extra={"queue": queue, "error": str(exc)})
            await message.reject(requeue=False)
            return None
        repeat, why = stats.saw(queue, batch)
        if repeat and not batch.repeat:
            batch = dataclasses.replace(batch, repeat=True)
        if queue not in self._seen:
            self._seen.add(queue)
            why = "session"
        if time.time_ns() - batch.recv_ns > self.settings.mdq_message_ttl_ms * 1_000_000:
            stats.stale += 1
            self.on_outcome("stale")
            self._lost(queue, "stale")
            await message.ack()
            return None
        if why is not None:
            self._lost(queue, why)
        return batch

    def _lost(self, queue: str, why: str) -> None:
        hook = getattr(self.handler, "lost", None)
        if hook is not None:
            hook(queue, why)

    def _prepare(self, queue: str, group: list[Received]) -> list[tuple[list[Received], Any]]:
        """The group's work, or, when preparing it fails, each message's alone (None: rejected)."""
        try:
            return [(group, self.handler.prepare([batch for _, batch in group]))]
        except Exception:
            if len(group) == 1:
                log.exception("handler failed; message rejected", extra={"queue": queue})
                return [(group, _FAILED)]
        parts = []
        for one in group:
            try:
                parts.append(([one], self.handler.prepare([one[1]])))
            except Exception:
                log.exception("handler failed; message rejected", extra={"queue": queue})
                parts.append(([one], _FAILED))
        return parts

    async def _commit(self, queue: str, parts: list[tuple[list[Received], Any]]) -> None:
        for group, work in parts:
            outcome = await self._commit_one(queue, group, work)
            for message, _ in group:
                if outcome == "failed":
                    await message.reject(requeue=False)
                else:
                    await message.ack()
            for _ in group:
                self.on_outcome(outcome)
            setattr(self.stats, outcome, getattr(self.stats, outcome) + len(group))

    async def _commit_one(self, queue: str, group: list[Received], work: Any) -> str:
        """handled, stale or failed."""
        if work is _FAILED:
            return "failed"
        newest_ns = max(batch.recv_ns for _, batch in group)
        ttl_ns = self.settings.mdq_message_ttl_ms * 1_000_000
        while True:
            try:
                await self.handler.commit(work)
                self.stats.groups += 1
                return "handled"
            except Retry as exc:
                # Retried in place: a requeued message would come back after the ones already
                # prefetched, out of order. Given up once older than the TTL, when newer data has
                # superseded it anyway.
                self.stats.retried += len(group)
                for _ in group:
                    self.on_outcome("retried")
                if time.time_ns() - newest_ns > ttl_ns:
                    log.warning("retries outlived the ttl; messages dropped",
                                extra={"queue": queue, "messages": len(group)})  # fmt: skip
                    return "stale"
                log.warning("handler asked to retry", extra={"queue": queue, "error": str(exc)})
                await asyncio.sleep(self.retry_delay)
            except Exception:
                log.exception("handler failed; message rejected", extra={"queue": queue,
                                                                         "messages": len(group)})  # fmt: skip
                return "failed"


_FAILED = object()  # the work of a group whose prepare raised
