"""One group's writes to Redis, as one transaction already encoded in RESP: what ``merge`` produces and
``mdc.wire.Pipeline`` sends.

Per symbol and group: a SET of each changed document (with its TTL), the sorted-set commands of recent
trades and minute bars, a PUBLISH (SPUBLISH on a Redis Cluster) of each changed channel in the MDC
envelope, and one HSET of its channels' new ``seq``. Per group: one SET per message of its redelivery
marker, the few writes that several replicas share (the halts and alerts feeds, the trading day, plug-in
outputs) in one small script, and, when the service flushes them (at most every 0.2 s), one ZADD per
ranking and one HSET of the leaderboard rows. All between MULTI and EXEC,
so a reader's snapshot (state and ``seq`` in one MULTI/EXEC) always sees a group entirely or not at
all, and a processor killed mid-write leaves nothing half applied. Each command is encoded with one
bytes format operation: building them through redis-py's pipeline cost about 5 us a command, more than
Redis spends running it. On a Redis Cluster, ``by_slot`` splits the same commands per slot, one
MULTI/EXEC each (``mdc.clusterpipe`` sends them; docs/mdp.md, "Redis Cluster").
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.crc import key_slot

from mdc.clusterpipe import command_key, slot_tag
from mdc.envelope import encode_raw
from mdc.names import Names
from mdc.publisher import SIGNAL_RECENT, SIGNAL_TTL_S
from mdc.wire import command

from .book import CHANNEL_KINDS
from .scripts import source

_SET_EX = b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$2\r\nEX\r\n%b"
_SET_PX = b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$1\r\n1\r\n$2\r\nPX\r\n%b"
_BULK = b"$%d\r\n%b\r\n"
_MEMBER = b"$%d\r\n%b\r\n$%d\r\n%b\r\n"  # a sorted set's score and member
_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"


def bulk(value: bytes) -> bytes:
    """``value`` as one RESP argument (a bulk string)."""
    return _BULK % (len(value), value)


#: The scripts of what several replicas write (sent whole with EVAL: inside MULTI a NOSCRIPT would fail
#: alone and the rest of the group would still apply; they run a few times a second at most).
SHARED_SCRIPT = source("shared").encode()
PLUGIN_SCRIPT = source("plugin").encode()


def slot_marker(names: Names, slot: int, group: str) -> str:
    """The key marking that ``slot``'s part of group ``group`` was written (a Redis Cluster): a
    redelivery marker's name, on that slot."""
    return names.done(f"{{{slot_tag(slot)}}}:{group}")


class Context:
    """What every group's writes share: names, bounds and the instance, encoded once."""

    def __init__(
        self, names: Names, instance: str, *, ttl_s: int, feed: int, done_ms: int,
        signal_recent: int = SIGNAL_RECENT, signal_ttl_s: int = SIGNAL_TTL_S, verb: str = "PUBLISH",
    ) -> None:  # fmt: skip
        self.names = names
        self.signal_bounds = {"recent": signal_recent, "ttl": signal_ttl_s}
        self.prefix = names.prefix.encode()
        self.src = orjson.dumps(instance)
        self.ttl = bulk(b"%d" % ttl_s)
        self.feed = feed
        self.done_ms = bulk(b"%d" % done_ms)
        self.verb = verb  # PUBLISH, or SPUBLISH on a Redis Cluster
        self.publish = b"*3\r\n$%d\r\n%b\r\n" % (len(verb), verb.encode()) + b"$%d\r\n%b\r\n$%d\r\n%b\r\n"
        #: a market-wide key, KEYS[1] of the scripts: a cluster runs them on the node of that slot
        self.script_key = names.day().encode()
        self.rows_key = bulk(names.leader_rows().encode())
        self.done_prefix = names.done("").encode()  # a redelivery marker's key starts so

    def script_context(self, sent_ms: int) -> bytes:
        """ARGV[1] of every MDP script (``lua/prelude.lua``): the prefix, the publish time, the instance,
        the publish verb."""
        return orjson.dumps(
            {"p": self.names.prefix, "sent": str(sent_ms), "src": self.src.decode(), "pub": self.verb}
        )


class SymbolNames:
    """A symbol's keys and channels, encoded once and kept with its state (``SymbolState.names``)."""

    __slots__ = ("bar1s", "bars1m", "channels", "luld", "quote", "redis_channels", "seq", "seq_fields",
                 "stats", "sym", "trade", "trades")  # fmt: skip

    def __init__(self, names: Names, sym: str) -> None:
        self.sym = bulk(sym.encode())  # as a RESP argument
        self.trade, self.trades = names.trade(sym).encode(), names.trades(sym).encode()
        self.quote, self.stats = names.quote(sym).encode(), names.stats(sym).encode()
        self.bar1s, self.bars1m = names.bar_second(sym).encode(), names.bars_minute(sym).encode()
        self.luld = names.luld(sym).encode()
        #: per CHANNEL_KINDS: the channel, its Redis name, its md:seq field as a RESP argument
        self.channels = [f"{kind}.{sym}".encode() for kind in CHANNEL_KINDS]
        self.redis_channels = [names.redis_channel(c.decode()).encode() for c in self.channels]
        self.seq_fields = [bulk(c) for c in self.channels]
        self.seq = bulk(names.symbol_seq(sym).encode())  # the hash of their seqs, as a RESP argument


class Writes:
    """The commands of one group, in order; ``transaction()`` wraps them in MULTI/EXEC."""

    __slots__ = (
        "_ctx",
        "commands",
        "day",
        "feeds",
        "plugin",
        "publishes",
        "ranks",
        "rows",
        "sent",
        "sent_ms",
        "seqs",
    )

    def __init__(self, ctx: Context, sent_ms: int) -> None:
        self._ctx = ctx
        self.sent_ms, self.sent = sent_ms, b"%d" % sent_ms
        self.commands: list[bytes] = []
        #: per symbol's seq hash (a RESP argument): HSET arguments, a channel and its seq per entry
        self.seqs: dict[bytes, list[bytes]] = {}
        self.ranks: dict[str, list[bytes]] = {}  # ranking key -> ZADD arguments, a score and member per entry
        self.rows: list[bytes] = []  # HSET arguments of the leaderboard rows, a symbol and its row per entry
        self.feeds: list[list[Any]] = []  # [feed, type, t, member JSON] for the shared script
        self.day: str | None = None  # a newer trading day for md:day
        self.plugin: list[list[Any]] = []  # plug-in outputs (mdp/lua/plugin.lua records)
        self.publishes = 0

    def set_ex(self, key: bytes, value: bytes) -> None:
        """SET with the state TTL."""
        self.commands.append(_SET_EX % (len(key), key, len(value), value, self._ctx.ttl))

    def command(self, *args: bytes | str | int) -> None:
        self.commands.append(command(*args))

    def publish(
        self, names: SymbolNames, kind: int, type: bytes, seq: int, ts: int, data: bytes, resync: bool = False
    ) -> None:
        """``data`` (JSON) on the symbol's channel ``kind`` (``CHANNEL_KINDS``) in the MDC envelope, as
        update ``seq`` of the channel (``resync``: the channel's whole state, after a hydration)."""
        envelope = encode_raw(type, names.channels[kind], seq, ts, self.sent, self._ctx.src, data, resync)
        rc = names.redis_channels[kind]
        self.commands.append(self._ctx.publish % (len(rc), rc, len(envelope), envelope))
        s = b"%d" % seq
        fields = self.seqs.get(names.seq)
        if fields is None:
            fields = self.seqs[names.seq] = []
        fields.append(names.seq_fields[kind] + _BULK % (len(s), s))
        self.publishes += 1

    def sorted_set(self, key: bytes, members: list[tuple[int, bytes]], keep: int) -> None:
        """ZADD ``members`` (score, JSON), then trim to the newest ``keep`` and renew the TTL."""
        k = _BULK % (len(key), key)
        args = []
        for score, json in members:
            sc = b"%d" % score
            args.append(_MEMBER % (len(sc), sc, len(json), json))
        self.commands.append(b"*%d\r\n$4\r\nZADD\r\n%b%b" % (2 * len(args) + 2, k, b"".join(args)))
        keep_arg = b"%d" % -(keep + 1)
        self.commands.append(
            b"*4\r\n$15\r\nZREMRANGEBYRANK\r\n%b$1\r\n0\r\n$%d\r\n%b\r\n" % (k, len(keep_arg), keep_arg)
        )
        self.commands.append(b"*3\r\n$6\r\nEXPIRE\r\n%b%b" % (k, self._ctx.ttl))

    def rankings(self, ranks: dict[str, dict[bytes, float]], rows: dict[bytes, bytes] | None = None) -> None:
        """Every pending ranking score (``Book.ranks``: key -> member, a RESP argument -> score) and
        leaderboard row (``Book.rows``: member -> row JSON)."""
        for key, members in ranks.items():
            args = self.ranks.setdefault(key, [])
            for member, score in members.items():
                sc = repr(score).encode()
                args.append(_BULK % (len(sc), sc) + member)
        for member, row in (rows or {}).items():
            self.rows.append(member + _BULK % (len(row), row))

    def feed(self, name: str, type: str, t: int, member: bytes) -> None:
        self.feeds.append([name, type, t, member.decode()])

    def done(self, message_id: str) -> None:
        """The redelivery marker of a message, in the same transaction as its writes."""
        k = self._ctx.names.done(message_id).encode()
        self.commands.append(_SET_PX % (len(k), k, self._ctx.done_ms))

    def transaction(self) -> tuple[bytes, int]:
        """The whole group as one MULTI/EXEC: the payload and how many replies it gets."""
        out = [_MULTI, *self.commands]
        n = len(self.commands) + self._group_writes(out)
        out.append(_EXEC)
        return b"".join(out), n + 2

    def by_slot(self, group: str | None = None) -> tuple[dict[int, list[bytes]], list[bytes]]:
        """The group for a Redis Cluster (``mdc.clusterpipe``): its commands by the slot of their key,
        each slot one MULTI/EXEC there; and the redelivery markers apart, to be written last. With a
        ``group`` id, each slot's transaction also sets that slot's marker of the group (``slot_marker``):
        after a failure part way, a retry reads which slots were written."""
        out = list(self.commands)
        self._group_writes(out)
        marker = self._ctx.done_prefix
        slots: dict[int, list[bytes]] = {}
        last: list[bytes] = []
        for cmd in out:
            key = command_key(cmd)
            if key.startswith(marker):
                last.append(cmd)
                continue
            slot = key_slot(key)
            cmds = slots.get(slot)
            if cmds is None:
                cmds = slots[slot] = []
            cmds.append(cmd)
        if group is not None:
            ttl = self._ctx.done_ms
            for slot, cmds in slots.items():
                k = slot_marker(self._ctx.names, slot, group).encode()
                cmds.append(_SET_PX % (len(k), k, ttl))
        return slots, last

    def _group_writes(self, out: list[bytes]) -> int:
        """Append the writes gathered over the group (rankings, rows, seqs, the scripts) to ``out``;
        how many commands."""
        ctx = self._ctx
        n = 0
        for key, args in self.ranks.items():
            k = key.encode()
            out.append(b"*%d\r\n$4\r\nZADD\r\n%b%b" % (2 * len(args) + 2, bulk(k), b"".join(args)))
            out.append(command("EXPIRE", k, 2 * 86400))
            n += 2
        if self.rows:
            rows = self.rows
            out.append(b"*%d\r\n$4\r\nHSET\r\n%b%b" % (2 * len(rows) + 2, ctx.rows_key, b"".join(rows)))
            out.append(b"*3\r\n$6\r\nEXPIRE\r\n%b$6\r\n172800\r\n" % ctx.rows_key)
            n += 2
        for key, fields in self.seqs.items():
            out.append(b"*%d\r\n$4\r\nHSET\r\n%b%b" % (2 * len(fields) + 2, key, b"".join(fields)))
        n += len(self.seqs)
        if self.feeds or self.day:
            shared = {"feeds": self.feeds, "day": self.day, "feed_length": ctx.feed}
            out.append(self._eval(SHARED_SCRIPT, shared))
            n += 1
        if self.plugin:
            out.append(self._eval(PLUGIN_SCRIPT, {**self._ctx.signal_bounds, "records": self.plugin}))
            n += 1
        return n

    def _eval(self, script: bytes, args: Any) -> bytes:
        ctx = self._ctx
        context = ctx.script_context(self.sent_ms)
        return command("EVAL", script, 1, ctx.script_key, context, orjson.dumps(args))
