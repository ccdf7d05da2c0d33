"""The MDQ publisher: one AMQP connection that declares the topology and publishes batches, and comes
back by itself.

``run(stop)`` keeps a connection: connect, declare the topology, publish until the connection or the
channel is lost, wait a backoff delay, repeat. ``publish`` never waits for a connection: while the
broker is away it raises ``BrokerUnavailable`` at once, so the caller decides what to drop. Messages go
out without publisher confirms (real-time data past its TTL is worth nothing, and a confirm round trip
per message would cap the rate); every write waits for the socket buffer to drain, so a broker that
applies flow control slows the publisher instead of growing its memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aio_pika
import aiormq

from mdpipe.backoff import Backoff
from mdpipe.settings import MdqSettings

from . import topology
from .batching import Outgoing
from .connection import Link, first_done, lost


class BrokerUnavailable(Exception):
    """No usable connection to RabbitMQ right now; ``sent`` messages went out before it was lost."""

    def __init__(self, reason: str, sent: int = 0) -> None:
        super().__init__(reason)
        self.sent = sent


class Publisher(Link):
    def __init__(self, url: str, settings: MdqSettings, backoff: Backoff, *, name: str = "mdpipe") -> None:
        super().__init__(url, name, backoff)
        self.settings = settings
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._lost = asyncio.Event()

    async def session(self, connection: aio_pika.abc.AbstractConnection, stop: asyncio.Event) -> None:
        channel = await connection.channel(publisher_confirms=False)
        await topology.declare(channel, self.settings)
        self._channel = await channel.get_underlay_channel()
        self._lost.clear()
        self.up()
        await first_done(stop.wait(), lost(channel), self._lost.wait())

    def down(self) -> None:
        self._channel = None

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish in order; raise BrokerUnavailable (and start a reconnect) when the broker is lost.

        Messages before the failure went out; the caller counts the rest as dropped.
        """
        channel = self._channel
        if channel is None or channel.is_closed:
            self._mark_lost(self.last_error or "not connected")
            raise BrokerUnavailable(self.last_error or "not connected")
        exchange = self.settings.mdq_exchange
        sent = 0
        try:
            for out in messages:
                await channel.basic_publish(
                    out.body, exchange=exchange, routing_key=out.queue, properties=out.properties
                )
                sent += 1
        except (OSError, aiormq.exceptions.AMQPError, RuntimeError) as exc:
            self._mark_lost(f"{type(exc).__name__}: {exc}")
            raise BrokerUnavailable(self.last_error or "", sent) from None

    def _mark_lost(self, reason: str) -> None:
        self.last_error = reason
        self._channel, self.connected = None, False
        self.ready.clear()
        self._lost.set()  # the session ends and run() reconnects
