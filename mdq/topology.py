"""The MDQ topology: routing classes, the table that maps every market's event types to them, queue
names, queue arguments, shard choice, and the idempotent declaration.

One direct exchange (``MDQ_EXCHANGE``, ``mdq`` by default) and one queue per routing class, or
``MDQ_SHARDS`` queues per class. The routing key of a queue is its name. Every queue is bounded three
ways (message TTL, length, bytes; the oldest message goes first) and holds non-persistent messages, so a
gone consumer costs bounded memory and nothing on disk. See docs/mdq.md.

Declarations avoid what RabbitMQ 4 removed: queues are durable (transient non-exclusive queues are
deprecated), classic (quorum queues cannot drop the head cheaply nor hold transient messages), and
consumers use per-consumer prefetch, never global QoS.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from mdpipe import massive

if TYPE_CHECKING:
    import aio_pika

    from mdpipe.settings import MdqSettings

TRADES = "trades"
QUOTES = "quotes"
AGGREGATES = "aggregates"
HALTS = "halts"
IMBALANCES = "imbalances"
VALUES = "values"
OTHER = "other"

#: Every routing class, in documentation order. ``other`` takes what the table below does not name.
CLASSES: tuple[str, ...] = (TRADES, QUOTES, AGGREGATES, HALTS, IMBALANCES, VALUES, OTHER)

# Event type -> class, as each market uses its event types (see mdpipe.massive.EVENT_TYPES).
_STOCKS = {
    "T": TRADES,
    "Q": QUOTES,
    "A": AGGREGATES,
    "AM": AGGREGATES,
    "LULD": HALTS,
    "NOI": IMBALANCES,
    "FMV": VALUES,
    "LV": VALUES,
}
_FUTURES = {"T": TRADES, "Q": QUOTES, "A": AGGREGATES, "AM": AGGREGATES}

#: The routing table: market -> event type -> class. Event types a market does not list go to ``other``.
EVENT_CLASSES: dict[str, dict[str, str]] = {
    "stocks": _STOCKS,
    "options": {"T": TRADES, "Q": QUOTES, "A": AGGREGATES, "AM": AGGREGATES, "FMV": VALUES, "LV": VALUES},
    "forex": {
        "C": QUOTES,
        "CA": AGGREGATES,
        "CAS": AGGREGATES,
        "AM": AGGREGATES,
        "FMV": VALUES,
        "LV": VALUES,
    },
    "crypto": {
        "XT": TRADES,
        "XQ": QUOTES,
        "XL2": QUOTES,
        "XA": AGGREGATES,
        "XAS": AGGREGATES,
        "AM": AGGREGATES,
        "FMV": VALUES,
        "LV": VALUES,
    },
    # An index's values feed its day stats, as trades do: with the trades (STATS_CLASSES in mdp.service:
    # one replica owns a symbol's stats, the one consuming its trades and aggregates).
    "indices": {"V": TRADES, "A": AGGREGATES, "AM": AGGREGATES},
    **{market: _FUTURES for market in massive.MARKETS if market.startswith("futures")},
}


def queue_names(exchange: str, shards: int) -> list[str]:
    """Every queue of the topology: ``mdq.trades`` with one shard, ``mdq.trades.0`` ... with several."""
    return [name for cls in CLASSES for name in class_queues(exchange, cls, shards)]


def class_queues(exchange: str, cls: str, shards: int) -> list[str]:
    if shards == 1:
        return [f"{exchange}.{cls}"]
    return [f"{exchange}.{cls}.{shard}" for shard in range(shards)]


def shard_of(symbol: str | None, shards: int) -> int:
    """The shard of a symbol: CRC-32 of its UTF-8 bytes modulo ``shards``; no symbol is shard 0.

    CRC-32 rather than ``hash()``: the same symbol must land in the same shard from any process, any
    Python version and any language (``hash()`` of a str is salted per process).
    """
    if shards == 1 or symbol is None:
        return 0
    return zlib.crc32(symbol.encode()) % shards


def dead_letter_name(exchange: str) -> str:
    """The dead-letter exchange and queue: ``mdq.dead``. Nothing consumes it; operators read it."""
    return f"{exchange}.dead"


def queue_arguments(settings: MdqSettings) -> dict[str, object]:
    return {
        "x-queue-type": "classic",
        "x-message-ttl": settings.mdq_message_ttl_ms,
        "x-max-length": settings.mdq_max_length,
        "x-max-length-bytes": settings.mdq_max_bytes,
        "x-overflow": "drop-head",
        # One consumer per queue at a time keeps per-symbol order; the others wait as standbys.
        "x-single-active-consumer": True,
        # A message a consumer rejects (it cannot be parsed, or the processor failed on it) goes here,
        # never back to the queue: no redelivery loop. Expiry and overflow are not dead-lettered.
        "x-dead-letter-exchange": dead_letter_name(settings.mdq_exchange),
    }


def dead_letter_arguments(settings: MdqSettings) -> dict[str, object]:
    """The dead-letter queue is bounded too: length, age, oldest dropped first."""
    return {
        "x-queue-type": "classic",
        "x-message-ttl": settings.mdq_dead_ttl_ms,
        "x-max-length": settings.mdq_dead_max_length,
        "x-max-length-bytes": settings.mdq_max_bytes,
        "x-overflow": "drop-head",
    }


class TopologyError(Exception):
    """The broker refused a declaration, usually because a queue exists with other arguments."""


async def declare(channel: aio_pika.abc.AbstractChannel, settings: MdqSettings) -> list[str]:
    """Declare the exchange and every queue with its binding; safe to repeat. Returns the queue names.

    A queue that exists with different arguments (another TTL, say) makes RabbitMQ close the channel;
    that becomes a TopologyError naming the queue, since fixing it means deleting the queue by hand.
    """
    import aio_pika
    from aiormq.exceptions import ChannelPreconditionFailed

    names = queue_names(settings.mdq_exchange, settings.mdq_shards)
    try:
        exchange = await channel.declare_exchange(
            settings.mdq_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        dead = dead_letter_name(settings.mdq_exchange)
        dead_exchange = await channel.declare_exchange(dead, aio_pika.ExchangeType.FANOUT, durable=True)
        dead_queue = await channel.declare_queue(
            dead, durable=True, arguments=dead_letter_arguments(settings)
        )
        await dead_queue.bind(dead_exchange)
        arguments = queue_arguments(settings)
        for name in names:
            queue = await channel.declare_queue(name, durable=True, arguments=arguments)
            await queue.bind(exchange, routing_key=name)
    except ChannelPreconditionFailed as exc:
        raise TopologyError(
            f"RabbitMQ refused the MDQ topology ({exc}); a queue or exchange exists with other arguments: "
            "delete it, or use the settings it was declared with"
        ) from None
    return names
