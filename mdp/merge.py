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
from .plan import Plan
from .trades import SymbolTrades
from .writes import Writes


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
            elif kind == "halts":
                self._halts(folded.records, held, writes)
            elif kind == "raw":
                self._raw(folded.records, writes)
            else:
                writes.plugin.extend(folded.records)
        newest_day = None
        for st in changed.values():
            self._save_stats(st, writes)
            day = st.stats["day"]  # type: ignore[index]
            if newest_day is None or day > newest_day:
                newest_day = day
        if newest_day is not None and (book.day is None or newest_day > book.day):
            book.day = writes.day = newest_day
        writes.symbols += len(changed)

    # -- per kind ---------------------------------------------------------------------------------------

    def _quotes(self, records: list[tuple[str, int, int, bytes]], held: dict[str, SymbolState],
                writes: Writes) -> None:  # fmt: skip
        names = self.names
        for sym, t, q, doc in records:
            st = held[sym]
            tq = st.quote_tq
            if tq is None or t > tq[0] or (t == tq[0] and q > tq[1]):
                st.quote_tq = (t, q)
                writes.set_ex(names.quote(sym), doc)
                st.seq[QUOTES] += 1
                writes.publish(f"quotes.{sym}", b"quote", st.seq[QUOTES], t, doc)

    def _trades(
        self, r: SymbolTrades, st: SymbolState, writes: Writes, changed: dict[str, SymbolState]
    ) -> None:
        names, sym = self.names, r.sym
        encoded = r.encoded
        newest = r.trades[-1]
        t, q = newest["t"], newest["q"]
        tq = st.trade_tq
        if tq is None or t > tq[0] or (t == tq[0] and q > tq[1]):
            st.trade_tq = (t, q)
            writes.set_ex(names.trade(sym), encoded[-1])
        key = names.trades(sym)
        members: list[bytes | int] = []
        for trade, json in zip(r.trades[-self.recent :], encoded[-self.recent :], strict=True):
            members.append(trade["t"])
            members.append(json)
        writes.command("ZADD", key, *members)
        writes.command("ZREMRANGEBYRANK", key, 0, -(self.recent + 1))
        writes.command("EXPIRE", key, self.ttl_s)
        st.seq[TRADES] += 1
        writes.publish(f"trades.{sym}", b"trades", st.seq[TRADES], t, b"[" + b",".join(encoded) + b"]")

        doc = stats.for_day(st, r.day)
        if doc is None:
            return
        stats.seen(doc, r.t_min)
        doc["trades"] += r.n
        doc["trade_volume"] += r.v
        if r.newest is not None:
            stats.high_low(doc, r.hi, r.hi_t, r.lo, r.lo_t, self.warmup_ms, self._alerter(st, writes))
            p, lt, lq = r.newest[2], r.newest[0], r.newest[1]
            stats.last(doc, p, lt, lq)
            fp, ft = r.first[2], r.first[0]  # type: ignore[index]
            ot = doc.get("ot")
            if ot is None or ft < ot or (ft == ot and fp < doc["first"]):
                doc["first"], doc["ot"] = fp, ft
        stats.finish(doc, t)
        changed[sym] = st

    def _bars(self, r: SymbolBars, st: SymbolState, writes: Writes, changed: dict[str, SymbolState]) -> None:
        names, sym = self.names, r.sym
        bars_channel = f"bars.{sym}"
        if r.second is not None:
            start, json = r.second
            if st.bar1s_t is None or start > st.bar1s_t:
                st.bar1s_t = start
                writes.set_ex(names.bar_second(sym), json)
                st.seq[BARS] += 1
                writes.publish(bars_channel, b"bar.1s", st.seq[BARS], start, json)
        if r.minutes:
            key = names.bars_minute(sym)
            alert = self._alerter(st, writes)
            for start, json, volume in r.minutes:
                writes.command("ZREMRANGEBYSCORE", key, start, start)  # a corrected bar replaces the first
                writes.command("ZADD", key, start, json)
                st.seq[BARS] += 1
                writes.publish(bars_channel, b"bar.1m", st.seq[BARS], start, json)
                # volume spike: this minute against the running mean of the symbol's minutes
                average, count = st.vavg
                if count >= 5 and volume >= self.spike_min and volume > self.spike_ratio * average:
                    alert("volume_spike", start + 60_000, b',"volume":%d,"average":%d' % (volume, average))
                average = float("%.3f" % (average + (volume - average) / min(count + 1, 20)))
                st.vavg = (average, count + 1)
                writes.command("HSET", names.volume_means(), sym, b"%.3f,%d" % st.vavg)
            writes.command("ZREMRANGEBYRANK", key, 0, -(self.minute_bars + 1))
            writes.command("EXPIRE", key, self.ttl_s)
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
        stats.high_low(doc, r.hi, r.hi_t, r.lo, r.lo_t, self.warmup_ms, self._alerter(st, writes))
        # the bar's close is its last trade, just before its end: a trade at or after the end wins
        stats.last(doc, r.close, e - 1, -1)
        stats.finish(doc, e)
        changed[sym] = st

    def _halts(self, records: list[tuple[str, int, int, bytes, bool]], held: dict[str, SymbolState],
               writes: Writes) -> None:  # fmt: skip
        names = self.names
        for sym, t, q, json, halted in records:
            st = held[sym]
            tq = st.luld_tq
            if tq is not None and (t < tq[0] or (t == tq[0] and q <= tq[1])):
                continue
            st.luld_tq = (t, q)
            writes.set_ex(names.luld(sym), json)
            st.seq[LULD] += 1
            writes.publish(f"luld.{sym}", b"luld", st.seq[LULD], t, json)
            was = st.halted
            if halted:
                writes.command("HSET", names.halted(), sym, json)  # the newest bands of a halted symbol
            elif was:
                writes.command("HDEL", names.halted(), sym)
            if halted != was:
                st.halted = halted
                kind = "halt" if halted else "resume"
                member = b'{"kind":"%b","sym":"%b","t":%d,"luld":%b}' % (kind.encode(), sym.encode(), t, json)
                writes.feed("halts", kind, t, member)
                self._alerter(st, writes)(kind, t, b"")

    def _raw(self, records: list[tuple[str, list[bytes]]], writes: Writes) -> None:
        for kind, items in records:
            key = self.names.raw(kind)
            for i in range(0, len(items), 1000):
                writes.command("LPUSH", key, *items[i : i + 1000])
            writes.command("LTRIM", key, 0, self.raw_events - 1)
            writes.command("EXPIRE", key, self.raw_ttl_s)

    def _save_stats(self, st: SymbolState, writes: Writes) -> None:
        doc: dict[str, Any] = st.stats  # type: ignore[assignment]
        encoded = orjson.dumps(doc)
        sym, day = st.sym, doc["day"]
        writes.set_ex(self.names.stats(sym), encoded)
        names = self.names
        change_pct = doc.get("change_pct")
        if change_pct is not None:
            writes.rank(names.ranking(day, "change"), change_pct, sym)
        writes.rank(names.ranking(day, "volume"), doc["volume"], sym)
        gap = doc.get("gap_pct")
        if gap is not None:
            writes.rank(names.ranking(day, "gap"), abs(gap), sym)
        st.seq[STATS] += 1
        writes.publish(f"stats.{sym}", b"stats", st.seq[STATS], doc["t"], encoded)

    # -- alerts -----------------------------------------------------------------------------------------

    def _alerter(self, st: SymbolState, writes: Writes) -> stats.Alert:
        """An alert for ``st``: at most one per kind per cooldown of event time, on the alerts feed."""

        def alert(kind: str, t: int, detail: bytes) -> None:
            last = st.alerted.get(kind)
            if last is not None and abs(t - last) < self.cooldown_ms:
                return
            st.alerted[kind] = t
            writes.command("HSET", self.names.alerted(), f"{st.sym}:{kind}", t)
            member = b'{"kind":"%b","sym":"%b","t":%d%b}' % (kind.encode(), st.sym.encode(), t, detail)
            writes.feed("alerts", "alert", t, member)

        return alert
