"""Chart history for ``bars.SYM`` snapshots, the I/O side of ``mdc.history``: the vendor's minute bars of
the day and of the previous trading day, asked for once per symbol and cached in MDC for every replica.

- ``missing(syms)``: the symbols with neither a cached history nor a miss marker (one round trip).
- ``fetch(sym)``: the symbol's fetch as a task: the one already in flight in this process, or a new
  one; None while this process backs off after a failure, or when ``MAX_FETCHES`` are in flight (the
  snapshot then goes without history rather than behind a queue of calls).
- A fetch takes a short Redis lock (``Names.history_lock``): one replica asks the vendor (one call,
  ``VendorRest.minute_bars``, under its rate limit, in a worker thread), the others poll for what it
  stores: the bars (``Names.history``, the newest ``MDC_HISTORY_BARS``, TTL ``MDC_HISTORY_TTL_S``: at
  most one call per symbol per TTL), or a miss marker (``Names.history_miss``): ``unknown`` when the
  vendor has no bars of it (TTL ``MDC_HISTORY_MISS_TTL_S``), ``failed`` after a failure (TTL: the
  backoff's delay).
- A failure is logged (without the key: ``mdpipe.rest`` keeps it out), counted, and ``/readyz`` shows
  the REST side ``degraded`` (the stream is unaffected). This process then makes no call for a capped
  exponential backoff (``MASSIVE_REST_BACKOFF_MAX_S``); the first request after it tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from mdc.history import fetch_range, history_members
from mdc.names import Names
from mdc.tradingday import TradingDay
from mdpipe.backoff import Backoff
from mdpipe.rest import RestError, VendorRest
from mdpipe.settings import MdcSettings

from . import metrics

log = logging.getLogger(__name__)

MAX_FETCHES = 64  # in flight per process; at 5 calls/s (MASSIVE_REST_RATE) the last waits some 13 s
FOLLOW_EVERY_S = 0.2  # how often a replica waiting for another's fetch looks for its answer
LOCK_MARGIN_S = 5.0  # the lock outlives the longest call (timeout x attempts) by this much
BACKOFF_INITIAL_S = 1.0


class History:
    def __init__(
        self,
        redis: Redis,
        names: Names,
        rest: VendorRest,
        mdc: MdcSettings,
        days: TradingDay,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis, self.names, self.rest, self.days = redis, names, rest, days
        self.keep, self.ttl_s = mdc.mdc_history_bars, mdc.mdc_history_ttl_s
        self.miss_ttl_s = mdc.mdc_history_miss_ttl_s
        s = rest.settings
        self.lock_s = s.massive_rest_timeout_s * (s.massive_rest_retries + 1) + LOCK_MARGIN_S
        cap = max(BACKOFF_INITIAL_S, s.massive_rest_backoff_max_s)
        self.backoff = Backoff(BACKOFF_INITIAL_S, cap, healthy=0.0, clock=clock)
        self.retry_at = 0.0  # clock() before which this process makes no call
        self.clock = clock
        self.fetching: dict[str, asyncio.Task[bool]] = {}

    def readiness(self) -> dict[str, Any]:
        return self.rest.readiness()

    async def missing(self, syms: list[str]) -> list[str]:
        """Those of ``syms`` whose history is neither cached nor known to be missing."""
        pipe = self.redis.pipeline(transaction=False)
        for sym in syms:
            pipe.exists(self.names.history(sym), self.names.history_miss(sym))
        found = await pipe.execute()
        out = [sym for sym, n in zip(syms, found, strict=True) if not n]
        if len(out) < len(syms):
            metrics.HISTORY.labels("cached").inc(len(syms) - len(out))
        return out

    def fetch(self, sym: str) -> asyncio.Task[bool] | None:
        """The fetch of ``sym``'s history (True once it is stored); None when none is made now."""
        task = self.fetching.get(sym)
        if task is not None:
            return task
        if self.clock() < self.retry_at:
            metrics.HISTORY.labels("backoff").inc()
            return None
        if len(self.fetching) >= MAX_FETCHES:
            metrics.HISTORY.labels("busy").inc()
            return None
        task = asyncio.create_task(self._fetch(sym), name=f"wds-history-{sym}")
        self.fetching[sym] = task
        task.add_done_callback(lambda _: self.fetching.pop(sym, None))
        return task

    async def close(self) -> None:
        tasks = list(self.fetching.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one fetch --------------------------------------------------------------------------------------

    async def _fetch(self, sym: str) -> bool:
        try:
            return await self._locked(sym)
        except (RedisError, OSError) as exc:
            log.warning("chart history: Redis unavailable", extra={"sym": sym, "error": repr(exc)})
            return False

    async def _locked(self, sym: str) -> bool:
        """Ask the vendor under the lock, or wait for the replica that holds it to store its answer."""
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
        if stored or missed:  # another replica answered between our look and the lock
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
            metrics.HISTORY.labels("unknown").inc()
            await self.redis.set(n.history_miss(sym), b"unknown", ex=self.miss_ttl_s)
            return False
        key = n.history(sym)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.zadd(key, {json: t for t, json in members})
        pipe.expire(key, self.ttl_s)
        pipe.delete(n.history_miss(sym))
        await pipe.execute()
        metrics.HISTORY.labels("fetched").inc()
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
        metrics.HISTORY.labels("failed").inc()
        extra = {"sym": sym, "error": str(exc), "retry_in_s": round(delay, 1)}
        log.warning("chart history not fetched", extra=extra)
        # the other replicas wait as long before asking for this symbol
        await self.redis.set(self.names.history_miss(sym), b"failed", px=max(1, int(delay * 1000)))
