"""The processor service (``mdpipe mdp``): the thin async adapter around the sans-I/O planner.

For each group of MDQ messages (those already waiting in a queue, up to ``MDP_GROUP_EVENTS`` events):
plan it (``plan.Planner``) while the queue's previous group is being written, send every script call
of the plan in ONE Redis pipeline round trip, then let the consumer acknowledge it. Redis away:
``Retry`` (the consumer holds the group and tries again until the queue TTL). Events a fold refused go
to the dead-letter queue with their reasons; the rest is applied. A message delivered again and already
written (its ``done`` marker is set) is left out. Beside it: the leaderboard publisher (at most once
per interval across replicas, a lock in Redis), the heartbeat, and ``/metrics``, ``/healthz``,
``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from mdc.heartbeat import Heartbeat
from mdc.names import Names
from mdpipe.backoff import Backoff
from mdpipe.observe import ObservabilityServer
from mdpipe.settings import ConfigError, MdcSettings, MdpSettings, MdqSettings, mask_url
from mdq import topology
from mdq.consumer import Consumer, Retry
from mdq.message import Batch

from . import metrics
from .plan import Plan, Planner
from .plugins import Plugin
from .scripts import Scripts

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
    return list(dict.fromkeys(queues))


@dataclass(slots=True)
class Work:
    """A planned group of consecutive messages of one queue."""

    batches: list[Batch]
    plan: Plan
    token: str  # the redelivery id of the group's calls: the first message's id (+ the group's size)
    started: float  # perf_counter at planning


class ProcessorService:
    def __init__(
        self,
        mdq: MdqSettings,
        mdc: MdcSettings,
        mdp: MdpSettings,
        *,
        rabbitmq_url: str,
        redis_url: str,
        plugins: list[Plugin] = (),  # type: ignore[assignment]
    ) -> None:
        self.mdq, self.mdc, self.mdp = mdq, mdc, mdp
        self.names = Names(mdc.mdc_prefix)
        self.instance = mdp.mdp_instance or f"{socket.gethostname()}:{os.getpid()}"
        self.planner = Planner(mdp, mdc, list(plugins))
        self.scripts = Scripts()
        self.redis_url = redis_url
        self.redis = Redis.from_url(
            redis_url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            socket_keepalive=True,
            health_check_interval=10,
            client_name=f"mdp-{self.instance}"[:60].replace(" ", "_"),
            # fail fast: the consumer's retry-in-place is the retry loop, with the message held
            retry=RedisRetry(ExponentialBackoff(cap=0.05, base=0.01), 1),
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
        self.http = ObservabilityServer(mdp.mdp_http_host, mdp.mdp_http_port, readiness=self.readiness)
        self.heartbeat = Heartbeat(self.redis, self.names, "mdp", self.instance, self.figures)
        self.redis_ok = False
        self.redis_error: str | None = None
        self.events = 0
        self.duplicates = 0
        self.last_age_ms = 0.0
        self._rate = (time.monotonic(), 0)
        self._static_ctx = {
            "p": self.names.prefix,
            "src": orjson.dumps(self.instance).decode(),
            "done_ms": 2 * mdq.mdq_message_ttl_ms + 1000,
            "ttl": mdc.mdc_state_ttl_s,
            "recent": mdc.mdc_recent_trades,
            "bars": mdc.mdc_minute_bars,
            "feed": mdc.mdc_feed_length,
            "raw": mdc.mdc_raw_events,
            "raw_ttl": mdc.mdc_raw_ttl_s,
            "warmup_ms": int(mdp.mdp_alert_warmup_s * 1000),
            "cooldown_ms": int(mdp.mdp_alert_cooldown_s * 1000),
            "spike_ratio": mdp.mdp_spike_ratio,
            "spike_min": mdp.mdp_spike_min_volume,
        }

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
            asyncio.create_task(self.heartbeat.run(stop), name="mdp-heartbeat"),
        ]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, STOP_TIMEOUT_S)
            await self.http.stop()
            await self.redis.aclose()
            metrics.BROKER_CONNECTED.set(0)

    async def _load_scripts(self) -> None:
        await self.scripts.load(self.redis)
        self._redis_up()

    # -- one group of messages ------------------------------------------------------------------------

    def prepare(self, batches: list[Batch]) -> Work:
        """The consumer's first step (no I/O, overlaps the previous group's writes): plan the group."""
        first = batches[0].message_id
        token = first if len(batches) == 1 else f"{first}+{len(batches)}"
        return Work(batches, self.planner.plan(*batches), token, time.perf_counter())

    async def commit(self, work: Work) -> None:
        """The consumer's second step: returns when the group may be acknowledged, raises ``Retry`` when
        Redis is away; anything else (a bug) rejects the group to the dead-letter queue."""
        if any(batch.repeat for batch in work.batches):
            work = await self._without_done(work)  # type: ignore[assignment]
            if work is None:
                return
        now = time.time_ns()
        for batch in work.batches:
            metrics.MESSAGE_AGE.observe(max(0, now - batch.recv_ns) / 1e9)
        self.last_age_ms = max(0, now - work.batches[0].recv_ns) / 1e6
        plan = work.plan
        if plan.calls:
            await self._apply(work)
        if plan.invalid:
            await self._dead_letter(work)
        applied = 0
        for fold, n in plan.events.items():
            metrics.EVENTS.labels(fold).inc(n)
            applied += n
        self.events += applied
        metrics.GROUP_MESSAGES.observe(len(work.batches))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - work.started)

    async def _without_done(self, work: Work) -> Work | None:
        """A message delivered again may have been written already, alone or in a group (its marker is
        set once every call of its group has run): leave those out. One round trip, for repeats only."""
        keys = [self.names.done(batch.message_id) for batch in work.batches]
        try:
            marks = await self.redis.mget(keys)
        except (RedisError, OSError) as exc:
            self._redis_down(exc)
            raise Retry(f"redis: {exc}") from None
        rest = [batch for batch, mark in zip(work.batches, marks, strict=True) if mark is None]
        if len(rest) < len(work.batches):
            self.duplicates += len(work.batches) - len(rest)
            metrics.MESSAGES.labels("duplicate").inc(len(work.batches) - len(rest))
        if not rest:
            return None
        return work if len(rest) == len(work.batches) else self.prepare(rest)

    async def _apply(self, work: Work) -> None:
        plan = work.plan
        results = None
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            sent = str(time.time_ns() // 1_000_000)
            for call in plan.calls:
                ctx = {**self._static_ctx, "done": f"{work.token}:{call.chunk}", "sent": sent}
                pipe.evalsha(self.scripts.sha[call.script], 0, orjson.dumps(ctx), orjson.dumps(call.records))
            # Each message's marker, after its group's calls: Redis runs a pipeline in order, so a set
            # marker means the whole group was written (see _without_done).
            for batch in work.batches:
                pipe.set(self.names.done(batch.message_id), 1, px=self._static_ctx["done_ms"])
            try:
                results = await pipe.execute()
                break
            except NoScriptError:
                # Redis restarted and lost the scripts; calls that did run are guarded against a rerun
                metrics.REDIS_ERRORS.labels("noscript").inc()
                if attempt == 2:
                    raise Retry("scripts missing after loading them") from None
                await self._safe_load()
            except (RedisError, OSError) as exc:
                if isinstance(exc, ResponseError) and not _transient(exc):
                    metrics.REDIS_ERRORS.labels("script").inc()
                    raise  # a script error is a bug: the message goes to the dead-letter queue
                self._redis_down(exc)
                raise Retry(f"redis: {exc}") from None
        self._redis_up()
        scripts = (results or [])[: len(plan.calls)]
        if scripts and all(r == b"duplicate" or r == "duplicate" for r in scripts):
            self.duplicates += len(work.batches)
            metrics.MESSAGES.labels("duplicate").inc(len(work.batches))
        else:
            metrics.MESSAGES.labels("applied").inc(len(work.batches))

    async def _safe_load(self) -> None:
        try:
            await self._load_scripts()
        except (RedisError, OSError) as exc:
            self._redis_down(exc)
            raise Retry(f"redis: {exc}") from None

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

    async def publish_leaders(self) -> list[str]:
        """Publish the boards that changed, unless another replica did within the interval."""
        ctx = {**self._static_ctx, "sent": str(time.time_ns() // 1_000_000)}
        args = [self.mdp.mdp_leaders_n, max(1, int(self.mdp.mdp_leaders_interval_s * 1000) - 10)]
        try:
            published = await self.redis.evalsha(
                self.scripts.sha["leaders"], 0, orjson.dumps(ctx), orjson.dumps(args)
            )
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
            **self._consumer_figures(),
        }

    def _consumer_figures(self) -> dict[str, Any]:
        s = self.consumer.stats
        return {"handled": s.handled, "stale": s.stale, "malformed": s.malformed, "failed": s.failed,
                "retried": s.retried, "seq_gaps": s.seq_gaps, "duplicates": self.duplicates}  # fmt: skip

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
            **self._consumer_figures(),
        }


def _count_outcome(outcome: str) -> None:
    if outcome in ("stale", "malformed", "failed", "retried"):
        metrics.MESSAGES.labels(outcome).inc()
    if outcome in ("malformed", "failed"):  # rejected: RabbitMQ dead-letters it
        metrics.DEAD_LETTERS.labels(outcome).inc()


def _transient(exc: ResponseError) -> bool:
    """Redis errors that pass: loading a dataset, a replica not yet writable, scripts busy."""
    text = str(exc)
    return text.startswith(("LOADING", "READONLY", "BUSY", "MASTERDOWN", "TRYAGAIN"))
