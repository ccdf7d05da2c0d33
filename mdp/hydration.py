"""When and how a processor hydrates: the async adapter around ``mdp.hydrate``.

What asks for a hydration (``want``): the consumer's ``lost(queue, why)`` (a queue's first message in a
session, which is a start or a takeover; a gap in ``mdq-seq``; a message dropped as stale; a listener
restart or vendor reconnect), and a new trading day. Each names the part and shard it concerns: the day
stats, last trade and previous close of a trades-and-aggregates shard, the last quote of a quotes shard.

``run`` serves them one hydration at a time, at most once per ``MDP_HYDRATE_INTERVAL_S`` (what asks
meanwhile is served by the next one): start the journal (``Merger.journal``: the trades merged from now
on), fetch the vendor's full-market snapshot (``mdpipe.rest``: rate-limited, in a worker thread, never on
the stream's path), keep the tickers of the wanted shards, load their states, merge and write in chunks
of ``CHUNK`` symbols (one transaction each, in order with the groups' writes on the processor's
connection), then stop the journal. A REST failure leaves the stream as it is: the shards stay wanted
and are retried after a capped backoff; ``/readyz`` says ``degraded``. A reset (the consumer
reconnected: these queues may be another replica's now) drops what was wanted and stops a hydration in
flight before its next chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from mdpipe.backoff import Backoff
from mdpipe.rest import RestError, VendorRest
from mdq import topology

from . import events as ev
from . import metrics
from .hydrate import Journal, SnapshotMerge, Ticker, parse_ticker, previous_closes
from .writes import Writes

if TYPE_CHECKING:
    from .service import ProcessorService

log = logging.getLogger(__name__)

#: Symbols merged and written per transaction: bounds how long the event loop merges without yielding
#: (about 20 us a symbol) and the size of one transaction.
CHUNK = 500
STATS, QUOTES = "stats", "quotes"
#: After the first ask, how long to wait for more before fetching: at start every queue's first message
#: asks within milliseconds of the others, and one snapshot serves them all.
GATHER_S = 0.25
#: The MDQ classes whose state a hydration restores, and which part of it.
PART_OF_CLASS = {topology.TRADES: STATS, topology.AGGREGATES: STATS, topology.QUOTES: QUOTES}


class Hydration:
    def __init__(
        self, service: ProcessorService, rest: VendorRest, *, interval_s: float, enabled: bool
    ) -> None:
        self.service = service
        self.rest = rest
        self.enabled = enabled and rest.enabled
        self.interval_s = interval_s
        self.shards = service.mdq.mdq_shards
        self.exchange = service.mdq.mdq_exchange
        self.day_of = service.planner.day
        self.merge = SnapshotMerge(service.merger, self.day_of)
        self.backoff = Backoff(min(interval_s, 1.0), rest.settings.massive_rest_backoff_max_s, 300.0)
        self.wanted: dict[str, set[int]] = {STATS: set(), QUOTES: set()}
        self.reasons: Counter[str] = Counter()  # why hydrations were wanted, since start
        self.epoch = 0  # +1 on every reset: a hydration begun before one is dropped
        self.running = False
        self.done = 0
        self.failed = 0
        self.last: dict[str, Any] | None = None  # figures of the last hydration
        self._wake = asyncio.Event()
        self._gathered = False  # the asks waiting have had their GATHER_S

    # -- asking -----------------------------------------------------------------------------------------

    def want(self, queue: str, why: str) -> None:
        """The consumer's ``lost(queue, why)``: hydrate the part of ``queue``'s shard."""
        cls, shard = self._class_shard(queue)
        part = PART_OF_CLASS.get(cls)
        if part is None or not self.enabled:
            return
        self.wanted[part].add(shard)
        self.reasons[why] += 1
        metrics.HYDRATIONS_WANTED.labels(why).inc()
        self._wake.set()

    def want_all(self, why: str) -> None:
        """Every shard this processor consumes (a new trading day: new previous closes)."""
        for queue in self.service.queues:
            self.want(queue, why)

    def reset(self) -> None:
        """The consumer reconnected: what was wanted may be another replica's now."""
        self.epoch += 1
        for shards in self.wanted.values():
            shards.clear()

    def _class_shard(self, queue: str) -> tuple[str, int]:
        name = queue[len(self.exchange) + 1 :] if queue.startswith(self.exchange + ".") else queue
        cls, _, shard = name.partition(".")
        return cls, int(shard) if shard.isdigit() else 0

    # -- serving ----------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        if not self.enabled:
            return
        last = -self.interval_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            if not any(self.wanted.values()):
                self._wake.clear()
                continue
            wait = max(last + self.interval_s - time.monotonic(), GATHER_S if not self._gathered else 0.0)
            if wait > 0:  # what asks meanwhile joins this one
                self._gathered = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
                continue
            self._wake.clear()
            self._gathered = False
            wanted = {part: set(shards) for part, shards in self.wanted.items()}
            for shards in self.wanted.values():
                shards.clear()
            last = time.monotonic()
            try:
                await self.hydrate(wanted)
            except _Dropped:
                continue
            except Exception as exc:  # a REST or Redis failure (or a bug): retried, never fatal
                self.failed += 1
                metrics.HYDRATIONS.labels("failed").inc()
                if not isinstance(exc, RestError | OSError) and "redis" not in type(exc).__module__:
                    log.exception("hydration failed")
                for part, shards in wanted.items():
                    self.wanted[part] |= shards
                delay = self.backoff.next_delay()
                error = str(exc) or repr(exc)
                retry = round(delay, 2)
                log.warning("hydration failed, retrying", extra={"error": error, "retry_in_s": retry})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                self._wake.set()
            else:
                self.backoff.reset()

    async def hydrate(self, wanted: dict[str, set[int]]) -> dict[str, Any]:
        """One hydration of the ``wanted`` parts and shards; its figures."""
        merger = self.service.merger
        epoch = self.epoch
        began = time.perf_counter()
        self.running = True
        journal = merger.journal = Journal()
        try:
            raw = await self.rest.snapshot_all()
            fetched = time.perf_counter()
            tickers, invalid = await asyncio.to_thread(_parse, raw)
            stats_shards, quote_shards = wanted[STATS], wanted[QUOTES]
            shards = stats_shards | quote_shards
            mine = [tk for tk in tickers if self._shard(tk.sym) in shards]
            # the snapshot's day: its day bars are of the day of their last trades (the vendor clears them
            # before a new day starts); with none yet, the clock's
            newest = _newest([tk for tk in mine if tk.day is not None])
            today = self.day_of(newest if newest is not None else time.time_ns() // 1_000_000)
            figures = {"tickers": len(tickers), "invalid": invalid, "symbols": 0, "stale": 0, "published": 0}
            if wanted[STATS] and mine and not any(tk.prev_close for tk in mine):
                figures["prev_closes"] = await self._previous_closes(mine, today)
            for i in range(0, len(mine), CHUNK):
                chunk = mine[i : i + CHUNK]
                await self._apply(chunk, journal, today, stats_shards, quote_shards, figures, epoch)
        finally:
            merger.journal = None
            self.running = False
        seconds = time.perf_counter() - began
        figures.update(seconds=round(seconds, 3), fetch_s=round(fetched - began, 3),
                       shards={p: sorted(s) for p, s in wanted.items() if s})  # fmt: skip
        self.done += 1
        self.last = figures
        metrics.HYDRATIONS.labels("done").inc()
        metrics.HYDRATION_SECONDS.observe(seconds)
        metrics.HYDRATED_SYMBOLS.inc(figures["symbols"])
        metrics.HYDRATION_STALE.inc(figures["stale"])
        log.info("hydrated", extra=figures)
        return figures

    async def _apply(
        self, chunk: list[Ticker], journal: Journal, today: str, stats_shards: set[int],
        quote_shards: set[int], figures: dict[str, Any], epoch: int,
    ) -> None:  # fmt: skip
        service = self.service
        symbols = {tk.sym for tk in chunk}
        while True:
            if self.epoch != epoch:
                raise _Dropped()
            await service.load(symbols)
            if not service.book.missing(symbols):
                break  # held now, and nothing awaits between here and the merge
        if self.epoch != epoch:
            raise _Dropped()
        writes = Writes(service.context, time.time_ns() // 1_000_000)
        prev_closes: dict[str, float] = {}
        for part_stats in (True, False):
            shards = stats_shards if part_stats else quote_shards
            part = [tk for tk in chunk if self._shard(tk.sym) in shards]
            if not part:
                continue
            outcome = self.merge.apply(
                part, service.book, writes, journal, today=today, stats_part=part_stats,
                quotes_part=not part_stats, prev_closes=prev_closes,
            )  # fmt: skip
            figures["stale"] += outcome.stale
            figures["published"] += outcome.published
        if prev_closes:
            args: list[Any] = []
            for sym, close in prev_closes.items():
                args += [sym, repr(close)]
            writes.command("HSET", service.names.prev_close(), *args)
        for tk in chunk:
            journal.close(tk.sym)
        await service.write_hydration(writes)
        figures["symbols"] += len(chunk)

    async def _previous_closes(self, tickers: list[Ticker], today: str) -> int:
        """The previous trading day's closes from its grouped daily bars, for a snapshot that has no
        ``prevDay`` (the vendor's is filled as the exchanges report); how many were found."""
        return previous_closes(tickers, await self.rest.grouped_daily(self.day_of.previous(today)))

    def _shard(self, sym: str) -> int:
        return topology.shard_of(sym, self.shards)

    # -- reporting --------------------------------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        if not self.enabled:
            return {"status": "off"}
        pending = sorted(f"{p}.{s}" for p, shards in self.wanted.items() for s in shards)
        status = "degraded" if self.rest.status == "degraded" else "running" if self.running else "ok"
        out: dict[str, Any] = {"status": status, "done": self.done, "failed": self.failed,
                               "rest": self.rest.readiness()}  # fmt: skip
        if pending:
            out["pending"] = pending
        if self.last is not None:
            out["last"] = {k: v for k, v in self.last.items() if k != "shards"}
        return out


class _Dropped(Exception):
    """A reset came during a hydration: its shards may be another replica's now."""


def _parse(raw: list[dict[str, Any]]) -> tuple[list[Ticker], int]:
    """The snapshot's tickers, validated (in a worker thread); and how many were not valid."""
    out, invalid = [], 0
    for obj in raw:
        try:
            out.append(parse_ticker(obj))
        except ev.Invalid:
            invalid += 1
    return out, invalid


def _newest(tickers: list[Ticker]) -> int | None:
    """The newest last-trade time of the snapshot: its trading day is today's."""
    times = [tk.trade_tq[0] for tk in tickers if tk.trade_tq is not None]
    return max(times) if times else None
