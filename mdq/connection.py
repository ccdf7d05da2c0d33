"""What the publisher and the consumer share about holding an AMQP connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

import aio_pika
import aiormq

from mdpipe.backoff import Backoff

from . import topology

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0

#: Errors that mean "the broker is away or refused us for now": wait a backoff delay and reconnect.
BROKER_ERRORS = (OSError, TimeoutError, aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException)


async def connect(url: str, name: str) -> aio_pika.abc.AbstractConnection:
    """A plain (not robust) connection: reconnecting is the caller's loop, so its state is visible."""
    return await aio_pika.connect(url, timeout=CONNECT_TIMEOUT_S, client_properties={"connection_name": name})


async def first_done(*awaitables: Awaitable[object]) -> None:
    """Wait for the first of ``awaitables``, cancel the others, and re-raise its exception if any."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        # Let the cancelled ones finish (a queue iterator cancels its consumer on the way out, which
        # raises once the channel is closing) and collect what they end with, so nothing is logged as
        # "Task exception was never retrieved" at every stop.
        await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def lost(channel: aio_pika.abc.AbstractChannel) -> None:
    """Return when ``channel`` or its connection is closed, for whatever reason.

    aio-pika's ``Connection.closed()`` never resolves when the socket dies under it (seen with
    aio-pika 10.2); the aiormq channel's closing future does.
    """
    underlay = await channel.get_underlay_channel()
    with contextlib.suppress(Exception):
        await asyncio.shield(underlay.closing)


class Link:
    """Keeps one AMQP connection: connect, run ``session`` until the connection is lost or ``stop`` is
    set, wait a backoff delay, repeat. ``connected``, ``ready`` and ``last_error`` tell the state."""

    def __init__(self, url: str, name: str, backoff: Backoff) -> None:
        self.url, self.name, self.backoff = url, name, backoff
        self.connected = False
        self.connects = 0
        self.last_error: str | None = None
        self.ready = asyncio.Event()  # set while connected

    async def session(self, connection: aio_pika.abc.AbstractConnection, stop: asyncio.Event) -> None:
        """Set up on a new connection, call ``up()``, and return when the connection is done."""
        raise NotImplementedError

    def up(self) -> None:
        self.connected, self.last_error = True, None
        self.connects += 1
        self.ready.set()
        self.backoff.up()
        log.info("broker connected", extra={"link": self.name})

    def down(self) -> None:
        """Called after every session, whatever ended it."""

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            connection: aio_pika.abc.AbstractConnection | None = None
            try:
                connection = await connect(self.url, self.name)
                await self.session(connection, stop)
                if not stop.is_set():
                    log.warning("broker connection lost", extra={"link": self.name, "error": self.last_error})
            except topology.TopologyError as exc:
                self.last_error = str(exc)
                log.error("broker refused topology", extra={"link": self.name, "error": self.last_error})
            except BROKER_ERRORS as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("broker unavailable", extra={"link": self.name, "error": self.last_error})
            finally:
                self.connected = False
                self.ready.clear()
                self.backoff.down()
                self.down()
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(connection.close(), 5)
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.backoff.next_delay())
