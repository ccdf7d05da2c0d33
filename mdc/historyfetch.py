"""Chart history, the vendor's side: run by the process that holds the vendor key (MDP, which serves the
gateways' requests; or a WDS given a key of its own), the I/O around the pure ``mdc.history``.

- ``fetch(sym)``: the symbol's fetch as a task (True once its history is stored): the one already in
  flight in this process, or a new one; None while this process backs off after a failure, or when
  ``MAX_FETCHES`` are in flight (no queue of calls builds up).
- A fetch takes a short Redis lock (``Names.history_lock``): one process asks the vendor (one call,
  ``VendorRest.minute_bars``: rate-limited, in a worker thread), any other polls for what it stores: the
  bars (``Names.history``, the newest ``MDC_HISTORY_BARS``, TTL ``MDC_HISTORY_TTL_S``: at most one call
  per symbol per TTL), or a miss marker (``Names.history_miss``): ``unknown`` when the vendor has no
  bars of it (TTL ``MDC_HISTORY_MISS_TTL_S``), ``failed`` after a failure (TTL: the backoff's delay).
- A failure is logged (without the key: ``mdpipe.rest`` keeps it out) and counted, and the REST side's
  status turns ``degraded`` (the stream is unaffected). This process then makes no call for a capped
  exponential backoff (``MASSIVE_REST_BACKOFF_MAX_S``); the first request after it tries again.
- ``serve(stop)``: the processors' loop. It pops the gateways' requests (``Names.history_requests``,
  oldest first) and fetches them, and keeps ``Names.history_server`` (the REST side's status, TTL
  ``SERVER_TTL_S``) fresh: a gateway asks only while a server is there, and shows its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from mdpipe.backoff import Backoff
from mdpipe.rest import RestError, VendorRest
from mdpipe.settings import MdcSettings

from .history import fetch_range, history_members
from .names import Names
from .tradingday import TradingDay

log = logging.getLogger(__name__)

FETCHES = Counter(
    "mdpipe_history_fetches_total",
    "Chart history fetches, by result",
    # fetched, unknown (the vendor has no bars), failed, backoff (no call after a failure), busy (too
    # many in flight), answered (another process stored the answer first)
    ["result"],
)

MAX_FETCHES = 64  # in flight per process; at 5 calls/s (MASSIVE_REST_RATE) the last waits some 13 s
FOLLOW_EVERY_S = 0.2  # how often a process waiting for another's fetch looks for its answer
LOCK_MARGIN_S = 5.0  # the lock outlives the longest call (timeout x attempts) by this much
BACKOFF_INITIAL_S = 1.0
SERVER_EVERY_S = 2.0  # a server rewrites its announcement this often ...
SERVER_TTL_S = 6  # ... which lives this long (a stopped server is forgotten within it)
POP_TIMEOUT_S = 1  # BRPOP's own timeout: the loop sees a stop at least this often


class Tasks:
    """At most ``limit`` tasks in flight, one per symbol; a finished one is forgotten."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running: dict[str, asyncio.Task[bool]] = {}

    def __len__(self) -> int:
        return len(self.running)

    def get(self, sym: str) -> asyncio.Task[bool] | None:
        return self.running.get(sym)

    @property
    def full(self) -> bool:
        return len(self.running) >= self.limit

    def start(self, sym: str, work: Coroutine[Any, Any, bool]) -> asyncio.Task[bool]:
        task = asyncio.create_task(work, name=f"history-{sym}")
        self.running[sym] = task
        task.add_done_callback(lambda _: self.running.pop(sym, None))
        return task

    async def close(self) -> None:
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class HistoryFetcher:
    def __init__(
        self,
        redis: Redis,
        names: Names,
        rest: VendorRest,
        mdc: MdcSettings,
        days: TradingDay,
        *,
        instance: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis, self.names, self.rest, self.days = redis, names, rest, days
        self.keep, self.ttl_s = mdc.mdc_history_bars, mdc.mdc_history_ttl_s
        self.miss_ttl_s = mdc.mdc_history_miss_ttl_s
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        s = rest.settings
        self.lock_s = s.massive_rest_timeout_s * (s.massive_rest_retries + 1) + LOCK_MARGIN_S
        cap = max(BACKOFF_INITIAL_S, s.massive_rest_backoff_max_s)
        self.backoff = Backoff(BACKOFF_INITIAL_S, cap, healthy=0.0, clock=clock)
        self.retry_at = 0.0  # clock() before which this process makes no call
        self.clock = clock
        self.fetching = Tasks(MAX_FETCHES)
        self.served = 0  # requests popped

    def readiness(self) -> dict[str, Any]:
        return self.rest.readiness()

    def fetch(self, sym: str) -> asyncio.Task[bool] | None:
        """The fetch of ``sym``'s history (True once it is stored); None when none is made now."""
        task = self.fetching.get(sym)
        if task is not None:
            return task
        if self.clock() < self.retry_at:
            FETCHES.labels("backoff").inc()
            return None
        if self.fetching.full:
            FETCHES.labels("busy").inc()
            return None
        return self.fetching.start(sym, self._fetch(sym))

    async def close(self) -> None:
        await self.fetching.close()

    # -- serving the gateways ---------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event) -> None:
        """Fetch what the gateways ask for, until ``stop``; Redis away: tried again every second."""
        requests = self.names.history_requests()
        announced = 0.0
        try:
            while not stop.is_set():
                try:
                    if self.clock() - announced >= SERVER_EVERY_S:
                        await self._announce()
                        announced = self.clock()
                    popped = await self.redis.brpop([requests], timeout=POP_TIMEOUT_S)
                except (RedisError, OSError) as exc:
                    log.warning("chart history requests unavailable", extra={"error": repr(exc)})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
                    continue
                if popped is not None:
                    self.served += 1
                    self.fetch(popped[1].decode())
        finally:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.delete(self.names.history_server())
            await self.close()

    async def _announce(self) -> None:
        doc = {**self.rest.readiness(), "instance": self.instance}
        await self.redis.set(self.names.history_server(), orjson.dumps(doc), ex=SERVER_TTL_S)

    # -- one fetch --------------------------------------------------------------------------------------

    async def _fetch(self, sym: str) -> bool:
        try:
            return await self._locked(sym)
        except (RedisError, OSError) as exc:
            log.warning("chart history: Redis unavailable", extra={"sym": sym, "error": repr(exc)})
            return False

    async def _locked(self, sym: str) -> bool:
        """Ask the vendor under the lock, or wait for the process that holds it to store its answer."""
        n = self.names
        lock = self.redis.lock(n.history_lock(sym), timeout=self.lock_s, blocking=False, thread_local=False,
                               raise_on_release_error=False)  # fmt: skip
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.lock_s
        while loop.time() < give_up:
            if await lock.acquire():
                try:
                    return await self._call(sym)
                finally:
                    await lock.release()
            while loop.time() < give_up:
                await asyncio.sleep(FOLLOW_EVERY_S)
                pipe = self.redis.pipeline(transaction=False)
                pipe.exists(n.history(sym))
                pipe.exists(n.history_miss(sym))
                pipe.exists(n.history_lock(sym))
                stored, missed, locked = await pipe.execute()
                if stored or missed:
                    return bool(stored)
                if not locked:
                    break  # its holder ended without an answer (it stopped): ask ourselves
        return False

    async def _call(self, sym: str) -> bool:
        n = self.names
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(n.history(sym))
        pipe.exists(n.history_miss(sym))
        pipe.get(n.day())
        stored, missed, day = await pipe.execute()
        if stored or missed:  # another process answered between the request and the lock
            FETCHES.labels("answered").inc()
            return bool(stored)
        start, end = fetch_range(self.days, self._day(day))
        try:
            bars = await self.rest.minute_bars(sym, start, end)
        except RestError as exc:
            if exc.status != 404:
                await self._failed(sym, exc)
                return False
            bars = []  # the vendor does not know the symbol
        self.backoff.attempts, self.retry_at = 0, 0.0
        members = history_members(bars, start, end, self.keep)
        if not members:
            FETCHES.labels("unknown").inc()
            await self.redis.set(n.history_miss(sym), b"unknown", ex=self.miss_ttl_s)
            return False
        key = n.history(sym)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.zadd(key, {json: t for t, json in members})
        pipe.expire(key, self.ttl_s)
        pipe.delete(n.history_miss(sym))
        await pipe.execute()
        FETCHES.labels("fetched").inc()
        return True

    def _day(self, stored: bytes | None) -> str:
        """The trading day the processors last saw (the market's clock, which the emulator sets), or the
        wall clock's when none is stored."""
        if stored:
            with contextlib.suppress(ValueError):
                return dt.date.fromisoformat(stored.decode()).isoformat()
        return self.days(int(time.time() * 1000))

    async def _failed(self, sym: str, exc: RestError) -> None:
        delay = self.backoff.next_delay()
        self.retry_at = self.clock() + delay
        FETCHES.labels("failed").inc()
        extra = {"sym": sym, "error": str(exc), "retry_in_s": round(delay, 1)}
        log.warning("chart history not fetched", extra=extra)
        # the other processes wait as long before asking for this symbol
        await self.redis.set(self.names.history_miss(sym), b"failed", px=max(1, int(delay * 1000)))
