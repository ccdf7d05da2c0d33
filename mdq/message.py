"""The MDQ message format: what the listener publishes and what a processor may rely on.

- Body: a JSON array of the original Massive event objects (the same fields, values and order as the
  vendor sent them, re-serialized compactly by orjson), all of one routing class (and shard).
- Headers: ``mdq-recv-ns`` (when the listener read the first of these events from the socket, ns since
  the epoch), ``mdq-class``, ``mdq-count`` (events in the body), ``mdq-src`` (listener instance) and
  ``mdq-seq`` (per listener instance and queue, +1 per message: a gap means messages were dropped),
  ``mdq-conn`` (the listener's vendor connection, +1 on every reconnect: a change means the listener
  was not connected for a while, and events of that while are missing; optional, 0 when absent).
- Properties: ``content_type`` application/json, ``delivery_mode`` 1 (non-persistent), ``app_id`` mdl,
  ``message_id`` ``<src>/<queue>/<seq>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pamqp.commands import Basic

RECV_NS = "mdq-recv-ns"
CLASS = "mdq-class"
COUNT = "mdq-count"
SOURCE = "mdq-src"
SEQ = "mdq-seq"
CONN = "mdq-conn"
# Only on dead letters the consumer writes: why, and from which queue.
REASON = "mdq-reason"
QUEUE = "mdq-queue"

CONTENT_TYPE = "application/json"
NON_PERSISTENT = 1


def properties(
    *, queue: str, cls: str, count: int, recv_ns: int, source: str, seq: int, conn: int = 0
) -> Basic.Properties:
    return Basic.Properties(
        content_type=CONTENT_TYPE,
        delivery_mode=NON_PERSISTENT,
        app_id="mdl",
        message_id=f"{source}/{queue}/{seq}",
        headers={RECV_NS: recv_ns, CLASS: cls, COUNT: count, SOURCE: source, SEQ: seq, CONN: conn},
    )


class MalformedMessage(ValueError):
    """A message that does not follow the MDQ format; the reason is safe to log."""


@dataclass(frozen=True, slots=True)
class Batch:
    """A decoded MDQ message."""

    events: list[dict[str, Any]]
    cls: str
    recv_ns: int
    source: str
    seq: int
    queue: str = ""  # the queue it was consumed from (its routing key), set by the consumer
    #: Maybe applied before: redelivered (its consumer stopped before acknowledging it), or a message
    #: this consumer has seen (by source and seq). The handler checks before applying it again.
    repeat: bool = False
    conn: int = 0  # the listener's vendor connection (``mdq-conn``)

    @property
    def message_id(self) -> str:
        """Unique per message: the sequence is per listener instance and queue, and an instance that
        restarts under the same name starts again from 0 with a later ``recv_ns``."""
        return f"{self.queue}:{self.source}:{self.recv_ns}:{self.seq}"


def decode(body: bytes, headers: dict[str, Any] | None, queue: str = "", repeat: bool = False) -> Batch:
    """Validate and decode one message, or raise MalformedMessage."""
    headers = headers or {}
    recv_ns, cls, source, seq = (headers.get(k) for k in (RECV_NS, CLASS, SOURCE, SEQ))
    if not isinstance(recv_ns, int) or not isinstance(seq, int):
        raise MalformedMessage(f"headers {RECV_NS} and {SEQ} must be integers")
    if isinstance(cls, bytes | bytearray):  # AMQP long strings may arrive as bytes
        cls = bytes(cls).decode("utf-8", "replace")
    if isinstance(source, bytes | bytearray):
        source = bytes(source).decode("utf-8", "replace")
    if not isinstance(cls, str) or not isinstance(source, str):
        raise MalformedMessage(f"headers {CLASS} and {SOURCE} must be strings")
    try:
        events = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"body is not JSON: {exc}") from None
    if not isinstance(events, list):
        raise MalformedMessage("body is not a JSON array")
    conn = headers.get(CONN, 0)
    if not isinstance(conn, int):
        raise MalformedMessage(f"header {CONN} must be an integer")
    return Batch(events, cls, recv_ns, source, seq, queue, repeat, conn)
