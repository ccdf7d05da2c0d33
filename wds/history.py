"""Chart history for ``bars.SYM`` snapshots, the gateway's side: which symbols lack it, and a task per
symbol that ends when it is stored (True) or known missing, or not coming (False).

- Without the vendor key (the deployments: the key stays with MDL and MDP, away from the one process
  clients reach) WDS asks the processors (``mdc.historyfetch.HistoryFetcher.serve``): the symbol goes on
  ``Names.history_requests`` (bounded to ``MAX_REQUESTS``, gone ``REQUESTS_TTL_S`` after the last push)
  and the task polls for what they store, at most ``ANSWER_S``. It asks only while a processor says it
  serves (``Names.history_server``, read every ``WATCH_EVERY_S``), whose REST status is then WDS's
  ``rest`` on ``/readyz``; none: history is off.
- With a key of its own (``MASSIVE_API_KEY`` given to WDS), it fetches itself (``HistoryFetcher.fetch``).

Either way one task per symbol is in flight per process, and the cross-process lock, the TTLs and the
miss markers are the fetcher's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from mdc.historyfetch import HistoryFetcher, Tasks
from mdc.names import Names

from . import metrics

log = logging.getLogger(__name__)

MAX_REQUESTS = 1000  # waiting in Redis for the processors; the oldest are dropped past it
REQUESTS_TTL_S = 60  # nobody popping them for this long: they are dropped
ANSWER_S = 30.0  # a request unanswered by then is given up (a later subscription asks again)
POLL_FIRST_S, POLL_S = 0.025, 0.2
WATCH_EVERY_S = 2.0
MAX_ASKING = 64  # symbols asked for and polled at once per process


class History:
    def __init__(
        self,
        redis: Redis,
        names: Names,
        fetcher: HistoryFetcher | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis, self.names, self.fetcher, self.clock = redis, names, fetcher, clock
        self.server: dict[str, Any] | None = None  # the serving processor's announcement, last read
        self.asking = Tasks(MAX_ASKING)

    def readiness(self) -> dict[str, Any]:
        """The REST side: this process's own, or that of the processor serving its requests."""
        if self.fetcher is not None:
            return self.fetcher.readiness()
        return dict(self.server) if self.server is not None else {"status": "off"}

    async def watch(self, stop: asyncio.Event) -> None:
        """Keep ``server`` current (asking): whether a processor serves, and its REST status."""
        while not stop.is_set():
            try:
                raw = await self.redis.get(self.names.history_server())
                server = orjson.loads(raw) if raw else None
                self.server = server if isinstance(server, dict) and "status" in server else None
            except (RedisError, OSError, orjson.JSONDecodeError):
                pass  # kept: the snapshots' own reads say whether Redis is there
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_EVERY_S)

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
        """The task that gets ``sym``'s history (True once stored); None when none is to come now."""
        if self.fetcher is not None:
            return self.fetcher.fetch(sym)
        task = self.asking.get(sym)
        if task is not None:
            return task
        if self.server is None:
            metrics.HISTORY.labels("off").inc()
            return None
        if self.asking.full:
            metrics.HISTORY.labels("busy").inc()
            return None
        metrics.HISTORY.labels("asked").inc()
        return self.asking.start(sym, self._ask(sym))

    async def close(self) -> None:
        await self.asking.close()
        if self.fetcher is not None:
            await self.fetcher.close()

    async def _ask(self, sym: str) -> bool:
        n = self.names
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.lpush(n.history_requests(), sym)
            pipe.ltrim(n.history_requests(), 0, MAX_REQUESTS - 1)
            pipe.expire(n.history_requests(), REQUESTS_TTL_S)
            await pipe.execute()
            give_up = self.clock() + ANSWER_S
            wait = POLL_FIRST_S
            while self.clock() < give_up:
                await asyncio.sleep(wait)
                wait = min(POLL_S, wait * 2)  # a cached answer comes in tens of ms, a vendor call later
                pipe = self.redis.pipeline(transaction=False)
                pipe.exists(n.history(sym))
                pipe.exists(n.history_miss(sym))
                stored, missed = await pipe.execute()
                if stored or missed:
                    return bool(stored)
        except (RedisError, OSError) as exc:
            log.warning("chart history: Redis unavailable", extra={"sym": sym, "error": repr(exc)})
            return False
        metrics.HISTORY.labels("unanswered").inc()
        return False
