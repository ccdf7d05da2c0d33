"""The MDQ consumer helper for processors: prefetch, decoding, age check, ack and nack, reconnects.

``Consumer(url, settings, queues, handler).run(stop)`` declares the topology, consumes ``queues`` with a
per-consumer prefetch (never global QoS, which RabbitMQ 4 removed) and calls ``handler(batch)`` for
each message, one at a time per consumer so a queue's order is kept:

- the handler returns: the message is acknowledged;
- the handler raises ``Retry`` (say, Redis is down): it is called again with the same message after
  ``retry_delay``, holding the queue so its order is kept, until it succeeds or the message is older
  than the TTL (then it is dropped as stale: newer data has superseded it);
- the message is malformed (``MalformedMessage``) or the handler raises anything else: it is rejected
  without requeue, so RabbitMQ moves it to the bounded dead-letter queue (``mdq.dead``), logged and
  counted; never acknowledged silently, never redelivered in a loop;
- the message is older than the TTL when it arrives (``mdq-recv-ns``): acknowledged unprocessed and
  counted as stale; its state is superseded by then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

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


Handler = Callable[[Batch], Awaitable[None]]


@dataclass
class ConsumerStats:
    handled: int = 0
    stale: int = 0
    malformed: int = 0
    failed: int = 0
    retried: int = 0
    seq_gaps: int = 0  # messages missing by mdq-seq (dropped by TTL, length limit or the listener)
    _last_seq: dict[tuple[str, str], int] = field(default_factory=dict)

    def saw(self, queue: str, batch: Batch) -> None:
        key = (queue, batch.source)
        if key not in self._last_seq and len(self._last_seq) >= 10_000:
            self._last_seq.clear()  # bounded: listener instances come and go
        last = self._last_seq.get(key)
        if last is not None and batch.seq > last + 1:
            self.seq_gaps += batch.seq - last - 1
        self._last_seq[key] = batch.seq


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
        retry_delay: float = 0.5,
        name: str = "mdpipe",
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(url, name, backoff)
        #: called with handled, stale, malformed, failed or retried for each message (for metrics)
        self.on_outcome = on_outcome or (lambda outcome: None)
        self.settings, self.queues, self.handler = settings, queues, handler
        self.prefetch, self.retry_delay = prefetch, retry_delay
        self.stats = ConsumerStats()
        self._channel: aio_pika.abc.AbstractChannel | None = None

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
        self.up()
        await first_done(stop.wait(), lost(channel), *(self._consume(q) for q in queues))

    async def _consume(self, queue: aio_pika.abc.AbstractQueue) -> None:
        # The iterator hands over one message at a time: the handler sees a queue's messages in order.
        async with queue.iterator() as messages:
            async for message in messages:
                await self._handle(queue.name, message)

    async def _handle(self, queue: str, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        stats = self.stats
        try:
            batch = decode(message.body, message.headers, queue)
        except MalformedMessage as exc:
            stats.malformed += 1
            self.on_outcome("malformed")
            log.warning("malformed message rejected", extra={"queue": queue, "error": str(exc)})
            await message.reject(requeue=False)
            return
        stats.saw(queue, batch)
        ttl_ns = self.settings.mdq_message_ttl_ms * 1_000_000
        if time.time_ns() - batch.recv_ns > ttl_ns:
            stats.stale += 1
            self.on_outcome("stale")
            await message.ack()
            return
        while True:
            try:
                await self.handler(batch)
                break
            except Retry as exc:
                # Retried in place: a requeued message would come back after the ones already
                # prefetched, out of order. Given up once older than the TTL, when newer data has
                # superseded it anyway.
                stats.retried += 1
                self.on_outcome("retried")
                if time.time_ns() - batch.recv_ns > ttl_ns:
                    stats.stale += 1
                    self.on_outcome("stale")
                    log.warning("retries outlived the ttl; message dropped", extra={"queue": queue})
                    await message.ack()
                    return
                log.warning("handler asked to retry", extra={"queue": queue, "error": str(exc)})
                await asyncio.sleep(self.retry_delay)
            except Exception:
                stats.failed += 1
                self.on_outcome("failed")
                log.exception("handler failed; message rejected", extra={"queue": queue})
                await message.reject(requeue=False)
                return
        stats.handled += 1
        self.on_outcome("handled")
        await message.ack()
