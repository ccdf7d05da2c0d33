"""Batching for the publisher: events of many frames merged into one message per queue (sans-I/O).

The listener routes each frame into per-queue groups and adds them here; ``flush`` turns what has
accumulated into messages. When the publisher keeps up, every flush holds one frame, so a message is
one frame's events of one class (no added latency). When frames back up, one flush covers many frames
and messages grow up to ``max_events``: the message rate, which costs the broker and the AMQP client
far more than the bytes, stays bounded while the event rate climbs.
"""

from __future__ import annotations

from dataclasses import dataclass

from pamqp.commands import Basic

from . import message


@dataclass(slots=True)
class Outgoing:
    queue: str  # also the routing key
    body: bytes
    properties: Basic.Properties
    count: int
    recv_ns: int
    cls: str


class Batcher:
    def __init__(self, source: str, max_events: int) -> None:
        self.source = source
        self.max_events = max_events
        self.conn = 0  # the vendor connection (``mdq-conn``): the listener counts its connections here
        # queue -> (class, first recv_ns, each event's JSON text without its braces)
        self._pending: dict[str, tuple[str, int, list[str]]] = {}
        self._ready: list[Outgoing] = []
        self._seq: dict[str, int] = {}

    def add(self, queue: str, cls: str, events: list[str], recv_ns: int) -> None:
        """Queue ``events`` for ``queue``, in order: each one an event's JSON object text as received,
        without its outer braces (so a body is joined in one step, ``[{`` ... ``},{`` ... ``}]``)."""
        if not events:
            return
        pending = self._pending.get(queue)
        if pending is None:
            self._pending[queue] = pending = (cls, recv_ns, [])
        batch = pending[2]
        batch.extend(events)
        if len(batch) >= self.max_events:
            size = self.max_events
            whole = len(batch) - len(batch) % size
            for start in range(0, whole, size):
                # What was pending is under max_events, so only the first message can start with an
                # earlier frame's event; every later one starts with an event of this frame.
                first_ns = pending[1] if start == 0 else recv_ns
                self._ready.append(self._encode(queue, cls, first_ns, batch[start : start + size]))
            if whole == len(batch):
                del self._pending[queue]
            else:  # the rest waits for more events or the flush
                self._pending[queue] = (cls, recv_ns, batch[whole:])

    def flush(self) -> list[Outgoing]:
        out = self._ready
        out.extend(
            self._encode(q, cls, recv_ns, events) for q, (cls, recv_ns, events) in self._pending.items()
        )
        self._ready, self._pending = [], {}
        return out

    def _encode(self, queue: str, cls: str, recv_ns: int, events: list[str]) -> Outgoing:
        seq = self._seq.get(queue, 0) + 1
        self._seq[queue] = seq
        props = message.properties(
            queue=queue, cls=cls, count=len(events), recv_ns=recv_ns, source=self.source, seq=seq,
            conn=self.conn,
        )  # fmt: skip
        # surrogatepass: a str that is not valid Unicode must not stop the publisher; the consumer
        # rejects the body it makes (websockets only hands over valid UTF-8, so this is defence only).
        body = ("[{" + "},{".join(events) + "}]").encode("utf-8", "surrogatepass")
        return Outgoing(queue, body, props, len(events), recv_ns, cls)
