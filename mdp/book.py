"""The market state a processor owns, in memory: one ``SymbolState`` per symbol of its shards.

A queue has one active consumer (``x-single-active-consumer``), so each symbol of a shard has one
writer at a time, and that writer keeps the symbol's state here rather than reading it back from Redis
for every merge: Redis is the cache that readers (WDS, SCP, bots) and the next owner read. What is kept
is what a merge decides with, no more: the (time, sequence) of the newest trade, quote and LULD, the
start of the newest second bar, the day stats document, the running mean of minute volumes, the time of
the last alert per kind, the previous close, and the ``seq`` of each of the symbol's channels.

``Book`` holds them, bounded by ``MDP_MAX_SYMBOLS``: past it the symbols loaded first are dropped (their
state is in Redis and is loaded again on their next event). A symbol the book does not hold is loaded
from Redis before anything is merged into it (``load_commands`` and ``SymbolState.from_replies``: one
round trip for every missing symbol of a group); that is how a replica taking over a shard, after a
start, a failover or a lost connection, continues from where the last owner stopped. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from mdc.names import Names
from mdc.wire import command

#: The channels of a symbol, in the order of ``SymbolState.seq``.
CHANNEL_KINDS = ("trades", "quotes", "bars", "stats", "luld")
TRADES, QUOTES, BARS, STATS, LULD = range(5)
#: Alert kinds with a per-symbol cooldown (``md:alerted``).
ALERT_KINDS = ("new_high", "new_low", "volume_spike", "halt", "resume")

_TQ = re.compile(rb'^{"t":(\d+)(?:,"q":(\d+))?')


def time_seq(raw: bytes | None) -> tuple[int, int] | None:
    """(t, q) of a stored document that starts with ``{"t":T,"q":Q`` (or ``{"t":T``: q is 0)."""
    if not raw:
        return None
    m = _TQ.match(raw)
    if m is None:
        return None
    return int(m[1]), int(m[2] or 0)


class SymbolState:
    __slots__ = (
        "alerted",
        "bar1s_t",
        "halted",
        "luld_tq",
        "names",
        "prev_close",
        "quote_tq",
        "seq",
        "stats",
        "sym",
        "trade_tq",
        "vavg",
    )

    def __init__(self, sym: str) -> None:
        self.sym = sym
        self.seq = [0, 0, 0, 0, 0]  # per CHANNEL_KINDS: the seq of the channel's newest update
        self.trade_tq: tuple[int, int] | None = None
        self.quote_tq: tuple[int, int] | None = None
        self.luld_tq: tuple[int, int] | None = None
        self.halted = False
        self.bar1s_t: int | None = None
        self.stats: dict[str, Any] | None = None  # the md:stats document
        self.vavg = (0.0, 0)  # running mean of minute volumes, minutes seen
        self.alerted: dict[str, int] = {}  # alert kind -> event time of the last one
        self.prev_close: float | None = None  # md:prevclose, for a first day's stats
        self.names: Any = None  # its keys and channels, encoded (mdp.writes.SymbolNames), made on first write

    @classmethod
    def from_replies(cls, sym: str, replies: list[Any]) -> SymbolState:
        """The state from the ``LOAD_REPLIES`` replies of ``load_commands(sym)``."""
        trade, quote, stats, bar1s, luld, seqs, vavg, alerted, prev = replies
        st = cls(sym)
        st.seq = [int(s) if s else 0 for s in seqs]
        st.trade_tq, st.quote_tq, st.luld_tq = time_seq(trade), time_seq(quote), time_seq(luld)
        st.halted = bool(luld) and orjson.loads(luld).get("halted") is True
        second = time_seq(bar1s)
        st.bar1s_t = second[0] if second else None
        st.stats = orjson.loads(stats) if stats else None
        if vavg:
            mean, _, n = vavg.partition(b",")
            st.vavg = (float(mean), int(n or 0))
        st.alerted = {kind: int(t) for kind, t in zip(ALERT_KINDS, alerted, strict=True) if t}
        if prev:
            st.prev_close = float(prev)
        return st


LOAD_REPLIES = 9


def load_commands(names: Names, sym: str) -> bytes:
    """The reads ``SymbolState.from_replies`` takes, RESP-encoded (``LOAD_REPLIES`` replies)."""
    return b"".join((
        command("GET", names.trade(sym)),
        command("GET", names.quote(sym)),
        command("GET", names.stats(sym)),
        command("GET", names.bar_second(sym)),
        command("GET", names.luld(sym)),
        command("HMGET", names.symbol_seq(sym), *(f"{kind}.{sym}" for kind in CHANNEL_KINDS)),
        command("HGET", names.volume_means(), sym),
        command("HMGET", names.alerted(), *(f"{sym}:{kind}" for kind in ALERT_KINDS)),
        command("HGET", names.prev_close(), sym),
    ))  # fmt: skip


class Book:
    """The symbols a processor holds, at most ``max_symbols`` (the first loaded go first)."""

    __slots__ = ("day", "max_symbols", "ranks", "rows", "symbols")

    def __init__(self, max_symbols: int) -> None:
        self.max_symbols = max_symbols
        self.symbols: dict[str, SymbolState] = {}
        self.day: str | None = None  # the newest trading day this processor wrote to ``md:day``
        #: rankings not written yet: ranking key -> {member (a RESP argument): score}, the newest score
        #: of each symbol; at most three per symbol held (change, volume, gap)
        self.ranks: dict[str, dict[bytes, float]] = {}
        #: leaderboard rows not written yet (``Names.leader_rows``): symbol (a RESP argument) -> row JSON
        self.rows: dict[bytes, bytes] = {}

    def __len__(self) -> int:
        return len(self.symbols)

    def missing(self, symbols: set[str]) -> list[str]:
        held = self.symbols
        return [sym for sym in symbols if sym not in held]

    def install(self, states: list[SymbolState]) -> None:
        """Take loaded states, except for symbols held meanwhile (a merge has moved them on since)."""
        held = self.symbols
        for st in states:
            if st.sym not in held:
                held[st.sym] = st

    def trim(self) -> None:
        """Back within the bound, after a merge: the first loaded tenth goes (and is loaded again when
        its symbols come back)."""
        held = self.symbols
        excess = len(held) - self.max_symbols
        if excess > 0:
            for sym in list(held)[: max(excess, self.max_symbols // 10)]:
                del held[sym]

    def clear(self) -> None:
        """Forget everything (a write failed, or the consumer reconnected): it is loaded again."""
        self.symbols.clear()
        self.ranks.clear()
        self.rows.clear()
        self.day = None

    def take_rankings(self) -> tuple[dict[str, dict[bytes, float]], dict[bytes, bytes]]:
        """The pending rankings and rows, for one group's writes; the book's start empty again."""
        ranks, rows = self.ranks, self.rows
        self.ranks, self.rows = {}, {}
        return ranks, rows
