"""Merging a group's folded events into the state a processor owns, and the writes that follow.

``Merger.apply(plan, book, writes)`` takes what the folds made of a group (one record per symbol and
kind), merges each record into the symbol's ``SymbolState`` (``book``), and puts into ``writes`` only
what changed: a document is replaced only by a newer event (by event time, then the vendor's sequence
number), so an older or repeated message never moves state back; each changed channel gets ONE update
per group with its next ``seq``. The symbols must be held by the book (the service loads the missing
ones first). Pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import Any

import orjson

from mdc.names import Names

from . import stats
from .aggregates import SymbolBars
from .book import BARS, LULD, QUOTES, STATS, TRADES, Book, SymbolState
from .hydrate import Journal, counted_after
from .plan import Plan
from .trades import SymbolTrades
from .values import SymbolValues
from .writes import SymbolNames, Writes

#: What a leaderboard row shows of a symbol's stats (``Names.leader_rows``; ``t`` dates the board).
ROW_FIELDS = ("last", "change", "change_pct", "volume", "gap_pct", "open", "prev_close", "t")


class Merger:
    def __init__(
        self,
        names: Names,
        *,
        recent_trades: int,
        minute_bars: int,
        raw_events: int,
        raw_ttl_s: int,
        state_ttl_s: int,
        warmup_ms: int,
        cooldown_ms: int,
        spike_ratio: float,
        spike_min_volume: float,
    ) -> None:
        self.names = names
        self.recent, self.minute_bars = recent_trades, minute_bars
        self.raw_events, self.raw_ttl_s, self.ttl_s = raw_events, raw_ttl_s, state_ttl_s
        self.warmup_ms, self.cooldown_ms = warmup_ms, cooldown_ms
        self.spike_ratio, self.spike_min = spike_ratio, spike_min_volume
        #: the trades merged while a hydration is in flight (``mdp.hydrate``), when one is
        self.journal: Journal | None = None

    def apply(self, plan: Plan, book: Book, writes: Writes) -> None:
        held = book.symbols
        changed: dict[str, SymbolState] = {}  # symbols whose stats changed: saved once, after every kind
        for folded in plan.folded:
            kind = folded.kind
            if kind == "quotes":
                self._quotes(folded.records, held, writes)
            elif kind == "trades":
                for r in folded.records:
                    self._trades(r, held[r.sym], writes, changed)
            elif kind == "aggregates":
                for r in folded.records:
                    self._bars(r, held[r.sym], writes, changed)
            elif kind == "values":
                for r in folded.records:
                    self._values(r, held[r.sym], writes, changed)
            elif kind == "halts":
                self._halts(folded.records, held, writes)
            elif kind == "raw":
                self._raw(folded.records, writes)
            else:
                writes.plugin.extend(folded.records)
        newest_day = None
        for st in changed.values():
            self.save_stats(st, writes, book)
            day = st.stats["day"]  # type: ignore[index]
            if newest_day is None or day > newest_day:
                newest_day = day
        if newest_day is not None and (book.day is None or newest_day > book.day):
            book.day = writes.day = newest_day

    def names_of(self, st: SymbolState) -> SymbolNames:
        names = st.names
        if names is None:
            names = st.names = SymbolNames(self.names, st.sym)
        return names

    # -- per kind ---------------------------------------------------------------------------------------

    def _quotes(self, records: list[tuple[str, int, int, bytes]], held: dict[str, SymbolState],
                writes: Writes) -> None:  # fmt: skip
        for sym, t, q, doc in records:
            st = held[sym]
            tq = st.quote_tq
            if tq is None or (t, q) > tq:  # newer by event time, then the vendor's sequence number
                st.quote_tq = (t, q)
                names = st.names or self.names_of(st)
                writes.set_ex(names.quote, doc)
                seq = st.seq
                seq[QUOTES] += 1
                writes.publish(names, QUOTES, b"quote", seq[QUOTES], t, doc)

    def _trades(
        self, r: SymbolTrades, st: SymbolState, writes: Writes, changed: dict[str, SymbolState]
    ) -> None:
        names = st.names or self.names_of(st)
        if self.journal is not None:
            self.journal.note(st, r)
        encoded = r.encoded
        newest = r.trades[-1]
        t, q = newest["t"], newest["q"]
        tq = st.trade_tq
        if tq is None or (t, q) > tq:
            st.trade_tq = (t, q)
            writes.set_ex(names.trade, encoded[-1])
        recent = self.recent
        members = [
            (trade["t"], json) for trade, json in zip(r.trades[-recent:], encoded[-recent:], strict=True)
        ]
        writes.sorted_set(names.trades, members, recent)
        st.seq[TRADES] += 1
        writes.publish(names, TRADES, b"trades", st.seq[TRADES], t, b"[" + b",".join(encoded) + b"]")

        doc = stats.for_day(st, r.day)
        if doc is None:
            return
        stats.seen(doc, r.t_min)
        mark = doc.get("ht")
        if mark is None or r.t_min > mark:
            n, v = r.n, r.v
        else:  # some may be in the snapshot merged last: those at or before its mark are
            n, v = counted_after(r, (mark, doc["hq"]))
        doc["trades"] += n
        v += doc["trade_volume"]
        # fractional sizes (crypto) sum in binary floating point: 8 decimals keep 0.1 + 0.2 at 0.3
        doc["trade_volume"] = v if type(v) is int else round(v, 8)
        if r.newest is not None:
            alerts = stats.high_low(doc, r.hi, r.hi_t, r.lo, r.lo_t, self.warmup_ms)
            if alerts:
                self._alerts(st, writes, alerts)
            lt, lq, p = r.newest
            stats.last(doc, p, lt, lq)
            ft, _, fp = r.first  # type: ignore[misc]
            ot = doc.get("ot")
            if ot is None or ft < ot or (ft == ot and fp < doc["first"]):
                doc["first"], doc["ot"] = fp, ft
        stats.finish(doc, t)
        changed[st.sym] = st

    def _bars(self, r: SymbolBars, st: SymbolState, writes: Writes, changed: dict[str, SymbolState]) -> None:
        names = st.names or self.names_of(st)
        if r.second is not None:
            start, json = r.second
            if st.bar1s_t is None or start > st.bar1s_t:
                st.bar1s_t = start
                writes.set_ex(names.bar1s, json)
                st.seq[BARS] += 1
                writes.publish(names, BARS, b"bar.1s", st.seq[BARS], start, json)
        if r.minutes:
            key = names.bars1m
            alerts: list[stats.Alert] = []
            for start, json, volume in r.minutes:
                writes.command("ZREMRANGEBYSCORE", key, start, start)  # a corrected bar replaces the first
                st.seq[BARS] += 1
                writes.publish(names, BARS, b"bar.1m", st.seq[BARS], start, json)
                # volume spike: this minute against the running mean of the symbol's minutes
                average, count = st.vavg
                if count >= 5 and volume >= self.spike_min and volume > self.spike_ratio * average:
                    alerts.append(("volume_spike", start + 60_000,
                                   b',"volume":%d,"average":%d' % (volume, average)))  # fmt: skip
                average = float("%.3f" % (average + (volume - average) / min(count + 1, 20)))
                st.vavg = (average, count + 1)
            writes.sorted_set(key, [(start, json) for start, json, _ in r.minutes], self.minute_bars)
            writes.command("HSET", self.names.volume_means(), st.sym, b"%.3f,%d" % st.vavg)
            if alerts:
                self._alerts(st, writes, alerts)
        doc = stats.for_day(st, r.day)
        if doc is None:
            return
        e = r.end
        stats.seen(doc, e)
        if r.op is not None:
            doc["op"] = r.op
        if r.av is not None and r.av > doc["agg_volume"]:
            doc["agg_volume"] = r.av
        if r.vwap is not None:
            vt, vwap = r.vwap
            old = doc.get("vt")
            if old is None or vt > old or (vt == old and vwap > doc["vwap"]):
                doc["vwap"], doc["vt"] = vwap, vt
        alerts = stats.high_low(doc, r.hi, r.hi_t, r.lo, r.lo_t, self.warmup_ms)
        if alerts:
            self._alerts(st, writes, alerts)
        # the bar's close is its last trade, just before its end: a trade at or after the end wins
        stats.last(doc, r.close, e - 1, -1)
        stats.finish(doc, e)
        changed[st.sym] = st

    def _values(
        self, r: SymbolValues, st: SymbolState, writes: Writes, changed: dict[str, SymbolState]
    ) -> None:
        """An index's values: its day stats as trades without size would make them (``mdp.values``)."""
        if st.names is None:
            self.names_of(st)  # save_stats writes under them
        doc = stats.for_day(st, r.day)
        if doc is None:
            return
        stats.seen(doc, r.t_min)
        alerts = stats.high_low(doc, r.hi, r.hi_t, r.lo, r.lo_t, self.warmup_ms)
        if alerts:
            self._alerts(st, writes, alerts)
        t, p = r.newest
        stats.last(doc, p, t, 0)
        ft, fp = r.first
        ot = doc.get("ot")
        if ot is None or ft < ot or (ft == ot and fp < doc["first"]):
            doc["first"], doc["ot"] = fp, ft
        stats.finish(doc, t)
        changed[st.sym] = st

    def _halts(self, records: list[tuple[str, int, int, bytes, bool]], held: dict[str, SymbolState],
               writes: Writes) -> None:  # fmt: skip
        halted_key = self.names.halted()
        for sym, t, q, json, halted in records:
            st = held[sym]
            tq = st.luld_tq
            if tq is not None and (t, q) <= tq:
                continue
            st.luld_tq = (t, q)
            names = st.names or self.names_of(st)
            writes.set_ex(names.luld, json)
            st.seq[LULD] += 1
            writes.publish(names, LULD, b"luld", st.seq[LULD], t, json)
            was = st.halted
            if halted:
                writes.command("HSET", halted_key, sym, json)  # the newest bands of a halted symbol
            elif was:
                writes.command("HDEL", halted_key, sym)
            if halted != was:
                st.halted = halted
                kind = "halt" if halted else "resume"
                member = b'{"kind":"%b","sym":"%b","t":%d,"luld":%b}' % (kind.encode(), sym.encode(), t, json)
                writes.feed("halts", kind, t, member)
                self._alerts(st, writes, [(kind, t, b"")])

    def _raw(self, records: list[tuple[str, list[bytes]]], writes: Writes) -> None:
        for kind, items in records:
            key = self.names.raw(kind)
            for i in range(0, len(items), 1000):
                writes.command("LPUSH", key, *items[i : i + 1000])
            writes.command("LTRIM", key, 0, self.raw_events - 1)
            writes.command("EXPIRE", key, self.raw_ttl_s)

    def save_stats(self, st: SymbolState, writes: Writes, book: Book, *, resync: bool = False) -> None:
        """Write and publish the stats (``resync``: after a hydration); the rankings and the symbol's
        leaderboard row wait in ``book`` (``Book.ranks``, ``Book.rows``) for the next flush: a busy
        symbol's score changes many times a second, a leaderboard reads it once."""
        ranks = book.ranks
        doc: dict[str, Any] = st.stats  # type: ignore[assignment]
        names = st.names
        encoded = orjson.dumps(doc)
        day = doc["day"]
        writes.set_ex(names.stats, encoded)
        for measure, score in (("change", doc.get("change_pct")), ("volume", doc["volume"]),
                               ("gap", doc.get("gap_pct"))):  # fmt: skip
            if score is not None:
                key = self.names.ranking(day, measure)
                pending = ranks.get(key)
                if pending is None:
                    pending = ranks[key] = {}
                pending[names.sym] = abs(score) if measure == "gap" else score
        book.rows[names.sym] = orjson.dumps({field: doc.get(field) for field in ROW_FIELDS})
        st.seq[STATS] += 1
        writes.publish(names, STATS, b"stats", st.seq[STATS], doc["t"], encoded, resync=resync)

    # -- alerts -----------------------------------------------------------------------------------------

    def _alerts(self, st: SymbolState, writes: Writes, alerts: list[stats.Alert]) -> None:
        """On the alerts feed, at most one per symbol and kind per cooldown of event time."""
        for kind, t, detail in alerts:
            last = st.alerted.get(kind)
            if last is not None and abs(t - last) < self.cooldown_ms:
                continue
            st.alerted[kind] = t
            writes.command("HSET", self.names.alerted(), f"{st.sym}:{kind}", t)
            member = b'{"kind":"%b","sym":"%b","t":%d%b}' % (kind.encode(), st.sym.encode(), t, detail)
            writes.feed("alerts", "alert", t, member)
