"""The processor service (``mdpipe mdp``): the thin async adapter around the sans-I/O folds and merge.

For each group of MDQ messages (those already waiting in a queue, up to ``MDP_GROUP_EVENTS`` events):
fold it (``plan.Planner``, no state) while the queue's previous group is being written; then load the
state of symbols the processor does not hold yet (``book``: one round trip, after a start or a takeover),
merge the group into the state in memory (``merge.Merger``) and send the writes as ONE transaction
(``writes``) on the processor's write connection (``mdc.wire.Pipeline``); then the consumer acknowledges
it. Where events may be missing (a start, a takeover, lost messages, a vendor reconnect, a new day) the
state is hydrated from the vendor's REST snapshot (``hydration``), beside the stream. Redis away:
``Retry`` (the consumer holds the group and tries again until the queue TTL), and the
state in memory is dropped, to be loaded again from what Redis holds. Events a fold refused go to the
dead-letter queue with their reasons; the rest is applied. A message delivered again and already
written (its ``done`` marker is set) is left out. Beside it: the leaderboard publisher (at most once
per interval across replicas, a lock in Redis), the hydration loop, the gateways' chart history requests
(``mdc.historyfetch``), the heartbeat, and ``/metrics``, ``/healthz``, ``/readyz``. On a Redis Cluster
(a ``Target`` with seeds) the writes go through ``mdc.clusterpipe`` instead: one MULTI/EXEC per slot,
and a group written part way is retried without what landed (``_unwritten``; docs/mdp.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import hiredis
import orjson
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError

from mdc import migrate
from mdc.clusterpipe import ClusterPipeline
from mdc.connect import Target
from mdc.heartbeat import Heartbeat
from mdc.historyfetch import HistoryFetcher
from mdc.names import Names
from mdc.wire import KEEPALIVE, Pipeline, command
from mdpipe.backoff import Backoff
from mdpipe.massive import event_symbol
from mdpipe.observe import ObservabilityServer
from mdpipe.rest import VendorRest
from mdpipe.settings import ConfigError, MassiveRestSettings, MdcSettings, MdpSettings, MdqSettings, mask_url
from mdq import topology
from mdq.consumer import Consumer, Retry
from mdq.message import Batch

from . import metrics
from .book import LOAD_REPLIES, Book, SymbolState, load_commands
from .hydration import Hydration
from .merge import Merger
from .plan import ROUTES, STATEFUL, Plan, Planner
from .plugins import Plugin
from .scripts import Scripts
from .writes import Context, Writes, slot_marker

log = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0


def queues_for(classes: list[str], mdq: MdqSettings) -> list[str]:
    """The queues behind ``MDP_CLASSES``: ``trades`` is every shard of it, ``trades.2`` one shard."""
    queues: list[str] = []
    for name in classes:
        cls, dot, shard = name.partition(".")
        if not dot:
            queues += topology.class_queues(mdq.mdq_exchange, cls, mdq.mdq_shards)
        elif mdq.mdq_shards == 1 or int(shard) >= mdq.mdq_shards:
            raise ConfigError(
                f"invalid setting MDP_CLASSES: {name} is not a shard of MDQ_SHARDS={mdq.mdq_shards}"
            )
        else:
            queues.append(f"{mdq.mdq_exchange}.{cls}.{shard}")
    queues = list(dict.fromkeys(queues))
    shards = [
        {q[len(prefix) :] for q in queues if q == prefix or q.startswith(prefix + ".")}
        for prefix in (f"{mdq.mdq_exchange}.{cls}" for cls in STATS_CLASSES)
    ]
    if shards[0] != shards[1]:
        raise ConfigError(
            "invalid setting MDP_CLASSES: trades and aggregates both feed a symbol's day stats, which one "
            "replica owns: name the same shards of both (trades.0 with aggregates.0, or both classes whole)"
        )
    return queues


#: The classes whose events merge into the same document (the day stats): consumed together.
STATS_CLASSES = (topology.TRADES, topology.AGGREGATES)


#: Message ids this processor wrote lately, kept to leave out a repeat without asking Redis.
RECENT_IDS = 10_000
#: The rankings (md:rank:*) are written at most this often, with each symbol's newest scores: the
#: leaderboards read them once per MDP_LEADERS_INTERVAL_S, a busy symbol's score moves many times a second.
RANKS_EVERY_S = 0.2
#: Groups whose write on a Redis Cluster failed part way, remembered (by group id) for their retry.
UNSURE_GROUPS = 1000


@dataclass(slots=True)
class Work:
    """A folded group of consecutive messages of one queue."""

    batches: list[Batch]
    plan: Plan
    started: float  # perf_counter at folding


class ProcessorService:
    def __init__(
        self,
        mdq: MdqSettings,
        mdc: MdcSettings,
        mdp: MdpSettings,
        *,
        rabbitmq_url: str,
        redis_url: str | Target,
        plugins: list[Plugin] = (),  # type: ignore[assignment]
        rest: MassiveRestSettings | None = None,
    ) -> None:
        self.mdq, self.mdc, self.mdp = mdq, mdc, mdp
        self.names = Names(mdc.mdc_prefix)
        self.instance = mdp.mdp_instance or f"{socket.gethostname()}:{os.getpid()}"
        self.planner = Planner(mdp, list(plugins))
        self.scripts = Scripts()
        #: one Redis (a URL, as before) or a Redis Cluster (a Target with seeds: REDIS_CLUSTER_NODES)
        self.target = redis_url if isinstance(redis_url, Target) else Target(redis_url)
        self.redis_url = self.target.url
        client_name = f"mdp-{self.instance}"[:60].replace(" ", "_")
        self.redis = self.target.client(
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            socket_keepalive=True,
            health_check_interval=10,
            client_name=client_name,
            # fail fast: the consumer's retry-in-place is the retry loop, with the message held
            retry=RedisRetry(ExponentialBackoff(cap=0.05, base=0.01), 1),
        )
        #: the hot path's connection: loads and group transactions, in the order they are sent; on a
        #: cluster one per master (the loads routed by key, a group's writes one MULTI/EXEC per slot)
        self.cluster: ClusterPipeline | None = None
        if self.target.cluster:
            self.cluster = ClusterPipeline(self.target, client_name + "-w", REDIS_TIMEOUT_S, KEEPALIVE)
            self.pipeline: Pipeline | ClusterPipeline = self.cluster
        else:
            self.pipeline = Pipeline(self.redis_url, client_name + "-w", REDIS_TIMEOUT_S, KEEPALIVE)
        self.book = Book(mdp.mdp_max_symbols)
        self.context = Context(
            self.names, self.instance, ttl_s=mdc.mdc_state_ttl_s, feed=mdc.mdc_feed_length,
            done_ms=2 * mdq.mdq_message_ttl_ms + 1000, signal_recent=mdc.mdc_signal_recent,
            signal_ttl_s=mdc.mdc_signal_ttl_s, verb=self.target.publish_command,
        )  # fmt: skip
        self.merger = Merger(
            self.names,
            recent_trades=mdc.mdc_recent_trades,
            minute_bars=mdc.mdc_minute_bars,
            raw_events=mdc.mdc_raw_events,
            raw_ttl_s=mdc.mdc_raw_ttl_s,
            state_ttl_s=mdc.mdc_state_ttl_s,
            warmup_ms=int(mdp.mdp_alert_warmup_s * 1000),
            cooldown_ms=int(mdp.mdp_alert_cooldown_s * 1000),
            spike_ratio=mdp.mdp_spike_ratio,
            spike_min_volume=mdp.mdp_spike_min_volume,
        )
        self.queues = queues_for(mdp.class_list, mdq)
        self.consumer = Consumer(
            rabbitmq_url,
            mdq,
            self.queues,
            self,
            Backoff(0.5, 30.0, 30.0),
            prefetch=mdp.mdp_prefetch,
            group_events=mdp.mdp_group_events,
            name=f"mdp {self.instance}",
            on_outcome=_count_outcome,
        )
        self.rest = VendorRest(rest or MassiveRestSettings(massive_api_key=None))
        # the snapshot a hydration merges is the stocks market's (``VendorRest.snapshot_all``): the other
        # markets are not hydrated (yet)
        self.hydration = Hydration(
            self,
            self.rest,
            interval_s=mdp.mdp_hydrate_interval_s,
            enabled=mdp.mdp_hydrate and mdp.massive_market == "stocks",
        )
        #: the gateways' chart history requests, served where the vendor key is (see mdc.historyfetch)
        self.history = HistoryFetcher(
            self.redis, self.names, self.rest, mdc, self.planner.day, instance=self.instance
        )
        self.http = ObservabilityServer(mdp.mdp_http_host, mdp.mdp_http_port, readiness=self.readiness)
        self.heartbeat = Heartbeat(self.redis, self.names, "mdp", self.instance, self.figures)
        self.redis_ok = False
        self._upgraded = False
        self.redis_error: str | None = None
        self.events = 0
        self.duplicates = 0
        self.loaded = 0  # symbols loaded from Redis (a start, a takeover, a reload after a failure)
        self.last_age_ms = 0.0
        #: cluster: group id -> the slots its failed write touched (the retry reads their markers)
        self._unsure: dict[str, set[int]] = {}
        self._written: OrderedDict[str, None] = OrderedDict()  # the newest RECENT_IDS message ids written
        self._loading: dict[str, asyncio.Future[None]] = {}  # symbols being loaded -> done when installed
        self._ranked = 0.0  # monotonic time the rankings were last written
        self._rate = (time.monotonic(), 0)

    # -- running --------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        log.info(
            "processor starting",
            extra={"queues": self.queues, "redis": mask_url(self.redis_url), "instance": self.instance,
                   "plugins": [p.plugin.name for p in self.planner.plugins]},
        )  # fmt: skip
        await self.http.start()
        with contextlib.suppress(RedisError, OSError):
            await self._load_scripts()
        tasks = [
            asyncio.create_task(self.consumer.run(stop), name="mdp-consumer"),
            asyncio.create_task(self._leaders_loop(stop), name="mdp-leaders"),
            asyncio.create_task(self._ranks_loop(stop), name="mdp-ranks"),
            asyncio.create_task(self.hydration.run(stop), name="mdp-hydration"),
            asyncio.create_task(self.heartbeat.run(stop), name="mdp-heartbeat"),
        ]
        if self.rest.enabled:
            tasks.append(asyncio.create_task(self.history.serve(stop), name="mdp-history"))
        try:
            await stop.wait()
        finally:
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, STOP_TIMEOUT_S)
            await self.http.stop()
            with contextlib.suppress(RedisError, OSError):
                await self.flush_ranks(now=True)  # what waited for the next flush is not lost by a stop
            await self.pipeline.close()
            await self.redis.aclose()
            metrics.BROKER_CONNECTED.set(0)

    async def _load_scripts(self) -> None:
        await self.scripts.load(self.redis)  # on a cluster: on every master (redis-py sends it to each)
        if not self._upgraded and self.cluster is None:  # an older version's names, moved once
            # (mdc.migrate; a cluster starts with this version's names: there is nothing to move)
            await migrate.upgrade(self.redis, self.names)
            self._upgraded = True
        self._redis_up()

    # -- one group of messages ------------------------------------------------------------------------

    def reset(self) -> None:
        """The consumer (re)connected: another replica may have owned these queues meanwhile, so what is
        held in memory may be behind Redis; it is loaded again as symbols come."""
        self.book.clear()
        self.hydration.reset()

    def lost(self, queue: str, why: str) -> None:
        """The consumer says events of ``queue`` may be missing: hydrate its shard."""
        self.hydration.want(queue, why)

    def prepare(self, batches: list[Batch]) -> Work:
        """The consumer's first step (no I/O, no state, overlaps the previous group's writes): fold."""
        return Work(batches, self.planner.plan(*batches), time.perf_counter())

    async def commit(self, work: Work) -> None:
        """The consumer's second step: returns when the group may be acknowledged, raises ``Retry`` when
        Redis is away; anything else (a bug) rejects the group to the dead-letter queue."""
        written = self._written
        if any(batch.repeat or batch.message_id in written for batch in work.batches):
            work = await self._without_done(work)  # type: ignore[assignment]
            if work is None:
                return
        now = time.time_ns()
        for batch in work.batches:
            metrics.MESSAGE_AGE.observe(max(0, now - batch.recv_ns) / 1e9)
        self.last_age_ms = max(0, now - work.batches[0].recv_ns) / 1e6
        await self._apply(work)
        if work.plan.invalid:
            await self._dead_letter(work)
        applied = 0
        for fold, n in work.plan.events.items():
            metrics.EVENTS_BY_FOLD[fold].inc(n)
            applied += n
        self.events += applied
        metrics.GROUP_MESSAGES.observe(len(work.batches))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - work.started)

    async def _without_done(self, work: Work) -> Work | None:
        """A message delivered again may have been written already, alone or in a group (its marker is
        set in the same transaction as its writes): leave those out. Known here, or one round trip."""
        rest = [batch for batch in work.batches if batch.message_id not in self._written]
        if any(batch.repeat for batch in rest):
            try:
                marks = await self._mget([self.names.done(batch.message_id) for batch in rest])
            except (RedisError, OSError) as exc:
                self._redis_down(exc)
                raise Retry(f"redis: {exc}") from None
            rest = [batch for batch, mark in zip(rest, marks, strict=True) if mark is None]
        if len(rest) < len(work.batches):
            self.duplicates += len(work.batches) - len(rest)
            metrics.MESSAGES.labels("duplicate").inc(len(work.batches) - len(rest))
        if not rest:
            return None
        return work if len(rest) == len(work.batches) else self.prepare(rest)

    async def _mget(self, keys: list[str]) -> list[Any]:
        """MGET; on a cluster the keys span slots: one GET per key, pipelined per master."""
        if self.cluster is None:
            return await self.redis.mget(keys)
        return await self.redis.mget_nonatomic(keys)  # type: ignore[union-attr]

    async def _apply(self, work: Work) -> None:
        """Load what is missing, merge, write: one transaction. Whatever goes wrong once the merge has
        begun, the state in memory may be ahead of Redis: it is dropped and loaded again."""
        plan, group = work.plan, None
        try:
            if self.cluster is not None:
                group = f"{work.batches[0].message_id}+{len(work.batches)}"
                plan = await self._unwritten(work, group)
            await self._load(plan.symbols)
            writes = Writes(self.context, time.time_ns() // 1_000_000)
            day = self.book.day
            self.merger.apply(plan, self.book, writes)
            if day is not None and self.book.day != day:
                self.hydration.want_all("day")  # a new trading day: its previous closes
            now = time.monotonic()
            if self.book.ranks and now - self._ranked >= RANKS_EVERY_S:
                writes.rankings(*self.book.take_rankings())
                self._ranked = now
            for batch in work.batches:
                writes.done(batch.message_id)
            await (self._write(writes) if group is None else self._write_cluster(writes, group))
        except (RedisError, OSError) as exc:
            self.book.clear()
            if isinstance(exc, _Refused) and not _transient(str(exc)):
                metrics.REDIS_ERRORS.labels("refused").inc()
                raise  # Redis refused a write: a bug, the group goes to the dead-letter queue
            self._redis_down(exc)
            raise Retry(f"redis: {exc}") from None
        except BaseException:
            self.book.clear()
            raise
        self._redis_up()
        self.book.trim()
        metrics.SYMBOLS_HELD.set(len(self.book))
        metrics.PUBLISHED.inc(writes.publishes)
        metrics.APPLIED.inc(len(work.batches))
        written = self._written
        for batch in work.batches:
            written[batch.message_id] = None
        while len(written) > RECENT_IDS:
            written.popitem(last=False)

    async def load(self, symbols: set[str]) -> None:
        """The state of ``symbols`` from Redis, those not held (for a hydration)."""
        try:
            await self._load(symbols)
        except (RedisError, OSError) as exc:
            self._redis_down(exc)
            raise

    async def write_hydration(self, writes: Writes) -> None:
        """A hydration's transaction, in order with the groups'; a failure drops the state in memory
        (it may be ahead of Redis), as a group's does."""
        try:
            await self._write(writes)
        except (RedisError, OSError) as exc:
            self.book.clear()
            self._redis_down(exc)
            raise
        self._redis_up()
        metrics.PUBLISHED.inc(writes.publishes)

    async def _write(self, writes: Writes) -> None:
        """Send ``writes`` as one transaction; ``_Refused`` when Redis refused any of it."""
        if self.cluster is not None:
            await self._write_cluster(writes)
            return
        replies = await self.pipeline.execute(*writes.transaction())
        for reply in replies:
            _check(reply)  # the first error: a queued command refused (then EXECABORT), or one in EXEC
        if replies[-1] is None:
            raise _Refused("transaction aborted")

    async def _write_cluster(self, writes: Writes, group: str | None = None) -> None:
        """``writes`` on a cluster: one MULTI/EXEC per slot, then WAIT on each master, the redelivery
        markers last (``mdc.clusterpipe``). A failure part way may leave some slots written: with a
        ``group`` id each slot's transaction sets its marker of the group, and the slots are noted, so
        that the retry leaves out what was written (``_unwritten``; docs/mdp.md, "Redis Cluster")."""
        assert self.cluster is not None
        slots, last = writes.by_slot(group)
        try:
            written = await self.cluster.write(slots, last)
        except (RedisError, OSError):
            if group is not None:
                self._unsure.setdefault(group, set()).update(slots)
                while len(self._unsure) > UNSURE_GROUPS:
                    self._unsure.pop(next(iter(self._unsure)))
            raise
        for reply in written.replies:
            _check(reply)
        if group is not None:
            self._unsure.pop(group, None)
        if written.unreplicated:
            metrics.UNREPLICATED.inc()

    async def _unwritten(self, work: Work, group: str) -> Plan:
        """The plan of what is left to write of a group on a cluster: all of it, unless an earlier
        attempt failed part way; then the events of symbols whose slot has the group's marker (their
        writes landed, and the book, loaded again, holds them) are left out, and the rest planned again.
        Merging them twice would count their trades twice."""
        slots = self._unsure.get(group)
        if not slots:
            return work.plan
        assert self.cluster is not None
        order = sorted(slots)
        keys = [slot_marker(self.names, slot, group) for slot in order]
        marks = await self.cluster.execute(b"".join(command("GET", k) for k in keys), len(keys))
        done = {slot for slot, mark in zip(order, marks, strict=True) if mark is not None}
        if not done:
            return work.plan
        stats = self.names.stats
        batches = []
        for batch in work.batches:
            kept = [e for e in batch.events if _slot_of(e, stats) not in done]
            batches.append(dataclasses.replace(batch, events=kept))
        log.info("a group written part way is retried without its written slots",
                 extra={"group": group, "slots": len(slots), "written": len(done)})  # fmt: skip
        return self.planner.plan(*batches)

    async def _load(self, symbols: set[str]) -> None:
        """The state of the symbols not held, from Redis, in one round trip. Symbols another queue's
        commit is loading already are waited for, not read twice (at start every queue meets them)."""
        missing = self.book.missing(symbols)
        if not missing:
            return
        loading = self._loading
        others = {loading[sym] for sym in missing if sym in loading}
        mine = [sym for sym in missing if sym not in loading]
        if mine:
            done = asyncio.get_running_loop().create_future()
            for sym in mine:
                loading[sym] = done
            try:
                replies = await self.pipeline.execute(
                    b"".join(load_commands(self.names, sym) for sym in mine), LOAD_REPLIES * len(mine)
                )
                for reply in replies:
                    _check(reply)
                self.book.install(
                    [SymbolState.from_replies(sym, replies[i * LOAD_REPLIES : (i + 1) * LOAD_REPLIES])
                     for i, sym in enumerate(mine)]
                )  # fmt: skip
            finally:
                for sym in mine:
                    if loading.get(sym) is done:
                        del loading[sym]
                done.set_result(None)  # the waiters look again at what the book holds
            self.loaded += len(mine)
            metrics.SYMBOLS_LOADED.inc(len(mine))
        if others:
            await asyncio.gather(*others)
            if self.book.missing(symbols):  # that load failed (or the book was dropped): our turn
                await self._load(symbols)

    async def _dead_letter(self, work: Work) -> None:
        """Each message's invalid events to the dead-letter queue, with that message's headers."""
        invalid = work.plan.invalid
        if len(work.batches) == 1:
            by_batch = {0: invalid}
        else:
            index = {id(event): n for n, batch in enumerate(work.batches) for event in batch.events}
            by_batch = {}
            for item in invalid:
                by_batch.setdefault(index.get(id(item[0]), 0), []).append(item)
        for n, items in by_batch.items():
            batch = work.batches[n]
            metrics.INVALID.labels(batch.cls or "unknown").inc(len(items))
            reason = f"{len(items)} invalid events; first: {items[0][1]}"
            letter = [{"event": event, "reason": why} for event, why in items]
            if await self.consumer.dead_letter(batch, letter, reason):
                metrics.DEAD_LETTERS.labels("invalid_events").inc()
            else:
                metrics.DEAD_LETTERS_LOST.inc(len(items))
            log.warning("invalid events dead-lettered",
                        extra={"queue": batch.queue, "count": len(items), "reason": items[0][1]})  # fmt: skip

    def _redis_up(self) -> None:
        if not self.redis_ok:
            log.info("redis available")
        self.redis_ok, self.redis_error = True, None
        metrics.REDIS_OK.set(1)

    def _redis_down(self, exc: BaseException) -> None:
        metrics.REDIS_ERRORS.labels(type(exc).__name__).inc()
        if self.redis_ok:
            log.warning("redis unavailable", extra={"error": repr(exc)})
        self.redis_ok, self.redis_error = False, repr(exc)
        metrics.REDIS_OK.set(0)

    # -- leaderboards ---------------------------------------------------------------------------------

    async def flush_ranks(self, *, now: bool = False) -> None:
        """Write the rankings still pending when no group came to carry them (the stream went quiet),
        or, ``now``, whatever is pending (a clean stop)."""
        if not self.book.ranks or (not now and time.monotonic() - self._ranked < RANKS_EVERY_S):
            return
        writes = Writes(self.context, time.time_ns() // 1_000_000)
        writes.rankings(*self.book.take_rankings())
        self._ranked = time.monotonic()
        await self._write(writes)

    async def _ranks_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RANKS_EVERY_S)
            try:
                await self.flush_ranks()
            except (RedisError, OSError) as exc:  # lost: each symbol's next stats write ranks it again
                self._redis_down(exc)

    async def publish_leaders(self) -> list[str]:
        """Publish the boards that changed, unless another replica did within the interval."""
        ctx = self.context.script_context(time.time_ns() // 1_000_000)
        args = [self.mdp.mdp_leaders_n, max(1, int(self.mdp.mdp_leaders_interval_s * 1000) - 10)]
        try:
            sha, key = self.scripts.sha["leaders"], self.names.day()  # KEYS[1]: routes the call on a cluster
            published = await self.redis.evalsha(sha, 1, key, ctx, orjson.dumps(args))
        except NoScriptError:
            await self._load_scripts()
            return []
        boards = [b.decode() if isinstance(b, bytes) else b for b in published or []]
        metrics.LEADERS.inc(len(boards))
        return boards

    async def _leaders_loop(self, stop: asyncio.Event) -> None:
        interval = self.mdp.mdp_leaders_interval_s
        while not stop.is_set():
            try:
                await self.publish_leaders()
            except (RedisError, OSError) as exc:
                self._redis_down(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    # -- reporting ------------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        metrics.BROKER_CONNECTED.set(1 if self.consumer.connected else 0)
        for plugin in self.planner.plugins:
            metrics.PLUGIN_ERRORS.labels(plugin.plugin.name).set(plugin.errors)
        ready = self.consumer.connected and self.redis_ok
        return ready, {
            "broker": "connected" if self.consumer.connected else (self.consumer.last_error or "connecting"),
            "redis": "ok" if self.redis_ok else (self.redis_error or "connecting"),
            "queues": self.queues,
            "hydration": self.hydration.readiness(),
            "history": {"status": self.rest.status, "served": self.history.served},
            **self._consumer_figures(),
        }

    def _consumer_figures(self) -> dict[str, Any]:
        s = self.consumer.stats
        return {"handled": s.handled, "stale": s.stale, "malformed": s.malformed, "failed": s.failed,
                "retried": s.retried, "seq_gaps": s.seq_gaps, "duplicates": self.duplicates,
                "symbols": len(self.book), "loaded": self.loaded}  # fmt: skip

    def figures(self) -> dict[str, Any]:
        """What the heartbeat carries."""
        now = time.monotonic()
        then, events = self._rate
        self._rate = (now, self.events)
        ready, _ = self.readiness()
        return {
            "ready": ready,
            "queues": self.queues,
            "events": self.events,
            "events_per_s": round((self.events - events) / max(now - then, 1e-3), 1),
            "lag_ms": round(self.last_age_ms, 1),
            "broker": self.consumer.connected,
            "redis": self.redis_ok,
            "hydration": self.hydration.readiness(),
            **self._consumer_figures(),
        }


def _slot_of(event: Any, stats: Any) -> int | None:
    """The cluster slot of the symbol whose state ``event`` changes (``stats``: ``Names.stats``); None
    for an event that changes no symbol's state (raw, or not an event)."""
    if type(event) is not dict:
        return None
    kind, sym = event.get("ev"), event_symbol(event)  # sym, T (LULD, V), pair (crypto) or p (forex C)
    if type(kind) is not str or sym is None or ROUTES.get(kind) not in STATEFUL:
        return None
    return key_slot(stats(sym).encode())


def _count_outcome(outcome: str) -> None:
    if outcome in ("stale", "malformed", "failed", "retried"):
        metrics.MESSAGES.labels(outcome).inc()
    if outcome in ("malformed", "failed"):  # rejected: RabbitMQ dead-letters it
        metrics.DEAD_LETTERS.labels(outcome).inc()


class _Refused(RedisError):
    """Redis answered a write with an error (inside the transaction, or the transaction aborted)."""


def _check(reply: Any) -> None:
    """Raise ``_Refused`` for an error reply, or a transaction reply holding one."""
    if isinstance(reply, hiredis.ReplyError):
        raise _Refused(str(reply))
    if isinstance(reply, list):
        for item in reply:
            if isinstance(item, hiredis.ReplyError):
                raise _Refused(str(item))


def _transient(text: str) -> bool:
    """Redis errors that pass: loading a dataset, a replica not yet writable, scripts busy."""
    return text.startswith(("LOADING", "READONLY", "BUSY", "MASTERDOWN", "TRYAGAIN"))
