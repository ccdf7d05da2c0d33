"""The MDC subscriber: how a Python service inside the data plane (a trading bot, a signal worker)
receives the updates the processors publish.

It owns one Redis pub/sub connection and everything about keeping it. Callbacks are registered per
channel (``trades.AAPL``) or glob pattern (``trades.*``), optionally for some update types only; the
subscriber subscribes and unsubscribes as they come and go, notices a dead connection (its own PINGs),
reconnects with backoff and subscribes everything again (redis-py's pub/sub leaves that to its caller),
and then calls ``on_resubscribed``: what was published meanwhile is lost, so snapshots are re-read.

Two tasks share the work, so a slow callback never keeps the socket from being read (Redis drops a
subscriber whose output buffer outgrows ``client-output-buffer-limit pubsub``): the reader takes
messages off the connection into a bounded queue (``max_pending``, oldest dropped first; with
``conflate=True`` a channel's update still waiting gives way to its newer one, so a dispatcher that
falls behind does less work instead of more, and the queue holds one entry per channel: see
``conflation`` for what is kept of the older one), and the
dispatcher decodes them (``mdc.envelope``), counts gaps in ``seq`` and calls the callbacks one at a
time, in order. It runs in the caller's event loop (``run``, ``async with``) or in a thread of its own
(``start_thread``); ``stream()`` gives an async iterator with a bounded queue of its own.

On a Redis Cluster (a ``Target`` whose ``cluster`` is true, or ``seeds=``) updates are published with
``SPUBLISH`` and heard with ``SSUBSCRIBE`` on the master owning each channel's slot (``mdc.topology``): one
connection per such master, one ``SSUBSCRIBE`` per slot. Sharded pub/sub has no patterns, so only exact
channels may be registered there. A topology change (a node connection lost, a ``MOVED`` reply, a
``sunsubscribe`` nobody asked for: Redis sends that when a slot moves away) ends the session as a lost
connection does: the topology is discovered again, everything is subscribed on the new owners, and
``on_resubscribed`` follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from mdc.connect import Target
from mdc.envelope import MalformedUpdate, Update, decode
from mdc.names import CHANNEL_RE, GLOB_RE, PATTERN_RE, SIGNALS, Names
from mdc.topology import Node, Topology, discover, key_slot, node_url
from mdc.wire import KEEPALIVE, Wire, command
from mdpipe.backoff import Backoff
from mdpipe.settings import mask_url

log = logging.getLogger(__name__)

#: Errors that mean "the connection is gone or Redis refused us for now": wait a backoff delay, reconnect.
CONNECTION_ERRORS = (RedisError, OSError, TimeoutError)

POLL_S = 0.1  # the longest the reader waits for a message before it looks at stop and (un)subscriptions
PING_EVERY_S = 5.0  # a PING after this long without a word from Redis...
PING_TIMEOUT_S = 5.0  # ...and the connection is dead when no reply came this long after it
CONNECT_TIMEOUT_S = 5.0
SOCKET_TIMEOUT_S = 10.0  # for writes (commands); reads wait POLL_S at a time
STOP_GRACE_S = 1.0  # how long a stop waits for a running callback before cancelling it
LOG_EVERY_S = 60.0  # malformed updates, drops and a failing callback are logged at most this often
MAX_TRACKED_CHANNELS = 100_000  # channels whose last seq is kept for gap counting
SUBSCRIBE_BATCH = 1000  # names per SUBSCRIBE command
SLICE_S = 0.01  # the longest a task works in a row before it lets the other (and the event loop) run

# Input conflation (``conflate=True``): what a channel's waiting update becomes when a newer one comes.
LATEST, PRINTS, FEED = "latest", "prints", "feed"
FEED_CHANNELS = frozenset(("alerts", "halts"))  # each update is one event: a newer one is no summary
SIGNALS_DOT = SIGNALS + "."  # and so is a signal
CONFLATED_PRINTS = 100  # a trades update carrying the prints of those it replaced keeps the newest this many
FEED_WAITING = 100  # updates of a feed channel kept waiting in order; beyond, the oldest go

_PING = b"mdc-subscriber"
_SYNC = b"mdc-subscriber-sync "
_RESUBSCRIBED = object()  # in the pending queue: the connection came back, tell the user in order

Callback = Callable[[Update], Any]


def conflation(channel: str) -> str:
    """How an update of ``channel`` that still waits gives way to a newer one: ``LATEST``, the newer one
    replaces it (state: only the newest matters); ``PRINTS`` (``trades.SYM``), the newer one carries the
    prints of both (``merge_prints``); ``FEED`` (``alerts``, ``halts``, ``signals.*``: each update an
    event, a newer one no summary of it), both wait, in order, up to ``FEED_WAITING``."""
    if channel.startswith("trades."):
        return PRINTS
    return FEED if channel in FEED_CHANNELS or channel.startswith(SIGNALS_DOT) else LATEST


def merge_prints(older: bytes, newer: bytes) -> bytes:
    """``newer`` (a trades envelope, or a JSON object holding one's fields) with the prints of ``older``
    in front of its own, oldest first, the newest ``CONFLATED_PRINTS`` of them; its other fields (seq,
    ts, sent) are the newer one's. Parses both: only ever called on conflation, never per update.
    ``newer`` as it is when either ``data`` is not a list of prints."""
    try:
        old, new = orjson.loads(older), orjson.loads(newer)
    except orjson.JSONDecodeError:
        return newer
    if type(old) is not dict or type(new) is not dict:
        return newer
    prints, more = old.get("data"), new.get("data")
    if type(prints) is not list or type(more) is not list:
        return newer
    new["data"] = (prints + more)[-CONFLATED_PRINTS:]
    return orjson.dumps(new)


@dataclass(eq=False)
class Handle:
    """What ``Subscriber.on`` returns; give it to ``Subscriber.off``."""

    target: str  # the channel or pattern, client-facing (``trades.*``)
    pattern: bool
    callback: Callback
    types: frozenset[str] | None
    raw: bool = False  # called with (channel, bytes): the envelope as published, not decoded
    active: bool = True
    errors: int = 0
    logged_at: float = -math.inf

    @property
    def key(self) -> tuple[bool, str]:
        return (self.pattern, self.target)


class Subscriber:
    """Delivers the updates of MDC channels to callbacks; see the module docstring.

    ``connected`` says whether it is subscribed now, ``reconnects`` how many times it came back, and
    ``stats`` counts: ``received`` (Redis messages), ``delivered`` (callback calls that returned),
    ``malformed`` (messages that are not an envelope), ``callback_errors``, ``dropped`` (updates lost to
    a full queue: ``max_pending`` or a stream's) and ``gaps`` (jumps in a channel's ``seq``).
    """

    def __init__(
        self,
        redis_url: str | Target,
        prefix: str = "md",
        *,
        backoff: Backoff | None = None,
        max_pending: int = 10_000,
        on_resubscribed: Callable[[], Any] | None = None,
        client_name: str | None = None,
        conflate: bool = False,
        seeds: Iterable[Node] | None = None,
    ) -> None:
        """``redis_url``: one Redis's URL, or a ``Target`` (cluster mode when ``target.cluster``);
        ``seeds``: a cluster's seed nodes (``REDIS_CLUSTER_NODES``) with ``redis_url`` a plain URL."""
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if isinstance(redis_url, Target):
            self.target = Target(redis_url.url, (*redis_url.seeds, *(seeds or ())))
        else:
            self.target = Target(redis_url, tuple(seeds or ()))
        self.url = self.target.url
        self.names = Names(prefix)
        # on a cluster a lost node is most often a failover: the topology is wrong for the seconds until
        # a replica is promoted, so discovery is tried again at most every 2 s (a CLUSTER SHARDS to a seed)
        default = Backoff(0.25, 2.0, 60.0) if self.target.cluster else Backoff(0.5, 30.0, 60.0)
        self.backoff = backoff or default
        self.max_pending = max_pending
        # conflate: while the dispatcher is behind, a channel's waiting update gives way to its newer one
        # (``conflation``); raw callbacks then get (channel, data, skipped)
        self.conflate = conflate
        # key -> [data, skipped: updates it replaced, the feed's updates waiting after it or None]
        self._latest: dict[tuple[int, bytes, bytes | None], list[Any]] = {}
        self.on_resubscribed = on_resubscribed
        self.client_name = client_name or f"mdc-sub-{prefix}"
        self.connected = False
        self.reconnects = 0
        self.stats: dict[str, int] = dict.fromkeys(
            ("received", "delivered", "malformed", "callback_errors", "dropped", "gaps", "conflated"), 0
        )
        # Registrations may come from any thread; the dispatcher reads ``_handlers`` without the lock
        # (one dict.get, its values are tuples replaced whole).
        self._lock = threading.Lock()
        self._handlers: dict[tuple[bool, str], tuple[Handle, ...]] = {}
        self._dirty = False  # the set of channels and patterns changed since the reader last looked
        # ``confirmed()``: registrations are numbered; the reader PINGs after subscribing them and the
        # reply (Redis answers in order) says every one up to that number is in place.
        self._wanted_gen = 0
        self._confirmed_gen = 0
        self._confirmations: list[tuple[int, asyncio.Future[None]]] = []
        self._running = False
        self._ups = 0  # subscribed sessions in this run
        self._pending: deque[Any] = deque()
        self._wake: asyncio.Event | None = None
        # Gap counting: the seq epoch changes on reconnect and unsubscribe, where a jump is no gap.
        self._epoch = 0
        self._seq_epoch = 0
        self._last_seq: dict[str, int] = {}
        self._malformed_logged_at = -math.inf
        self._dropped_logged_at = -math.inf
        self._thread: threading.Thread | None = None
        self._thread_stop: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._task: asyncio.Task[None] | None = None
        self._task_stop: asyncio.Event | None = None
        self._cluster_ready = False  # cluster mode: this session confirmed its first sync on every master
        self._cluster_first_gen = 0

    # -- registration ------------------------------------------------------------------------------

    def on(
        self, target: str, callback: Callback, *, types: Iterable[str] | None = None, raw: bool = False
    ) -> Handle:
        """Call ``callback(update)`` for every update on channel ``target`` (``trades.AAPL``), or on every
        channel matching ``target`` if it is a glob pattern (``trades.*``: it holds ``*``, ``?`` or ``[``),
        only for updates whose ``type`` is in ``types`` when given.

        ``callback`` may be a coroutine function. Callbacks run in the subscriber's loop one at a time:
        a slow one delays the others (use ``stream()`` for slow work). Thread-safe; while running, the
        subscription is made within ``POLL_S`` (``await confirmed()`` waits for it).

        ``raw=True``: ``callback(channel, data)`` gets the envelope's bytes as published, undecoded and
        unchecked (a gateway that forwards them); ``types`` does not apply.
        """
        if not callable(callback):
            raise TypeError("callback must be callable")
        pattern = isinstance(target, str) and GLOB_RE.search(target) is not None
        if not isinstance(target, str) or not (PATTERN_RE if pattern else CHANNEL_RE).fullmatch(target):
            raise ValueError(f"invalid channel or pattern {target!r}")
        if pattern and self.target.cluster:
            raise ValueError(
                f"pattern {target!r} refused: on a Redis Cluster updates go out with SPUBLISH and sharded "
                "pub/sub has no patterns; register the exact channels (trades.AAPL, trades.MSFT, ...)"
            )
        if types is not None:
            types = frozenset((types,) if isinstance(types, str) else types)
        handle = Handle(target, pattern, callback, types, raw)
        with self._lock:
            before = self._handlers.get(handle.key, ())
            self._handlers[handle.key] = (*before, handle)
            if not before:
                self._dirty = True
                self._wanted_gen += 1
        return handle

    def off(self, handle: Handle) -> bool:
        """Stop calling ``handle``'s callback; unsubscribe when it was the last one of its channel or
        pattern. False if it was not registered. Thread-safe."""
        with self._lock:
            handles = self._handlers.get(handle.key, ())
            if handle not in handles:
                return False
            handle.active = False
            rest = tuple(h for h in handles if h is not handle)
            if rest:
                self._handlers[handle.key] = rest
            else:
                del self._handlers[handle.key]
                self._dirty = True
        return True

    def stream(self, target: str, *, types: Iterable[str] | None = None, maxsize: int = 1000) -> Stream:
        """``async for update in sub.stream("stats.*"): ...``: the updates of ``target`` through a queue
        of ``maxsize`` that drops its oldest update when full. Registered at once; see ``Stream``."""
        return Stream(self, target, types, maxsize)

    # -- running in the caller's loop --------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe, deliver; reconnect after any connection error; return when ``stop`` is set."""
        with self._lock:
            if self._running:
                raise RuntimeError("this subscriber is running already")
            self._running = True
        self._ups = 0
        self._pending.clear()
        self._latest.clear()
        self._wake = wake = asyncio.Event()
        dispatcher = asyncio.create_task(self._dispatch(stop), name="mdc-subscriber-dispatch")
        try:
            while not stop.is_set() and not dispatcher.done():
                wire = Wire(self.url, self.client_name, CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S, KEEPALIVE)
                links: dict[Node, _Link] = {}  # cluster mode: the connection to each master
                session = self._cluster_session(links) if self.target.cluster else self._session(wire)
                try:
                    await _until(session, stop, dispatcher)
                except CONNECTION_ERRORS as exc:
                    what = "redis connection lost" if self.connected else "redis unavailable"
                    log.warning(
                        f"subscriber: {what}",
                        extra={"redis": mask_url(self.url), "error": f"{type(exc).__name__}: {exc}"},
                    )
                finally:
                    self.connected = False
                    self.backoff.down()
                    await wire.close()
                    await _close_links(links)
                if not stop.is_set() and not dispatcher.done():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.backoff.next_delay())
        finally:
            self.connected = False
            wake.set()  # the dispatcher sees stop
            if not dispatcher.done():
                await asyncio.wait({dispatcher}, timeout=STOP_GRACE_S)
                dispatcher.cancel()
                await asyncio.wait({dispatcher})
            with self._lock:
                self._running = False
        if not dispatcher.cancelled() and dispatcher.exception() is not None:
            raise dispatcher.exception()  # type: ignore[misc]  # a bug: not hidden behind reconnects

    async def __aenter__(self) -> Subscriber:
        """``async with Subscriber(url) as sub:`` runs it in a task of the current loop until the end."""
        self._task_stop = asyncio.Event()
        self._task = asyncio.create_task(self.run(self._task_stop), name="mdc-subscriber")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None and self._task_stop is not None:
            self._task_stop.set()
            task, self._task = self._task, None
            await task

    # -- running in a thread -----------------------------------------------------------------------

    def start_thread(self, name: str = "mdc-subscriber") -> None:
        """Run in a daemon thread with an event loop of its own; callbacks are called in that thread."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the subscriber thread is running already")
        started = threading.Event()

        async def main() -> None:
            stop = asyncio.Event()
            self._thread_stop = (asyncio.get_running_loop(), stop)
            started.set()
            await self.run(stop)

        def target() -> None:
            try:
                asyncio.run(main())
            except Exception:
                log.exception("subscriber: thread stopped by an error")
            finally:
                started.set()

        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self._thread.start()
        started.wait()

    def stop_thread(self, timeout: float = 5.0) -> bool:
        """Stop the thread of ``start_thread`` and join it; False if it is still alive after ``timeout``."""
        thread, stopper = self._thread, self._thread_stop
        if thread is None:
            return True
        if stopper is not None:
            loop, stop = stopper
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            return False
        self._thread = self._thread_stop = None
        return True

    # -- the reader ----------------------------------------------------------------------------------

    async def _session(self, wire: Wire) -> None:
        """Connect, subscribe everything, then read until the connection fails (never returns)."""
        await wire.connect()
        self._epoch += 1
        epoch = self._epoch
        subscribed: set[tuple[bool, str]] = set()
        # Redis answers in order: the reply to the PING that ends the sync says every subscription above
        # is in place.
        await self._sync(wire, subscribed)
        ready = False
        live = _Live(wire)
        while True:
            if self._dirty and await self._sync(wire, subscribed):
                self._epoch += 1  # a channel may come back later: its jump in seq is no gap
                epoch = self._epoch
            for reply in await live.replies():
                kind = reply[0] if type(reply) is list else None
                if kind == b"message":
                    self.stats["received"] += 1
                    self._enqueue((epoch, reply[1], None, reply[2]))
                elif kind == b"pmessage":
                    self.stats["received"] += 1
                    self._enqueue((epoch, reply[2], reply[1], reply[3]))
                elif kind == b"pong" or type(reply) is bytes:  # PING's reply, in or out of pub/sub mode
                    live.pinged = None  # any reply: the connection is alive
                    data = reply[1] if kind == b"pong" else reply
                    if isinstance(data, bytes) and data.startswith(_SYNC):
                        self._confirm(int(data[len(_SYNC) :]))
                        if not ready:
                            ready = True
                            self._up(len(subscribed))
            await live.pause()

    async def _sync(self, wire: Wire, subscribed: set[tuple[bool, str]]) -> bool:
        """Make the connection's subscriptions those registered, then PING with the registrations'
        number (its reply confirms them); True if any went away."""
        with self._lock:
            self._dirty = False
            wanted = set(self._handlers)
            gen = self._wanted_gen
        new, gone = wanted - subscribed, subscribed - wanted
        for is_pattern, add, remove in (
            (False, "SUBSCRIBE", "UNSUBSCRIBE"),
            (True, "PSUBSCRIBE", "PUNSUBSCRIBE"),
        ):
            for verb, keys in ((add, new), (remove, gone)):
                targets = sorted(self.names.redis_channel(t) for p, t in keys if p is is_pattern)
                for i in range(0, len(targets), SUBSCRIBE_BATCH):
                    wire.send(command(verb, *targets[i : i + SUBSCRIBE_BATCH]))
        subscribed.difference_update(gone)
        subscribed.update(new)
        wire.send(command("PING", _SYNC + str(gen).encode()))
        await wire.drain()
        return bool(gone)

    # -- the reader, on a Redis Cluster ---------------------------------------------------------------

    async def _cluster_session(self, links: dict[Node, _Link]) -> None:
        """Discover the topology, subscribe every channel on its slot's master (``links``: one connection
        each, a reader task each), then watch them: the first that fails ends the session (never
        returns), and the next one starts from a fresh topology."""
        topology = await discover(self.target, per_seed_s=CONNECT_TIMEOUT_S, client_name=self.client_name)
        self._epoch += 1
        self._cluster_ready = False
        self._cluster_first_gen = self._wanted_gen
        await self._cluster_sync(topology, links)
        self._cluster_acked(links)
        while True:
            tasks = [link.task for link in links.values() if link.task is not None]
            if tasks:
                done, _ = await asyncio.wait(tasks, timeout=POLL_S, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    node = next(n for n, link in links.items() if link.task is task)
                    exc = task.exception() or TopologyChanged("its reader ended")
                    raise TopologyChanged(f"{node[0]}:{node[1]}: {type(exc).__name__}: {exc}") from exc
            else:
                await asyncio.sleep(POLL_S)
            if self._dirty:
                if await self._cluster_sync(topology, links):
                    self._epoch += 1  # a channel may come back later: its jump in seq is no gap
                self._cluster_acked(links)

    async def _cluster_sync(self, topology: Topology, links: dict[Node, _Link]) -> bool:
        """As ``_sync``, per master: SSUBSCRIBE and SUNSUBSCRIBE one slot's channels per command, then a
        PING with the registrations' number on every link; True if any went away."""
        with self._lock:
            self._dirty = False
            wanted = [self.names.redis_channel(t) for p, t in self._handlers if not p]
            gen = self._wanted_gen
        by_node = topology.group(wanted)  # SlotUncovered (a failover under way): the session ends
        went = False
        for node in by_node.keys() | links.keys():
            link = links.get(node) or await self._open_link(node, links)
            want = {name for names in by_node.get(node, {}).values() for name in names}
            new, gone = want - link.subscribed, link.subscribed - want
            for verb, names in (("SSUBSCRIBE", new), ("SUNSUBSCRIBE", gone)):
                per_slot: dict[int, list[str]] = {}
                for name in sorted(names):
                    per_slot.setdefault(key_slot(name), []).append(name)
                for same_slot in per_slot.values():  # a sharded (un)subscribe is one slot's channels
                    for i in range(0, len(same_slot), SUBSCRIBE_BATCH):
                        link.wire.send(command(verb, *same_slot[i : i + SUBSCRIBE_BATCH]))
            link.leaving.update(name.encode() for name in gone)
            link.subscribed = want
            went = went or bool(gone)
            link.wire.send(command("PING", _SYNC + str(gen).encode()))
            await link.wire.drain()
        return went

    async def _open_link(self, node: Node, links: dict[Node, _Link]) -> _Link:
        url = node_url(self.url, node)
        wire = Wire(url, self.client_name, CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S, KEEPALIVE)
        link = links[node] = _Link(wire)  # in links at once: closed with them whatever happens
        await wire.connect()
        name = f"mdc-subscriber-{node[0]}:{node[1]}"
        link.task = asyncio.create_task(self._read_link(link, links), name=name)
        return link

    async def _read_link(self, link: _Link, links: dict[Node, _Link]) -> None:
        """One master's connection: sharded messages into the queue, sync PINGs acknowledged, its own
        liveness PINGs; raises when it fails or Redis unsubscribes a channel nobody asked to leave."""
        live = _Live(link.wire)
        while True:
            for reply in await live.replies():  # an error reply (MOVED) raises: the topology changed
                kind = reply[0] if type(reply) is list else None
                if kind == b"smessage":
                    self.stats["received"] += 1
                    self._enqueue((self._epoch, reply[1], None, reply[2]))
                elif kind == b"sunsubscribe":
                    if reply[1] not in link.leaving:  # Redis's own: the slot moved to another node
                        raise TopologyChanged(f"unsubscribed from {reply[1]!r} unasked: its slot moved")
                    link.leaving.discard(reply[1])
                elif kind == b"pong" or type(reply) is bytes:
                    live.pinged = None
                    data = reply[1] if kind == b"pong" else reply
                    if isinstance(data, bytes) and data.startswith(_SYNC):
                        link.acked = int(data[len(_SYNC) :])
                        self._cluster_acked(links)
            await live.pause()

    def _cluster_acked(self, links: dict[Node, _Link]) -> None:
        """Registrations up to the lowest number every master confirmed are in place; the session is up
        once each confirmed its first sync."""
        with self._lock:
            newest = self._wanted_gen
        low = min((link.acked for link in links.values()), default=newest)
        self._confirm(low)
        if not self._cluster_ready and low >= self._cluster_first_gen:
            self._cluster_ready = True
            self._up(sum(len(link.subscribed) for link in links.values()))

    async def confirmed(self) -> None:
        """Return once every registration made before this call is subscribed on Redis, so what is
        published from then on is delivered (waits through a reconnect: bound it with
        ``asyncio.timeout``). In the subscriber's own event loop only."""
        with self._lock:
            gen = self._wanted_gen
        if gen <= self._confirmed_gen:
            return
        future = asyncio.get_running_loop().create_future()
        self._confirmations.append((gen, future))
        await future

    def _confirm(self, gen: int) -> None:
        if gen <= self._confirmed_gen:
            return
        self._confirmed_gen = gen
        waiting, self._confirmations = self._confirmations, []
        for wanted, future in waiting:
            if wanted <= gen:
                if not future.done():
                    future.set_result(None)
            else:
                self._confirmations.append((wanted, future))

    def _up(self, subscriptions: int) -> None:
        self.connected = True
        self.backoff.up()
        self._ups += 1
        if self._ups > 1:
            self.reconnects += 1
            if not (self._pending and self._pending[-1] is _RESUBSCRIBED):
                self._pending.append(_RESUBSCRIBED)
                self._wake.set()  # type: ignore[union-attr]
        log.info(
            "subscriber: subscribed",
            extra={
                "redis": mask_url(self.url),
                "prefix": self.names.prefix,
                "subscriptions": subscriptions,
                "reconnects": self.reconnects,
            },
        )

    def _enqueue(self, item: tuple[int, bytes, bytes | None, bytes]) -> None:
        pending = self._pending
        if self.conflate:
            key = item[:3]
            waiting = self._latest.get(key)
            if waiting is not None:  # the channel's update still waits: the newer one takes its place
                self._conflate(waiting, item[1], item[3])
                return
        if len(pending) >= self.max_pending:
            # The oldest update goes; a reconnect notice stays, so on_resubscribed is never lost.
            index = 1 if pending[0] is _RESUBSCRIBED else 0
            if index < len(pending):
                gone = pending[index]
                del pending[index]
                self._latest.pop(gone, None)
                self._dropped()
        if self.conflate:
            self._latest[key] = [item[3], 0, None]
            pending.append(key)
        else:
            pending.append(item)
        self._wake.set()  # type: ignore[union-attr]

    def _conflate(self, waiting: list[Any], redis_channel: bytes, data: bytes) -> None:
        """``data`` came while ``waiting`` (``[data, skipped, backlog]``) still waits: see ``conflation``."""
        kind = conflation(self._client_name_of(redis_channel))
        if kind is FEED:
            backlog = waiting[2]
            if backlog is None:
                backlog = waiting[2] = deque()
            backlog.append(data)
            if len(backlog) < FEED_WAITING:
                return  # nothing lost: the feed's updates wait in order
            waiting[0] = backlog.popleft()  # the oldest goes; the next delivered counts it as skipped
        else:
            waiting[0] = merge_prints(waiting[0], data) if kind is PRINTS else data
        waiting[1] += 1
        self.stats["conflated"] += 1

    # -- the dispatcher ------------------------------------------------------------------------------

    async def _dispatch(self, stop: asyncio.Event) -> None:
        pending, wake = self._pending, self._wake
        assert wake is not None
        clock = asyncio.get_running_loop().time
        slice_began = clock()
        while not stop.is_set():
            if not pending:
                wake.clear()
                await wake.wait()
                slice_began = clock()
                continue
            item = pending.popleft()
            if item is _RESUBSCRIBED:
                await self._resubscribed()
            elif self.conflate:
                data, skipped, backlog = self._latest.pop(item)
                await self._deliver(*item, data, skipped)
                while backlog:  # a feed's updates that waited behind it, in order
                    await self._deliver(*item, backlog.popleft())
            else:
                await self._deliver(*item)
            if clock() - slice_began >= SLICE_S:  # synchronous callbacks never pause: let the reader in
                await asyncio.sleep(0)
                slice_began = clock()

    async def _deliver(
        self, epoch: int, redis_channel: bytes, redis_pattern: bytes | None, data: bytes, skipped: int = 0
    ) -> None:
        channel = self._client_name_of(redis_channel)
        key = (False, channel) if redis_pattern is None else (True, self._client_name_of(redis_pattern))
        handles = self._handlers.get(key)
        if not handles:  # unsubscribed since
            return
        update: Update | None = None
        for handle in handles:
            if not handle.active:
                continue
            if handle.raw:
                try:
                    if self.conflate:
                        handle.callback(channel, data, skipped)  # type: ignore[call-arg]
                    else:
                        handle.callback(channel, data)  # type: ignore[call-arg]
                except Exception:
                    self._callback_failed(handle, channel)
                else:
                    self.stats["delivered"] += 1
                continue
            if update is None:
                try:
                    update = decode(data)
                except MalformedUpdate as exc:
                    self._malformed(channel, exc)
                    return
                self._track_seq(epoch, channel, update.seq, skipped)
            if handle.types is not None and update.type not in handle.types:
                continue
            try:
                result = handle.callback(update)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self._callback_failed(handle, channel)
            else:
                self.stats["delivered"] += 1

    def _client_name_of(self, redis_name: bytes | str) -> str:
        if isinstance(redis_name, bytes):
            redis_name = redis_name.decode("utf-8", "replace")
        return self.names.channel_of(redis_name)

    def _track_seq(self, epoch: int, channel: str, seq: int, skipped: int = 0) -> None:
        if epoch != self._seq_epoch:
            self._last_seq.clear()
            self._seq_epoch = epoch
        last = self._last_seq.get(channel)
        if last is None:
            if len(self._last_seq) >= MAX_TRACKED_CHANNELS:
                self._last_seq.clear()
        elif seq > last + 1 + skipped:  # the ones conflated here are no gap
            self.stats["gaps"] += 1
        # An equal seq is the same update again (a channel and a pattern both match); a lower one, a
        # restarted sequence: followed from there.
        self._last_seq[channel] = seq

    async def _resubscribed(self) -> None:
        self._last_seq.clear()
        if self.on_resubscribed is None:
            return
        try:
            result = self.on_resubscribed()
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.stats["callback_errors"] += 1
            log.exception("subscriber: on_resubscribed failed")

    def _callback_failed(self, handle: Handle, channel: str) -> None:
        """Count, and log with the traceback at most once a minute per callback (called in ``except``)."""
        self.stats["callback_errors"] += 1
        handle.errors += 1
        now = time.monotonic()
        if now - handle.logged_at >= LOG_EVERY_S:
            handle.logged_at = now
            log.exception(
                "subscriber: callback failed",
                extra={
                    "channel": channel,
                    "callback": getattr(handle.callback, "__qualname__", repr(handle.callback)),
                    "errors": handle.errors,
                },
            )

    def _malformed(self, channel: str, exc: MalformedUpdate) -> None:
        self.stats["malformed"] += 1
        now = time.monotonic()
        if now - self._malformed_logged_at >= LOG_EVERY_S:
            self._malformed_logged_at = now
            log.warning(
                "subscriber: not an MDC update, ignored",
                extra={"channel": channel, "error": str(exc), "malformed": self.stats["malformed"]},
            )

    def _dropped(self) -> None:
        self.stats["dropped"] += 1
        now = time.monotonic()
        if now - self._dropped_logged_at >= LOG_EVERY_S:
            self._dropped_logged_at = now
            log.warning(
                "subscriber: falling behind, oldest updates dropped", extra={"dropped": self.stats["dropped"]}
            )


class TopologyChanged(RedisError):
    """A cluster session ends: a master's connection failed, Redis answered MOVED, or unsubscribed a
    channel unasked (its slot moved). The subscriber discovers the topology again and resubscribes."""


@dataclass(eq=False)
class _Link:
    """The subscriber's connection to one cluster master."""

    wire: Wire
    subscribed: set[str] = field(default_factory=set)  # Redis channel names
    leaving: set[bytes] = field(default_factory=set)  # SUNSUBSCRIBEd by us, Redis's reply not yet read
    acked: int = -1  # the newest registrations' number this master confirmed
    task: asyncio.Task[None] | None = None


async def _close_links(links: dict[Node, _Link]) -> None:
    tasks = [link.task for link in links.values() if link.task is not None]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    await asyncio.gather(*(link.wire.close() for link in links.values()), return_exceptions=True)
    links.clear()


class Stream:
    """The updates of one channel or pattern as an async iterator, through a queue of its own: when the
    reader is ``maxsize`` updates behind, the oldest is dropped (counted in ``dropped`` and in the
    subscriber's ``stats["dropped"]``), so a slow reader never holds the subscriber up.

    Registered when made, so nothing is missed between ``stream()`` and the first ``anext``. It
    unsubscribes when closed (``aclose()``, the end of ``async with``) or when it is garbage (an
    ``async for`` left by ``break``). The reader may be in another thread than the subscriber.
    """

    def __init__(self, sub: Subscriber, target: str, types: Iterable[str] | None, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.dropped = 0
        self._sub = sub
        self._items: deque[Update] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None  # the reader's, known at its first wait
        self._ready: asyncio.Event | None = None
        self._closed = False
        ref = weakref.ref(self)

        def push(update: Update) -> None:  # holds the stream weakly, so garbage can unsubscribe it
            stream = ref()
            if stream is not None:
                stream._push(update)

        self.handle = sub.on(target, push, types=types)
        self._unsubscribe = weakref.finalize(self, sub.off, self.handle)

    def __len__(self) -> int:
        return len(self._items)

    def _push(self, update: Update) -> None:
        """Called by the subscriber's dispatcher, in its thread."""
        dropped = False
        with self._lock:
            if self._closed:
                return
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
                dropped = True
            self._items.append(update)
            loop, ready = self._loop, self._ready
        if dropped:
            self._sub._dropped()
        if loop is not None and ready is not None:
            _set_event(loop, ready)

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Update:
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                if self._closed:
                    raise StopAsyncIteration
                if self._ready is None:
                    self._loop, self._ready = asyncio.get_running_loop(), asyncio.Event()
                self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        """Unsubscribe and end the iteration; what is still queued is dropped. Thread-safe."""
        with self._lock:
            self._closed = True
            self._items.clear()
            loop, ready = self._loop, self._ready
        self._unsubscribe()
        if loop is not None and ready is not None:
            _set_event(loop, ready)

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


def _set_event(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
    """``event.set()`` on ``loop``, from that loop's thread or any other."""
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        event.set()
    else:
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
            loop.call_soon_threadsafe(event.set)


class _Live:
    """One connection's reads and liveness: a PING after ``PING_EVERY_S`` of silence; one unanswered
    after ``PING_TIMEOUT_S`` means the connection is dead. The caller sets ``pinged = None`` on a reply."""

    def __init__(self, wire: Wire) -> None:
        self.wire, self.loop = wire, asyncio.get_running_loop()
        self.heard = self.slice_began = self.loop.time()
        self.pinged: float | None = self.heard  # the PING that ends the first sync

    async def replies(self) -> list[Any]:
        """What arrived within ``POLL_S`` ([] when nothing: then PINGs as due; raises when dead)."""
        replies = await self.wire.replies(POLL_S)
        now = self.loop.time()
        if replies:
            self.heard = now
            return replies
        self.slice_began = now
        if self.pinged is not None:
            if now - self.pinged > PING_TIMEOUT_S:
                raise RedisConnectionError(f"no reply to PING within {PING_TIMEOUT_S}s")
        elif now - self.heard >= PING_EVERY_S:
            self.wire.send(command("PING", _PING))
            await self.wire.drain()
            self.pinged = now
        return replies

    async def pause(self) -> None:
        """Buffered messages are read without a pause: let the others run after ``SLICE_S`` of it."""
        if self.loop.time() - self.slice_began >= SLICE_S:
            await asyncio.sleep(0)
            self.slice_began = self.loop.time()


async def _cancellation_wins(work: Awaitable[None]) -> None:
    """A connection error raised while being cancelled (the socket closed under the read) ends the task
    as cancelled: a shutdown that cancels it then reports no "unhandled exception"."""
    try:
        await work
    except CONNECTION_ERRORS:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError from None
        raise


async def _until(work: Awaitable[None], stop: asyncio.Event, dispatcher: asyncio.Task[None]) -> None:
    """Run ``work`` until it ends, ``stop`` is set or ``dispatcher`` ends (cancelling it then); re-raise
    what it raised. Cancelling the reader is safe: its connection is thrown away after."""
    task = asyncio.ensure_future(_cancellation_wins(work))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped, dispatcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        if task.done() and not task.cancelled():
            task.exception()  # retrieved even when we are cancelled ourselves (no "never retrieved")
    if not task.cancelled():
        task.result()
