"""``mdpipe inspect``: the operator's view of MDC, read straight from Redis with no other component running.

It owns the inspect commands: reading any cached state (a channel's snapshot, a symbol's stats or quote,
minute bars, leaderboards, halts, alerts, raw events, the trading day, heartbeats), listing the keys
under the prefix, and tailing channels. Each command is an async function taking a Redis client, the
``Names`` of the prefix and an ``Output``, so it is testable in-process; ``run`` is the entry point of
``mdpipe/cli.py``, which only parses arguments: it connects, runs one command and turns failures into
one line on stderr and an exit code (2: bad argument, 1: Redis failed).

On a Redis Cluster (``REDIS_CLUSTER_NODES``) the same commands run: reads are routed per key, ``keys``
scans every master, and ``tail`` takes exact channels (sharded pub/sub has no patterns).

Output is JSON: one document per line (one per channel for ``snapshot``, per item for lists, per update
for ``tail``), indented with ``pretty``. Notes (nothing found, a malformed update) go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from mdpipe.settings import mask_url

from .connect import Target
from .envelope import FIELDS, MalformedUpdate, decode
from .names import (
    BOARDS,
    FEEDS,
    GLOB_RE,
    PATTERN_RE,
    SIGNALS,
    SYMBOL_CHANNELS,
    Names,
    is_known_channel,
    valid_symbol,
)
from .reader import Reader, UnknownChannel

EXIT_OK, EXIT_REDIS, EXIT_USAGE = 0, 1, 2
MAX_KEYS = 10_000  # keys listed at most
POLL_S = 0.2  # how often a tail looks at its stop event and deadline
TIMEOUT_S = 5.0

_EVENT_TYPE_RE = re.compile(r"[A-Za-z0-9_]{1,16}")  # raw event types, as mdp.raw keeps them
KNOWN_CHANNELS = ", ".join(
    [
        *(f"{kind}.SYM" for kind in SYMBOL_CHANNELS),
        f"leaders.BOARD ({'|'.join(BOARDS)})",
        *FEEDS,
        f"{SIGNALS}.PLUGIN[.SYM]",
    ]
)


class BadArgument(ValueError):
    """An argument no command could use; the message is safe to print."""


class Output:
    """Where a command writes: JSON documents to ``out``, notes and errors (one line each) to ``err``."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, *, pretty: bool = False) -> None:
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.option = orjson.OPT_INDENT_2 if pretty else 0

    def doc(self, value: Any) -> None:
        self.out.write(orjson.dumps(value, option=self.option).decode() + "\n")
        self.out.flush()  # a tail is read as it comes, often through a pipe

    def note(self, text: str) -> None:
        self.err.write("mdpipe inspect: " + " ".join(text.split()) + "\n")
        self.err.flush()


# -- reading state ------------------------------------------------------------------------------------


async def snapshot(
    redis: Redis, names: Names, out: Output, channels: list[str], *, minute_bars: int = 0
) -> None:
    """Each channel's snapshot, ``{"channel", "seq", "data"}``, all read in one MULTI/EXEC."""
    for channel in channels:
        _check_channel(channel)
    if minute_bars < 0:
        raise BadArgument("the number of minute bars must be 0 (all) or more")
    for snap in await Reader(redis, names).snapshots(channels, minute_bars=minute_bars):
        out.doc({"channel": snap.channel, "seq": snap.seq, "data": snap.data})
        if snap.data is None and snap.seq == 0:
            _nothing(out, names, snap.channel)


async def stats(redis: Redis, names: Names, out: Output, sym: str) -> None:
    _check_symbol(sym)
    _one(out, names, f"stats of {sym}", await Reader(redis, names).stats(sym))


async def quote(redis: Redis, names: Names, out: Output, sym: str) -> None:
    _check_symbol(sym)
    _one(out, names, f"quote of {sym}", await Reader(redis, names).quote(sym))


async def bars(redis: Redis, names: Names, out: Output, sym: str, n: int = 10) -> None:
    """The newest ``n`` minute bars (every one kept when 0), oldest first, one per line."""
    _check_symbol(sym)
    if n < 0:
        raise BadArgument("the number of bars must be 0 (all) or more")
    _many(out, names, f"minute bars of {sym}", await Reader(redis, names).minute_bars(sym, n))


async def leaders(redis: Redis, names: Names, out: Output, board: str) -> None:
    if board not in BOARDS:
        raise BadArgument(f"unknown leaderboard {board!r}; boards: {', '.join(BOARDS)}")
    _one(out, names, f"leaderboard {board}", await Reader(redis, names).leaderboard(board))


async def halted(redis: Redis, names: Names, out: Output) -> None:
    """Every symbol halted now: ``{SYM: luld, ...}``."""
    out.doc(await Reader(redis, names).halted())


async def alerts(redis: Redis, names: Names, out: Output, n: int = 50) -> None:
    """The newest ``n`` alerts, newest first, one per line."""
    _check_positive(n, "the number of alerts")
    _many(out, names, "alerts", await Reader(redis, names).alerts(n))


async def raw(redis: Redis, names: Names, out: Output, ev: str, n: int = 20) -> None:
    """The newest ``n`` raw events of type ``ev`` (``NOI``, ``unknown``...), newest first, one per line."""
    if not _EVENT_TYPE_RE.fullmatch(ev):
        raise BadArgument(f"invalid event type {ev!r}: [A-Za-z0-9_]{{1,16}}")
    _check_positive(n, "the number of events")
    _many(out, names, f"raw {ev} events", await Reader(redis, names).raw(ev, n))


async def day(redis: Redis, names: Names, out: Output) -> None:
    _one(out, names, "trading day", await Reader(redis, names).day())


async def heartbeats(redis: Redis, names: Names, out: Output) -> None:
    """Every live component instance's heartbeat, one per line."""
    _many(out, names, "live heartbeats", await Reader(redis, names).heartbeats())


async def keys(redis: Redis, names: Names, out: Output, pattern: str = "*") -> None:
    """The keys matching ``<prefix>:<pattern>``, sorted, one ``{"key", "type", "ttl"}`` per line; ``ttl``
    in seconds, null when the key never expires. At most MAX_KEYS are listed."""
    found: list[bytes] = []
    async for key in redis.scan_iter(match=f"{names.prefix}:{pattern}", count=1000):
        found.append(key)
        if len(found) >= MAX_KEYS:
            out.note(f"stopped at {MAX_KEYS} keys; narrow the pattern")
            break
    found.sort()
    pipe = redis.pipeline(transaction=False)
    for key in found:
        pipe.type(key)
        pipe.ttl(key)
    replies = await pipe.execute() if found else []
    listed = 0
    for key, kind, ttl in zip(found, replies[::2], replies[1::2], strict=True):
        if ttl == -2:  # expired or deleted since the scan
            continue
        out.doc({"key": key.decode(), "type": kind.decode(), "ttl": None if ttl == -1 else ttl})
        listed += 1
    if not listed:
        out.note(f"no key matches {names.prefix}:{pattern} (is MDC_PREFIX right, and REDIS_URL's database?)")


# -- tailing ------------------------------------------------------------------------------------------


async def tail(
    redis: Redis,
    names: Names,
    out: Output,
    targets: list[str],
    *,
    types: Iterable[str] | None = None,
    count: int | None = None,
    seconds: float | None = None,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> int:
    """Print every update published on ``targets`` (channels, or glob patterns such as ``trades.*``) as it
    arrives, only those whose type is in ``types`` when given, until ``stop`` is set, ``count`` updates
    were printed or ``seconds`` passed. ``ready`` is set once Redis confirmed every subscription.
    Returns how many updates were printed; a message that is not an envelope is a note, not an error."""
    channels, patterns = _split_targets(targets)
    sharded = isinstance(redis, RedisCluster)
    if sharded and patterns:
        raise BadArgument(
            "a Redis Cluster has no pattern subscriptions (sharded pub/sub): "
            f"name the channels, not {patterns[0]!r}"
        )
    if count is not None:
        _check_positive(count, "count")
    if seconds is not None and not seconds > 0:
        raise BadArgument("seconds must be more than 0")
    wanted = _types(types)
    loop = asyncio.get_running_loop()
    deadline = None if seconds is None else loop.time() + seconds
    pubsub = redis.pubsub()
    printed = confirmed = 0
    try:
        if sharded:
            await pubsub.ssubscribe(*(names.redis_channel(c) for c in channels))
        elif channels:
            await pubsub.subscribe(*(names.redis_channel(c) for c in channels))
        if patterns:
            await pubsub.psubscribe(*(names.redis_channel(p) for p in patterns))
        while not (stop is not None and stop.is_set()) and (count is None or printed < count):
            wait = POLL_S if deadline is None else min(POLL_S, deadline - loop.time())
            if wait <= 0:
                break
            if sharded:
                message = await pubsub.get_sharded_message(timeout=wait)
            else:
                message = await pubsub.get_message(timeout=wait)
            if message is None:
                continue
            if message["type"] in ("subscribe", "psubscribe", "ssubscribe"):
                confirmed += 1
                if ready is not None and confirmed == len(channels) + len(patterns):
                    ready.set()
                continue
            if message["type"] not in ("message", "pmessage", "smessage"):
                continue
            try:
                update = decode(message["data"])
            except MalformedUpdate as exc:
                out.note(f"malformed update on {names.channel_of(message['channel'])}: {exc}")
                continue
            if wanted is None or update.type in wanted:
                out.doc({field: getattr(update, field) for field in FIELDS})
                printed += 1
    finally:
        with contextlib.suppress(Exception):  # the connection may be what failed
            await pubsub.aclose()
    return printed


# -- the entry point of mdpipe/cli.py -----------------------------------------------------------------


def connect(redis: str | Target) -> Redis | RedisCluster:
    """A client that fails at once: an operator wants the error, not redis-py's silent retries."""
    target = redis if isinstance(redis, Target) else Target(redis)
    options: dict[str, Any] = {"socket_connect_timeout": TIMEOUT_S, "socket_timeout": TIMEOUT_S}
    if not target.cluster:
        options["retry"] = Retry(NoBackoff(), 0)
    return target.client(client_name="mdpipe-inspect", **options)


async def run(
    what: str,
    options: Mapping[str, Any],
    *,
    redis_url: str | Target,
    prefix: str,
    out: Output,
    stop: asyncio.Event | None = None,
) -> int:
    """Run command ``what`` with ``options`` (the parsed arguments, by name); returns the exit code."""
    names = Names(prefix)
    redis = connect(redis_url)
    if isinstance(redis_url, Target):
        redis_url = redis_url.url
    o = options
    commands = {
        "snapshot": lambda: snapshot(redis, names, out, o["channels"], minute_bars=o.get("minute_bars", 0)),
        "stats": lambda: stats(redis, names, out, o["sym"]),
        "quote": lambda: quote(redis, names, out, o["sym"]),
        "bars": lambda: bars(redis, names, out, o["sym"], o.get("n", 10)),
        "leaders": lambda: leaders(redis, names, out, o["board"]),
        "halted": lambda: halted(redis, names, out),
        "alerts": lambda: alerts(redis, names, out, o.get("n", 50)),
        "raw": lambda: raw(redis, names, out, o["ev"], o.get("n", 20)),
        "day": lambda: day(redis, names, out),
        "heartbeats": lambda: heartbeats(redis, names, out),
        "keys": lambda: keys(redis, names, out, o.get("pattern") or "*"),
        "tail": lambda: tail(
            redis,
            names,
            out,
            o["targets"],
            types=o.get("types"),
            count=o.get("count"),
            seconds=o.get("seconds"),
            stop=stop,
        ),
    }
    try:
        if what not in commands:
            raise BadArgument(f"unknown command {what!r}")
        await commands[what]()
        return EXIT_OK
    except (BadArgument, UnknownChannel) as exc:
        out.note(str(exc))
        return EXIT_USAGE
    except (RedisError, OSError) as exc:  # OSError: refused, unreachable, timed out
        if isinstance(exc, BrokenPipeError):  # whoever read the output is gone (`| head`): not an error
            return EXIT_OK
        out.note(f"redis at {_shown(redis_url)}: {_reason(exc, redis_url)}")
        return EXIT_REDIS
    except orjson.JSONDecodeError as exc:
        out.note(f"a value under prefix {prefix} is not JSON: {exc}")
        return EXIT_REDIS
    finally:
        with contextlib.suppress(Exception):
            await redis.aclose()


# -- helpers ------------------------------------------------------------------------------------------


def _check_channel(channel: str) -> None:
    if not is_known_channel(channel):
        raise UnknownChannel(f"unknown channel {channel!r}; channels: {KNOWN_CHANNELS}")


def _check_symbol(sym: str) -> None:
    if not valid_symbol(sym):
        raise BadArgument(f"invalid symbol {sym!r}: [A-Za-z0-9.:/_^-]{{1,64}}")


def _check_positive(n: int, what: str) -> None:
    if n < 1:
        raise BadArgument(f"{what} must be at least 1")


def _split_targets(targets: list[str]) -> tuple[list[str], list[str]]:
    """(channels, patterns), each without repeats: Redis confirms a repeated name once."""
    if not targets:
        raise BadArgument("nothing to tail: give channels or patterns")
    channels: dict[str, None] = {}
    patterns: dict[str, None] = {}
    for target in targets:
        if GLOB_RE.search(target):
            if not PATTERN_RE.fullmatch(target):
                raise BadArgument(f"invalid pattern {target!r}")
            patterns[target] = None
        else:
            _check_channel(target)
            channels[target] = None
    return list(channels), list(patterns)


def _types(types: Iterable[str] | None) -> frozenset[str] | None:
    """``["quote", "bar.1s,bar.1m"]`` -> the set of the four; None (every type) when none given."""
    if not types:
        return None
    return frozenset(t.strip() for group in types for t in group.split(",") if t.strip()) or None


def _one(out: Output, names: Names, what: str, value: Any) -> None:
    out.doc(value)
    if value is None:
        _nothing(out, names, what)


def _many(out: Output, names: Names, what: str, values: list[Any]) -> None:
    for value in values:
        out.doc(value)
    if not values:
        _nothing(out, names, what)


def _nothing(out: Output, names: Names, what: str) -> None:
    out.note(f"no {what} under prefix {names.prefix} (is MDC_PREFIX right, and REDIS_URL's database?)")


def _shown(redis_url: str) -> str:
    """The URL without its password: masked in the user part, and the query (``?password=``) left out."""
    return urlsplit(mask_url(redis_url))._replace(query="").geturl()


def _reason(exc: BaseException, redis_url: str) -> str:
    """The error on one line, without the URL's password even if a library put it there."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    parts = urlsplit(redis_url)
    for secret in [parts.password, *parse_qs(parts.query).get("password", [])]:
        for form in {secret, unquote(secret or "")} - {None, ""}:  # as written, and as redis-py reads it
            text = text.replace(form, "***")
    return text
