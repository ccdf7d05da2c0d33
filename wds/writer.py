"""Writing to the clients: one flush per event-loop turn for every client with data, no task per client.

Fan-out (and every reply) marks a client *dirty*. The first mark of a loop turn schedules one flush
(``call_soon``), which runs after the turn's other callbacks, in particular the rest of the subscriber's
dispatch slice: every update a client got in that turn leaves as ONE WebSocket message. The busier WDS
is, the longer its turns and the more updates per message, so the cost per update falls as load rises
instead of the latency climbing with a backlog of messages.

Writes are synchronous (websockets' ``broadcast``, one connection at a time): no task, send lock or
timeout per message, which is where a per-client writer task spent most of its time. Backpressure stays:
a client whose socket holds more than ``WRITE_LIMIT`` bytes not yet taken by the kernel is skipped, its
outbox conflating meanwhile, and is looked at again every ``BLOCKED_RETRY_S``; the gateway closes it
when it takes nothing for ``WDS_SLOW_CLOSE_S`` or its outbox passes its bound.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from websockets.asyncio.server import broadcast
from websockets.protocol import State

from . import metrics
from .protocol import message

if TYPE_CHECKING:
    from .server import Client

WRITE_LIMIT = 65_536  # bytes waiting in a client's socket buffer above which it is skipped
BLOCKED_RETRY_S = 0.01  # how often a skipped client is looked at again


class Writer:
    """The dirty clients of one gateway and the flush that writes to them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, write_limit: int = WRITE_LIMIT) -> None:
        self.loop = loop
        self.write_limit = write_limit
        self.dirty: dict[Client, None] = {}  # insertion-ordered: clients are written in the order marked
        self.blocked: dict[Client, None] = {}  # skipped for a full socket buffer
        self._scheduled = False
        self._retry: asyncio.TimerHandle | None = None

    def mark(self, client: Client) -> None:
        """``client`` has something to send: it goes out at the end of this loop turn."""
        self.dirty[client] = None
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    def forget(self, client: Client) -> None:
        self.dirty.pop(client, None)
        self.blocked.pop(client, None)

    def flush(self) -> None:
        self._scheduled = False
        dirty, self.dirty = self.dirty, {}
        now, wall = self.loop.time(), time.time()
        messages = sent_bytes = deliveries = 0
        latency = metrics.LATENCY.observe
        limit = self.write_limit
        for client in dirty:
            if client.closing:
                continue
            ws = client.ws
            if ws.protocol.state is not State.OPEN:
                continue  # closing: its handler drops what is queued
            outbox = client.session.outbox
            transport = ws.transport
            while outbox:
                if transport.get_write_buffer_size() > limit:
                    self.blocked[client] = None
                    break
                frames, updates, oldest = outbox.take(client.message_bytes)
                data = message(frames)
                try:
                    broadcast((ws,), data, text=True, raise_exceptions=True)
                except Exception:  # the transport failed: the connection's handler sees it closed
                    break
                client.progress = now
                messages += 1
                sent_bytes += len(data)
                if updates:
                    deliveries += updates
                    latency(max(0.0, wall - oldest / 1000))
        if messages:
            metrics.MESSAGES_OUT.inc(messages)
            metrics.BYTES_OUT.inc(sent_bytes)
            if deliveries:
                metrics.DELIVERIES.inc(deliveries)
        if self.blocked and self._retry is None:
            self._retry = self.loop.call_later(BLOCKED_RETRY_S, self._unblock)

    def _unblock(self) -> None:
        """Give the skipped clients another go (those whose buffer drained are written now)."""
        self._retry = None
        blocked, self.blocked = self.blocked, {}
        for client in blocked:
            self.mark(client)
