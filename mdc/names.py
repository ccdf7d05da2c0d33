"""Every Redis key and pub/sub channel name mdpipe uses, defined once (see docs/mdc.md).

Two families:

- the listener's control names (``mdl:<market>:...``), one set per market;
- the market state the processors write and WDS, SCP and bots read, under ``MDC_PREFIX`` (``md``):
  keys such as ``md:stats:{AAPL}`` and channels such as ``trades.AAPL``. A *channel* is the name clients
  use (``trades.AAPL``); on Redis it is published as ``<prefix>:<channel>``, a symbol's with the symbol
  as a hash tag as its keys (``md:trades.{AAPL}``: one slot on a Redis Cluster), so
  one Redis can carry several markets under several prefixes.

Values are JSON (orjson) unless the table in docs/mdc.md says otherwise. The Lua scripts in ``mdp/lua``
build the same names from the prefix; a test checks that they agree with this module.
"""

from __future__ import annotations

import re

# -- the listener's control names ------------------------------------------------------------------


def mdl_desired(market: str) -> str:
    """Key, no TTL, written by the control plane: ``{"subscriptions": "T.*,Q.AAPL", "paused": false}``.

    The desired state of the listener of ``market``; it wins over MASSIVE_SUBSCRIPTIONS at start.
    """
    return f"mdl:{market}:desired"


def mdl_control(market: str) -> str:
    """Channel the listener of ``market`` listens on: ``{"action": "reload"}`` (re-read the desired
    state) or ``{"action": "reconnect"}`` (drop the vendor connection and connect again)."""
    return f"mdl:{market}:control"


def mdl_status(market: str) -> str:
    """Key, TTL ``MDL_STATUS_TTL_S``, refreshed by the running listener: what it applied and how it is."""
    return f"mdl:{market}:status"


MDL_STATUS_TTL_S = 10


def mdl_lease(market: str) -> str:
    """Key, TTL ``MDL_LEASE_TTL_S``, held by the one listener of ``market`` that may connect to the
    vendor: ``<random token> <instance>``; taken with SET NX PX, renewed and released only by its holder
    (``mdl.lease``)."""
    return f"mdl:{market}:lease"


# -- the control plane's names ---------------------------------------------------------------------


def scp_session(session_id: str) -> str:
    """Key, TTL ``SCP_SESSION_TTL_S``: a logged-in browser session (the cookie holds only its id), so a
    logout or a disabled user ends it on every SCP worker at once."""
    return f"scp:session:{session_id}"


def scp_login_failures(who: str) -> str:
    """Key, TTL 60 s: failed logins in the current minute of ``who`` (``ip:ADDRESS``, or ``pair:HASH`` of
    an address and an e-mail)."""
    return f"scp:login:{who}"


def scp_limit(what: str) -> str:
    """Key, TTL 60 s: events in the current minute of ``what`` (``wds_token:USER_ID``: WDS tokens minted)."""
    return f"scp:limit:{what}"


# -- market state ------------------------------------------------------------------------------------

#: Per-symbol channels, ``<kind>.<SYMBOL>``, and what their updates carry (``type`` in the envelope).
SYMBOL_CHANNELS: dict[str, tuple[str, ...]] = {
    "trades": ("trades",),  # the trades of one processed batch, oldest first
    "quotes": ("quote",),  # the newest NBBO
    "bars": ("bar.1s", "bar.1m"),  # a second bar, a minute bar
    "stats": ("stats",),  # the day stats after the batch
    "luld": ("luld",),  # the newest LULD bands and halt state
}
#: Leaderboards: ``leaders.<board>``, type ``leaders``.
BOARDS: tuple[str, ...] = ("gainers", "losers", "volume", "gappers")
#: Feeds: one channel each for every symbol. ``halts``: types ``halt``, ``resume``; ``alerts``: ``alert``.
FEEDS: tuple[str, ...] = ("halts", "alerts")
#: Plug-in processors and services outside the pipeline (``mdc.publisher``) publish under
#: ``signals.<name>`` (and ``signals.<name>.<suffix>``, a symbol say); a name is one service's.
SIGNALS = "signals"
SIGNAL_NAME_RE = re.compile(r"[a-z0-9_]{1,40}")

#: What a symbol may be made of (options ``O:SPY251219C00650000``, crypto ``X:BTCUSD``, forex ``C:EUR-USD``,
#: ``BRK.B``). Names are built from it by concatenation, here and in Lua, so nothing else may enter.
SYMBOL_RE = re.compile(r"[A-Za-z0-9.:/_^-]{1,64}")
CHANNEL_RE = re.compile(r"[A-Za-z0-9.:/_^-]{1,200}")
#: A subscription target holding one of these is a Redis glob pattern (``trades.*``), else a channel.
GLOB_RE = re.compile(r"[*?\[]")
PATTERN_RE = re.compile(r"[A-Za-z0-9.:/_^*?\[\]!\\-]{1,200}")

HEARTBEAT_TTL_S = 15
HEARTBEAT_EVERY_S = 5.0


def valid_symbol(sym: object) -> bool:
    return isinstance(sym, str) and SYMBOL_RE.fullmatch(sym) is not None


class Names:
    """The market-state names under one prefix. ``Names("md").stats("AAPL") == "md:stats:{AAPL}"``: every
    key and channel of a symbol carries it as a hash tag, so that on a Redis Cluster they share a slot."""

    __slots__ = ("g", "prefix")

    def __init__(self, prefix: str = "md") -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,50}", prefix):
            raise ValueError(f"invalid MDC prefix {prefix!r}")
        self.prefix = prefix
        #: the market-wide names' stem, tagged with the prefix (``md:{md}``): the feeds, boards, rankings,
        #: day and signals that one script or transaction touches together share one slot on a cluster
        self.g = f"{prefix}:{{{prefix}}}"

    # channels: the Redis name of a client-facing channel, and back. A symbol's channel carries the
    # symbol as a hash tag, as its keys do (``md:stats.{AAPL}`` beside ``md:stats:{AAPL}``): on a Redis
    # Cluster a symbol's state, its updates and their sharded channel live on one node (docs/cluster.md);
    # to a single Redis the braces are plain text.
    def redis_channel(self, channel: str) -> str:
        """``stats.AAPL`` -> ``md:stats.{AAPL}``; ``leaders.volume`` -> ``md:{md}:leaders.volume`` (a
        market-wide channel is tagged as the market-wide keys its script writes with it). A glob pattern
        is tagged the same way (``trades.*`` -> ``md:trades.{*}``, which matches every symbol's;
        ``signals.*`` -> ``md:{md}:signals.*``); one whose kind is a pattern itself (``*``) is left as
        it is (``md:*`` matches every channel)."""
        kind, dot, rest = channel.partition(".")
        if dot and kind in SYMBOL_CHANNELS:
            return f"{self.prefix}:{kind}.{{{rest}}}"
        if GLOB_RE.search(kind):
            return f"{self.prefix}:{channel}"
        return f"{self.g}:{channel}"

    def channel_of(self, redis_channel: str | bytes) -> str:
        """The client-facing name of a Redis channel (or pattern): ``md:stats.{AAPL}`` -> ``stats.AAPL``."""
        if isinstance(redis_channel, bytes):
            redis_channel = redis_channel.decode()
        name = redis_channel[len(self.prefix) + 1 :]
        tag = f"{{{self.prefix}}}:"
        if name.startswith(tag):
            return name[len(tag) :]
        kind, tagged, rest = name.partition(".{")
        if tagged and rest.endswith("}") and kind in SYMBOL_CHANNELS:
            return f"{kind}.{rest[:-1]}"
        return name

    # per-symbol state (string keys holding JSON, TTL MDC_STATE_TTL_S)
    def trade(self, sym: str) -> str:
        """The newest trade: ``{"t","q","p","s","x","c","i"}`` (and ``_st``, the emulator's send stamp)."""
        return f"{self.prefix}:trade:{{{sym}}}"

    def trades(self, sym: str) -> str:
        """Sorted set of recent trades (member: trade JSON, score: ``t``), newest MDC_RECENT_TRADES kept."""
        return f"{self.prefix}:trades:{{{sym}}}"

    def quote(self, sym: str) -> str:
        """The newest NBBO: ``{"t","q","bp","bs","bx","ap","as","ax","spread","mid"}`` (and ``_st``)."""
        return f"{self.prefix}:quote:{{{sym}}}"

    def stats(self, sym: str) -> str:
        """Day stats: last, open, high, low, volume, trades, vwap, prev_close, change, change_pct, gap_pct."""
        return f"{self.prefix}:stats:{{{sym}}}"

    def bar_second(self, sym: str) -> str:
        """The newest second bar."""
        return f"{self.prefix}:bar1s:{{{sym}}}"

    def bars_minute(self, sym: str) -> str:
        """Sorted set of minute bars (member: bar JSON, score: start ``t``), newest MDC_MINUTE_BARS kept."""
        return f"{self.prefix}:bars1m:{{{sym}}}"

    def luld(self, sym: str) -> str:
        """The newest LULD bands and halt state: ``{"t","q","upper","lower","i","halted"}``."""
        return f"{self.prefix}:luld:{{{sym}}}"

    # chart history, from the vendor's REST API (fetched on a first ``bars.SYM`` request, mdc.historyfetch)
    def history(self, sym: str) -> str:
        """Sorted set of the minute bars of the day and the previous trading day, as ``bars_minute``
        holds them (member: bar JSON, score: start), newest MDC_HISTORY_BARS, TTL MDC_HISTORY_TTL_S."""
        return f"{self.prefix}:history:{{{sym}}}"

    def history_miss(self, sym: str) -> str:
        """The vendor had no bars of ``sym`` (``unknown``) or failed (``failed``): no fetch until it
        expires (MDC_HISTORY_MISS_TTL_S, or the failure's backoff)."""
        return f"{self.prefix}:history-miss:{{{sym}}}"

    def history_lock(self, sym: str) -> str:
        """Held by the one process fetching ``sym``'s history (short TTL); the others wait for it."""
        return f"{self.prefix}:history-lock:{{{sym}}}"

    def history_requests(self) -> str:
        """List of symbols whose history gateways without the vendor key ask for (pushed left, popped
        right by the processors), bounded and short-lived."""
        return f"{self.prefix}:history-requests"

    def history_server(self) -> str:
        """A process serving ``history_requests`` is there: its REST side's status (``{"status",
        "instance"}``), short TTL, rewritten while it serves."""
        return f"{self.prefix}:history-server"

    # market-wide state
    def halted(self) -> str:
        """Hash: symbol -> LULD JSON of every symbol halted now."""
        return f"{self.g}:halted"

    def feed(self, name: str) -> str:
        """Sorted set behind the ``halts`` or ``alerts`` channel (score: event time), MDC_FEED_LENGTH kept."""
        return f"{self.g}:feed:{name}"

    def day(self) -> str:
        """The newest trading day seen (``2026-11-20``); leaderboards follow it."""
        return f"{self.g}:day"

    def ranking(self, day: str, measure: str) -> str:
        """Sorted set symbol -> ``change`` (percent), ``volume`` or ``gap`` (absolute percent), per day."""
        return f"{self.g}:rank:{day}:{measure}"

    def board(self, board: str) -> str:
        """The last published rows of leaderboard ``board``: what ``leaders.<board>`` last carried."""
        return f"{self.g}:board:{board}"

    def prev_close(self) -> str:
        """Hash symbol -> previous close (optional, filled by whoever knows it), for a first day's stats."""
        return f"{self.g}:prevclose"

    def raw(self, ev: str) -> str:
        """List of recent raw events of one type (newest first), MDC_RAW_EVENTS kept for MDC_RAW_TTL_S."""
        return f"{self.prefix}:raw:{ev}"

    def seq(self) -> str:
        """Hash channel -> the ``seq`` of its newest update, for the market-wide channels (``leaders.*``,
        ``halts``, ``alerts``)."""
        return f"{self.g}:seq"

    def symbol_seq(self, sym: str) -> str:
        """Hash channel -> the ``seq`` of its newest update, for the channels of ``sym``: in its slot, so
        that its state, its ``seq`` and its updates are one transaction on one node."""
        return f"{self.prefix}:seq:{{{sym}}}"

    def seq_key(self, channel: str) -> str:
        """Where ``channel``'s ``seq`` is: a hash field (``symbol_seq``, ``seq``) named as the channel,
        or for a ``signals.*`` channel its own counter (``signal_seq``)."""
        kind, dot, rest = channel.partition(".")
        if dot and kind in SYMBOL_CHANNELS:
            return self.symbol_seq(rest)
        if kind == SIGNALS:
            return self.signal_seq(channel)
        return self.seq()

    def leader_rows(self) -> str:
        """Hash symbol -> its leaderboard row fields (``{"last","change","change_pct","volume","gap_pct",
        "open","prev_close","t"}``), written with the rankings, read by the leaderboards' script: so that
        it reads no symbol's keys (on a cluster those are in other slots). TTL 2 days, as the rankings."""
        return f"{self.g}:rows"

    def layout(self) -> str:
        """Which layout of these names Redis holds (``mdc.migrate``: an older version's are moved once)."""
        return f"{self.g}:layout"

    def done(self, message_id: str) -> str:
        """Marks a written MDQ message (its id) or script call (``<group id>:<chunk>``), for twice the
        queue TTL: a redelivery is applied once."""
        return f"{self.prefix}:done:{message_id}"

    def leaders_lock(self) -> str:
        """Held for one publication interval by the replica that publishes the leaderboards."""
        return f"{self.g}:leaders:lock"

    def heartbeat(self, component: str, instance: str) -> str:
        """One per running component instance, TTL HEARTBEAT_TTL_S, rewritten every HEARTBEAT_EVERY_S."""
        return f"{self.prefix}:hb:{component}:{instance}"

    def heartbeats(self) -> str:
        """SCAN pattern of every heartbeat."""
        return f"{self.prefix}:hb:*"

    def alerted(self) -> str:
        """Hash ``SYM:KIND`` -> event time of the symbol's last alert of that kind (the cooldown)."""
        return f"{self.g}:alerted"

    def volume_means(self) -> str:
        """Hash symbol -> ``"mean,bars"`` of its minute volumes, for volume-spike alerts."""
        return f"{self.g}:vavg"

    def signal(self, plugin: str, key: str) -> str:
        """A plug-in's own state."""
        return f"{self.g}:signal:{plugin}:{key}"

    # signals.* channels (mdc.publisher, plug-ins): their seq and newest updates, per channel, so that
    # a service's credential can be limited to its own keys (mdc.acl)
    def signal_seq(self, channel: str) -> str:
        """Counter, no TTL: the ``seq`` of the newest update on ``channel`` (a ``signals.*`` channel)."""
        return f"{self.g}:sigseq:{channel}"

    def signal_recent(self, channel: str) -> str:
        """List of the newest envelopes published on ``channel``, newest first, MDC_SIGNAL_RECENT kept,
        TTL MDC_SIGNAL_TTL_S from the newest."""
        return f"{self.g}:sigs:{channel}"


def channel(kind: str, sym: str) -> str:
    """``channel("trades", "AAPL") == "trades.AAPL"``."""
    return f"{kind}.{sym}"


def signal_channel(name: str, suffix: str | None = None) -> str:
    """``signal_channel("crosses") == "signals.crosses"``, ``signal_channel("crosses", "AAPL") ==
    "signals.crosses.AAPL"``; ValueError for a name or suffix that may not be used."""
    if not SIGNAL_NAME_RE.fullmatch(name):
        raise ValueError(f"signal name {name[:60]!r} must match [a-z0-9_]{{1,40}}")
    if suffix is None:
        return f"{SIGNALS}.{name}"
    channel = f"{SIGNALS}.{name}.{suffix}"
    if not SYMBOL_RE.fullmatch(suffix) or not CHANNEL_RE.fullmatch(channel):
        raise ValueError(f"signal suffix {suffix[:60]!r} must match [A-Za-z0-9.:/_^-]{{1,64}}")
    return channel


def signal_owner(channel: str) -> str | None:
    """The service name a ``signals.*`` channel belongs to (``signals.crosses.AAPL`` -> ``crosses``)."""
    kind, dot, rest = channel.partition(".")
    if kind != SIGNALS or not dot:
        return None
    name = rest.partition(".")[0]
    return name if SIGNAL_NAME_RE.fullmatch(name) else None


def leaders(board: str) -> str:
    return f"leaders.{board}"


def is_known_channel(name: str) -> bool:
    """Whether ``name`` is a channel the processors publish (a plug-in's ``signals.*`` included)."""
    if not CHANNEL_RE.fullmatch(name):
        return False
    kind, dot, rest = name.partition(".")
    if kind in SYMBOL_CHANNELS:
        return bool(dot) and valid_symbol(rest)
    if kind == "leaders":
        return rest in BOARDS
    if kind in FEEDS:
        return not dot
    return signal_owner(name) is not None
