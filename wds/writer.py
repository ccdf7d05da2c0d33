"""Writing to the clients: one flush per event-loop turn for every client with data, no task per client.

Fan-out (and every reply) marks a client *dirty*. The first mark of a loop turn schedules one flush
(``call_soon``), which runs after the turn's other callbacks, in particular the rest of the subscriber's
dispatch slice: every update a client got in that turn leaves as ONE WebSocket message. The busier WDS
is, the longer its turns and the more updates per message, so the cost per update falls as load rises
instead of the latency climbing with a backlog of messages.

Each message is one ``transport.write`` of its whole frame, taken from the outbox (``wds.frames``): built
once per message, or once per update for every client it goes to alone, where ``websockets`` would
frame it again for each client. ``websockets`` keeps the handshake, reading, pings, pongs and the close,
and nothing of its state is bypassed:

- it writes each of its own frames whole and at once, in this thread, so ours never land inside one;
- we write only while the connection is OPEN: sending or answering a close moves it to CLOSING first,
  so no frame of ours follows a close frame;
- no extension is ever negotiated (the server passes ``compression=None``; ``usable`` refuses a
  connection that has one): a deflated connection would need its frames compressed in its own context;
- the transport's buffer is the connection's own: websockets' flow control and
  ``get_write_buffer_size`` count what we write.

Backpressure: a client whose socket holds more than ``WRITE_LIMIT`` bytes not yet taken by the kernel
is skipped, its outbox conflating meanwhile, and is looked at again every ``BLOCKED_RETRY_S``; the
gateway closes it when it takes nothing for ``WDS_SLOW_CLOSE_S`` or its outbox passes its bound. So that
the kernel does not hide a slow client's backlog from that check, each client socket gets
``TCP_NOTSENT_LOWAT`` (``limit_kernel_buffer``).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from . import metrics

if TYPE_CHECKING:
    from .server import Client

WRITE_LIMIT = 65_536  # bytes waiting in a client's socket buffer above which it is skipped
BLOCKED_RETRY_S = 0.01  # how often a skipped client is looked at again
# Linux's TCP_NOTSENT_LOWAT (option 25): the socket takes no more from us while this many bytes wait
# unsent in the kernel. Without it a slow client's kernel buffer grows to megabytes (autotuned) of
# updates that can no longer be conflated, and it lags by all of them; with it the rest waits in the
# transport's buffer, where WRITE_LIMIT sees it, and then in the outbox, where it conflates.
TCP_NOTSENT_LOWAT = 25
NOTSENT_LOWAT = 16_384
OPEN = State.OPEN


def limit_kernel_buffer(ws: ServerConnection) -> None:
    """Set ``TCP_NOTSENT_LOWAT`` on the client's socket (Linux only)."""
    sock = ws.transport.get_extra_info("socket")
    if sock is not None and sys.platform == "linux":
        sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)


def usable(ws: ServerConnection) -> bool:
    """Whether frames written straight to the transport are right for this connection: no extension
    (compression) negotiated."""
    return not ws.protocol.extensions


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
        self.schedule()

    def schedule(self) -> None:
        """Flush at the end of this loop turn (a fan-out adds its clients to ``dirty`` itself)."""
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    def forget(self, client: Client) -> None:
        self.dirty.pop(client, None)
        self.blocked.pop(client, None)

    def flush(self) -> None:
        self._scheduled = False
        dirty, self.dirty = self.dirty, {}
        now = self.loop.time()
        messages = sent_bytes = deliveries = 0
        oldest_of: dict[int, int] = {}  # oldest update's event time -> messages: one fan-out shares it
        limit = self.write_limit
        for client in dirty:
            if client.closing:
                continue
            ws = client.ws
            transport = ws.transport
            if ws.protocol.state is not OPEN or transport.is_closing():
                continue  # closing: nothing may follow its close frame, and its handler drops what waits
            outbox = client.session.outbox
            while outbox.bytes:  # something waits
                if transport.get_write_buffer_size() > limit:
                    self.blocked[client] = None
                    break
                data, updates, oldest = outbox.take(client.message_bytes)
                try:
                    transport.write(data)
                except Exception:  # the transport failed: the connection's handler sees it closed
                    break
                client.progress = now
                messages += 1
                sent_bytes += len(data)
                if updates:
                    deliveries += updates
                    oldest_of[oldest] = oldest_of.get(oldest, 0) + 1
        if messages:
            metrics.MESSAGES_OUT.inc(messages)
            metrics.BYTES_OUT.inc(sent_bytes)
            if deliveries:
                metrics.DELIVERIES.inc(deliveries)
                wall_ms = time.time() * 1000
                for oldest, count in oldest_of.items():
                    metrics.LATENCY.observe(max(0.0, wall_ms - oldest) / 1000, count)
        if self.blocked and self._retry is None:
            self._retry = self.loop.call_later(BLOCKED_RETRY_S, self._unblock)

    def _unblock(self) -> None:
        """Give the skipped clients another go (those whose buffer drained are written now)."""
        self._retry = None
        blocked, self.blocked = self.blocked, {}
        for client in blocked:
            self.mark(client)
