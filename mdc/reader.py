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

Pure core: ``plan`` (every read of a set of channels, as ``(method, key, args)``, and their decoders),
``assemble`` (snapshots from the replies), ``from_wire`` (hiredis's replies as redis-py's). Thin I/O, one
of three: one Redis, a redis-py pipeline; a cluster with a ``ClusterPipeline`` (``Reader(...,
cluster=...)``, what WDS and SCP run), per-slot MULTI/EXEC on ``mdc.wire``; a bare ``RedisCluster``,
redis-py's per-slot transactions, which block the event loop (for tools and tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hiredis
import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from .clusterpipe import ClusterChanged, ClusterPipeline
from .history import merge_minutes
from .names import BOARDS, Names, is_known_channel, signal_owner
from .topology import key_slot
from .wire import command

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


# -- pure core: what a snapshot reads, and what it makes of the replies ---------------------------------

#: One read: (redis-py pipeline method, key, arguments). The same tuple is queued on a redis-py pipeline
#: (``getattr(pipe, method)(key, *args)``) or sent as RESP (``command(method.upper(), key, *args)``).
Read = tuple[str, str, tuple[Any, ...]]
Decode = Callable[[list[Any]], Any]


def channel_reads(names: Names, channel: str, minute_bars: int) -> tuple[list[Read], Decode]:
    """The reads of ``channel``'s state (its ``seq`` not included) and the decoder of their replies, as
    redis-py returns them (bytes, None, lists; ``hgetall`` a dict)."""
    if not is_known_channel(channel):
        raise UnknownChannel(channel)
    n = names
    kind, _, rest = channel.partition(".")
    if kind == "trades":
        reads = [("get", n.trade(rest), ()), ("zrange", n.trades(rest), (0, -1))]
        return reads, lambda r: None if r[0] is None else {"last": _json(r[0]), "recent": _jsons(r[1])}
    if kind in ("quotes", "stats", "luld"):
        key = {"quotes": n.quote, "stats": n.stats, "luld": n.luld}[kind](rest)
        return [("get", key, ())], lambda r: _json(r[0])
    if kind == "bars":
        first = -minute_bars if minute_bars > 0 else 0
        reads = [
            ("get", n.bar_second(rest), ()),
            ("zrange", n.bars_minute(rest), (first, -1)),
            ("zrange", n.history(rest), (0, -1)),
        ]
        return reads, lambda r: _bars(r, minute_bars)
    if kind == "leaders":
        return [("get", n.board(rest), ())], lambda r: _json(r[0])
    if kind == "halts":
        reads = [("hgetall", n.halted(), ()), ("zrange", n.feed("halts"), (0, -1))]
        return reads, lambda r: {
            "halted": {k.decode(): orjson.loads(v) for k, v in r[0].items()},
            "recent": _jsons(r[1]),
        }
    if kind == "alerts":
        return [("zrange", n.feed("alerts"), (0, -1))], lambda r: {"recent": _jsons(r[0])}
    # signals.*: newest first
    return [("lrange", n.signal_recent(channel), (0, -1))], lambda r: {"recent": _jsons(r[0][::-1])}


def seq_read(names: Names, channel: str) -> Read:
    if signal_owner(channel):
        return ("get", names.signal_seq(channel), ())  # a signals.* channel's seq is its own key
    return ("hget", names.seq_key(channel), (channel,))


def plan(names: Names, channels: list[str], minute_bars: int) -> tuple[list[Read], list[tuple[int, Decode]]]:
    """Every read of ``channels``' snapshots, in order (each channel's state, then its ``seq``), and per
    channel (replies of its state, decoder)."""
    reads: list[Read] = []
    decoders: list[tuple[int, Decode]] = []
    for channel in channels:
        state, decode = channel_reads(names, channel, minute_bars)
        reads += state
        reads.append(seq_read(names, channel))
        decoders.append((len(state), decode))
    return reads, decoders


def assemble(channels: list[str], decoders: list[tuple[int, Decode]], replies: list[Any]) -> list[Snapshot]:
    """The snapshots of ``channels`` from the replies of ``plan``'s reads, in order."""
    out, i = [], 0
    for channel, (count, decode) in zip(channels, decoders, strict=True):
        part = replies[i : i + count]
        seq = replies[i + count]
        i += count + 1
        out.append(Snapshot(channel, int(seq) if seq else 0, decode(part)))
    return out


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


#: hiredis's reply where it differs from redis-py's: HGETALL is a flat list, not a dict
_FROM_WIRE: dict[str, Callable[[Any], Any]] = {"hgetall": _pairs}


def slot_indexes(reads: list[Read]) -> dict[int, list[int]]:
    """Indexes of ``reads`` by the slot of their key, in order within a slot: one MULTI/EXEC each."""
    out: dict[int, list[int]] = {}
    for i, (_, key, _) in enumerate(reads):
        out.setdefault(key_slot(key), []).append(i)
    return out


def from_wire(reads: list[Read], slots: dict[int, list[int]], execs: dict[int, list[Any]]) -> list[Any]:
    """Each slot's EXEC reply (hiredis) put back in the order of ``reads``, as redis-py would return them;
    an error among them raised as redis-py's ``ResponseError``, as its pipeline does."""
    replies: list[Any] = [None] * len(reads)
    for slot, indexes in slots.items():
        for i, reply in zip(indexes, execs[slot], strict=True):
            if isinstance(reply, hiredis.ReplyError):
                raise ResponseError(f"{reads[i][0].upper()} {reads[i][1]}: {reply}")
            convert = _FROM_WIRE.get(reads[i][0])
            replies[i] = reply if convert is None else convert(reply)
    return replies


# -- I/O ----------------------------------------------------------------------------------------------


async def _on_redis(redis: Redis, reads: list[Read]) -> list[Any]:
    """One Redis: the reads in one MULTI/EXEC of a redis-py pipeline."""
    pipe = redis.pipeline(transaction=True)
    for method, key, args in reads:
        getattr(pipe, method)(key, *args)
    return await pipe.execute()


async def _on_redis_py_cluster(redis: RedisCluster, reads: list[Read]) -> list[Any]:
    """A cluster through redis-py 8.2: one ``pipeline(transaction=True)`` per slot (it follows MOVED and
    a failover by itself). Its asyncio transactions run each command in a thread started and joined on
    the caller's loop, which stalls the loop meanwhile (bench/cluster_snapshots.py): for tools and tests;
    a server passes ``cluster=`` (``_on_cluster``)."""
    slots = slot_indexes(reads)

    async def one(indexes: list[int]) -> list[Any]:
        async with redis.pipeline(transaction=True) as pipe:
            for i in indexes:
                method, key, args = reads[i]
                getattr(pipe, method)(key, *args)
            return await pipe.execute()

    results = await asyncio.gather(*(one(indexes) for indexes in slots.values()))
    replies: list[Any] = [None] * len(reads)
    for indexes, result in zip(slots.values(), results, strict=True):
        for i, reply in zip(indexes, result, strict=True):
            replies[i] = reply
    return replies


async def _on_cluster(cluster: ClusterPipeline, reads: list[Read]) -> list[Any]:
    """A cluster on our own wire: one MULTI/EXEC per slot (``ClusterPipeline.transact``), every master
    at once, nothing blocking the loop. Once more after a ``ClusterChanged`` (a failover, a slot moved):
    the pipeline has forgotten the topology and discovers it again; a second one is raised."""
    slots = slot_indexes(reads)
    payloads = {
        slot: [command(reads[i][0].upper(), reads[i][1], *reads[i][2]) for i in indexes]
        for slot, indexes in slots.items()
    }
    try:
        execs = await cluster.transact(payloads)
    except ClusterChanged:
        execs = await cluster.transact(payloads)
    return from_wire(reads, slots, execs)


class Reader:
    """``Reader(redis, names)``: ``redis`` a redis-py asyncio ``Redis`` or ``RedisCluster``. On a cluster,
    a server passes ``cluster=ClusterPipeline(...)`` too: snapshots then go through it (see
    ``_on_cluster``); the conveniences below are single-key commands and stay on ``redis``."""

    def __init__(
        self, redis: Redis | RedisCluster, names: Names, *, cluster: ClusterPipeline | None = None
    ) -> None:
        self.redis, self.names, self.cluster = redis, names, cluster

    async def snapshot(self, channel: str, *, minute_bars: int = 0) -> Snapshot:
        """The current state of ``channel``; ``minute_bars`` > 0 limits ``bars.SYM`` to the newest ones."""
        return (await self.snapshots([channel], minute_bars=minute_bars))[0]

    async def snapshots(self, channels: list[str], *, minute_bars: int = 0) -> list[Snapshot]:
        """Several snapshots in one round trip (one MULTI/EXEC; on a cluster, one per slot)."""
        reads, decoders = plan(self.names, channels, minute_bars)
        if self.cluster is not None:
            replies = await _on_cluster(self.cluster, reads)
        elif isinstance(self.redis, RedisCluster):
            replies = await _on_redis_py_cluster(self.redis, reads)
        else:
            replies = await _on_redis(self.redis, reads)
        return assemble(channels, decoders, replies)

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
