"""Reading market state: what WDS, SCP, ``mdpipe inspect`` and bots use, never raw key names.

``await Reader(redis, Names(prefix)).snapshot("stats.AAPL")`` returns the channel's current state and
the ``seq`` of the last update it reflects, read in one MULTI/EXEC: the processors write a group's
state, its ``seq`` and its updates in one MULTI/EXEC too, so the state and the sequence number always
agree. A subscriber that keeps updates with a higher ``seq`` and drops the others stitches snapshot and
stream with no gap and no going back.

What a snapshot's ``data`` is, per channel:

- ``trades.SYM``: ``{"last": trade, "recent": [trade, ...]}`` (oldest first)
- ``quotes.SYM``: the quote; ``stats.SYM``: the day stats; ``luld.SYM``: bands and halt state
- ``bars.SYM``: ``{"second": bar, "minute": [bar, ...]}`` (oldest first): the live minute bars merged with
  the chart history (``Names.history``, the vendor's bars of the day and the day before) by start
- ``leaders.BOARD``: ``{"board", "day", "rows": [...]}``, as last published
- ``halts``: ``{"halted": {SYM: luld, ...}, "recent": [halt or resume, ...]}``
- ``alerts``: ``{"recent": [alert, ...]}``
- ``signals.*``: ``{"recent": [update, ...]}`` (oldest first): the newest updates published on it, whole
  envelopes, as ``mdc.publisher`` and the plug-ins keep them; its ``seq`` is the channel's own counter.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from .history import merge_minutes
from .names import BOARDS, Names, is_known_channel, signal_owner
from .topology import key_slot

MAX_SCAN = 10_000  # heartbeats listed at most


@dataclass(frozen=True, slots=True)
class Snapshot:
    channel: str
    seq: int  # of the newest update reflected; 0 when nothing was published yet
    data: Any  # None when there is no state


class UnknownChannel(ValueError):
    """Not a channel the processors publish."""


def _json(raw: bytes | None) -> Any:
    return None if raw is None else orjson.loads(raw)


def _jsons(raws: list[bytes]) -> list[Any]:
    return [orjson.loads(r) for r in raws]


def _bars(replies: list[Any], minute_bars: int) -> dict[str, Any] | None:
    """A ``bars.SYM`` snapshot from (second bar, live minute bars, history): None when there is none."""
    second, live, history = replies
    if second is None and not live and not history:
        return None
    return {"second": _json(second), "minute": merge_minutes(_jsons(history), _jsons(live), minute_bars)}


class _SlotTransactions:
    """A snapshot's reads on a Redis Cluster, where one MULTI/EXEC holds the keys of one slot only: the
    reads are queued as on a pipeline (``get``, ``zrange``, ...: the key first), run as one transaction per
    slot (concurrently: each slot's on its own master), and their replies come back in the order queued.
    Each slot is read atomically; a channel whose keys span slots is not (a symbol's keys share one)."""

    def __init__(self, redis: RedisCluster) -> None:
        self.redis = redis
        self.queued: list[tuple[int, str, tuple[Any, ...]]] = []  # (slot, method, args)

    def __getattr__(self, method: str) -> Any:
        def queue(key: str, *args: Any) -> None:
            self.queued.append((key_slot(key), method, (key, *args)))

        return queue

    async def execute(self) -> list[Any]:
        per_slot: dict[int, list[int]] = {}
        for i, (slot, _, _) in enumerate(self.queued):
            per_slot.setdefault(slot, []).append(i)

        async def one(indexes: list[int]) -> list[Any]:
            # redis-py 8.2's cluster pipeline: transaction=True is one MULTI/EXEC on the slot's master,
            # following MOVED and a failover by itself; keys of two slots raise CrossSlotTransactionError
            async with self.redis.pipeline(transaction=True) as pipe:
                for i in indexes:
                    _, method, args = self.queued[i]
                    getattr(pipe, method)(*args)
                return await pipe.execute()

        replies: list[Any] = [None] * len(self.queued)
        results = await asyncio.gather(*(one(indexes) for indexes in per_slot.values()))
        for indexes, result in zip(per_slot.values(), results, strict=True):
            for i, reply in zip(indexes, result, strict=True):
                replies[i] = reply
        return replies


class Reader:
    def __init__(self, redis: Redis, names: Names) -> None:
        self.redis, self.names = redis, names

    async def snapshot(self, channel: str, *, minute_bars: int = 0) -> Snapshot:
        """The current state of ``channel``; ``minute_bars`` > 0 limits ``bars.SYM`` to the newest ones."""
        return (await self.snapshots([channel], minute_bars=minute_bars))[0]

    async def snapshots(self, channels: list[str], *, minute_bars: int = 0) -> list[Snapshot]:
        """Several snapshots in one round trip (one MULTI/EXEC; on a cluster, one per slot)."""
        pipe = (
            _SlotTransactions(self.redis)
            if isinstance(self.redis, RedisCluster)
            else self.redis.pipeline(transaction=True)
        )
        decoders = []
        for channel in channels:
            decoders.append(self._queue(pipe, channel, minute_bars))
            if signal_owner(channel):
                pipe.get(self.names.signal_seq(channel))  # a signals.* channel's seq is its own key
            else:
                pipe.hget(self.names.seq_key(channel), channel)
        replies = await pipe.execute()
        out, i = [], 0
        for channel, (count, decode) in zip(channels, decoders, strict=True):
            part = replies[i : i + count]
            seq = replies[i + count]
            i += count + 1
            out.append(Snapshot(channel, int(seq) if seq else 0, decode(part)))
        return out

    def _queue(self, pipe: Any, channel: str, minute_bars: int) -> tuple[int, Any]:
        """Queue the reads of ``channel`` on ``pipe``; returns (replies used, decoder of them)."""
        if not is_known_channel(channel):
            raise UnknownChannel(channel)
        n = self.names
        kind, _, rest = channel.partition(".")
        if kind == "trades":
            pipe.get(n.trade(rest))
            pipe.zrange(n.trades(rest), 0, -1)
            return 2, lambda r: None if r[0] is None else {"last": _json(r[0]), "recent": _jsons(r[1])}
        if kind in ("quotes", "stats", "luld"):
            key = {"quotes": n.quote, "stats": n.stats, "luld": n.luld}[kind](rest)
            pipe.get(key)
            return 1, lambda r: _json(r[0])
        if kind == "bars":
            pipe.get(n.bar_second(rest))
            pipe.zrange(n.bars_minute(rest), -minute_bars if minute_bars > 0 else 0, -1)
            pipe.zrange(n.history(rest), 0, -1)
            return 3, lambda r: _bars(r, minute_bars)
        if kind == "leaders":
            pipe.get(n.board(rest))
            return 1, lambda r: _json(r[0])
        if kind == "halts":
            pipe.hgetall(n.halted())
            pipe.zrange(n.feed("halts"), 0, -1)
            return 2, lambda r: {
                "halted": {k.decode(): orjson.loads(v) for k, v in r[0].items()},
                "recent": _jsons(r[1]),
            }
        if kind == "alerts":
            pipe.zrange(n.feed("alerts"), 0, -1)
            return 1, lambda r: {"recent": _jsons(r[0])}
        pipe.lrange(n.signal_recent(channel), 0, -1)  # signals.*: newest first
        return 1, lambda r: {"recent": _jsons(r[0][::-1])}

    # -- conveniences -----------------------------------------------------------------------------------

    async def stats(self, sym: str) -> dict[str, Any] | None:
        return _json(await self.redis.get(self.names.stats(sym)))

    async def quote(self, sym: str) -> dict[str, Any] | None:
        return _json(await self.redis.get(self.names.quote(sym)))

    async def minute_bars(self, sym: str, n: int = 0) -> list[dict[str, Any]]:
        """The newest ``n`` minute bars (all kept when 0), oldest first."""
        return _jsons(await self.redis.zrange(self.names.bars_minute(sym), -n if n > 0 else 0, -1))

    async def leaderboard(self, board: str) -> dict[str, Any] | None:
        if board not in BOARDS:
            raise UnknownChannel(f"leaders.{board}")
        return _json(await self.redis.get(self.names.board(board)))

    async def halted(self) -> dict[str, Any]:
        halted = await self.redis.hgetall(self.names.halted())
        return {k.decode(): orjson.loads(v) for k, v in halted.items()}

    async def alerts(self, n: int = 50) -> list[dict[str, Any]]:
        """The newest ``n`` alerts, newest first."""
        if n < 1:
            return []
        return _jsons(await self.redis.zrevrange(self.names.feed("alerts"), 0, n - 1))

    async def raw(self, ev: str, n: int = 20) -> list[Any]:
        """The newest raw events of type ``ev`` (imbalances, values, unknown), newest first."""
        if n < 1:
            return []
        return _jsons(await self.redis.lrange(self.names.raw(ev), 0, n - 1))

    async def day(self) -> str | None:
        raw = await self.redis.get(self.names.day())
        return raw.decode() if raw else None

    async def heartbeats(self) -> list[dict[str, Any]]:
        """Every live component instance's heartbeat, by component then instance."""
        keys = []
        async for key in self.redis.scan_iter(match=self.names.heartbeats(), count=500):
            keys.append(key)
            if len(keys) >= MAX_SCAN:
                break
        if not keys:
            return []
        mget = getattr(self.redis, "mget_nonatomic", self.redis.mget)  # a cluster's keys span slots
        docs = [_json(raw) for raw in await mget(keys)]
        return sorted((d for d in docs if d), key=lambda d: (d.get("component", ""), d.get("instance", "")))
