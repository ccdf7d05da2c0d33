"""Hydration: the vendor's REST snapshot merged into the state a processor owns. Pure: no I/O, no clock.

A processor that starts mid-day, takes over a shard, or missed events (a vendor reconnect, messages shed
by the queues) holds less than the day so far. The vendor's full-market snapshot has, per ticker, the
day bar (open, high, low, close, volume, VWAP, trade count), the previous day, the last trade and the
last quote. ``SnapshotMerge.apply`` merges it so that the state equals what a processor running since the
open holds, order-safely:

- the day's sums (trade count, volume) are the snapshot's, which counts every trade up to its last
  trade (``C``: time and sequence number), plus the trades merged here after ``C``. The trades merged
  while the request was in flight are in the ``Journal`` (time, sequence, size); those merged before it
  are in the snapshot by construction, unless the snapshot is older than them (``stale``: then the
  sums only grow, never shrink). ``C`` stays in the document as the hydration mark (``ht``, ``hq``): a
  trade at or before it that arrives later (a backlog of the queue) is already counted and is not
  counted again;
- high and low only widen; last price, last trade, last quote and VWAP only move to newer ones; the
  vendor's open and previous close win (they are the day's reference, as on every scanner);
- what changed is published as ONE update per channel, marked ``resync`` in the envelope: its
  ``data`` is the channel's state (as a snapshot's), not an increment.

No alert comes from a hydration: a high the snapshot reports happened earlier, while nobody watched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from mdc.tradingday import TradingDay

from . import events as ev
from . import stats
from .book import QUOTES, TRADES, Book, SymbolState
from .quotes import quote_doc
from .trades import SymbolTrades
from .writes import SymbolNames, Writes

TQ = tuple[int, int]
#: Most journal entries (trades merged while a hydration is in flight); past it the hydration is not
#: exact (sums merged by max) and another one follows.
JOURNAL_MAX = 1_000_000


@dataclass(slots=True)
class Ticker:
    """One ticker of the vendor's snapshot, validated."""

    sym: str
    prev_close: float | None = None
    #: the last trade: (time ms, sequence) and its document in the trades' shape
    trade_tq: TQ | None = None
    trade: dict[str, Any] | None = None
    quote_tq: TQ | None = None
    quote: bytes | None = None
    #: the day bar, when the ticker traded on its last trade's day: o, h, l, c, v, vw, n
    day: tuple[float, float, float, float, float, float | None, int] | None = None


def parse_ticker(obj: Any) -> Ticker:
    """A ``Ticker`` from one object of the snapshot's ``tickers``; ``ev.Invalid`` for what is not one."""
    if not isinstance(obj, dict):
        raise ev.Invalid("ticker is not an object")
    sym = ev.symbol({"sym": obj.get("ticker")})
    tk = Ticker(sym)
    prev = obj.get("prevDay")
    if isinstance(prev, dict) and prev.get("c"):
        tk.prev_close = ev.price(prev, "c")
    last = obj.get("lastTrade")
    if isinstance(last, dict) and last.get("t"):
        t = _ms(last, "t")
        q = ev.sequence(last)
        doc = {"t": t, "q": q, "p": ev.price(last, "p"), "s": ev.size(last, "s", 0),
               "x": ev.small_int(last, "x"), "c": ev.int_list(last, "c"),
               "i": _id(last.get("i"))}  # fmt: skip
        tk.trade_tq, tk.trade = (t, q), doc
    quote = obj.get("lastQuote")
    if isinstance(quote, dict) and quote.get("t"):
        t = _ms(quote, "t")
        q = ev.sequence(quote)
        fields = {"bp": ev.price(quote, "p"), "bs": ev.size(quote, "s", 0), "bx": ev.small_int(quote, "x"),
                  "ap": ev.price(quote, "P"), "as": ev.size(quote, "S", 0),
                  "ax": ev.small_int(quote, "X")}  # fmt: skip
        tk.quote_tq, tk.quote = (t, q), quote_doc(t, q, fields)  # the REST quote in the stream's shape
    day = obj.get("day")
    if isinstance(day, dict) and tk.trade_tq is not None and day.get("v"):
        vw = day.get("vw")
        tk.day = (
            ev.price(day, "o"), ev.price(day, "h"), ev.price(day, "l"), ev.price(day, "c"),
            ev.size(day, "v"), ev.price(day, "vw") if vw is not None else None, _count(day.get("n")),
        )  # fmt: skip
    return tk


def _ms(obj: dict[str, Any], field: str) -> int:
    """A REST time (ns, as the snapshot gives them; ms accepted too) in ms."""
    t = obj.get(field)
    if type(t) is int and t >= ev.T_MAX:
        t //= 1_000_000
    return ev.time_ms({field: t}, field)


def _id(value: Any) -> str | None:
    if value is None:
        return None
    if type(value) is not str or len(value) > 64:
        raise ev.Invalid("lastTrade.i must be a trade id")
    return value


def _count(value: Any) -> int:
    if value is None:
        return 0
    if type(value) is not int or value < 0:
        raise ev.Invalid("day.n must be a count")
    return value


def previous_closes(tickers: list[Ticker], grouped: list[Any]) -> int:
    """Set the tickers' previous close from the previous day's grouped daily bars (``T``, ``c``), where a
    bar has a valid one; how many did."""
    closes: dict[str, float] = {}
    for bar in grouped:
        if not isinstance(bar, dict):
            continue
        sym, close = bar.get("T"), bar.get("c")
        if type(sym) is str and type(close) in (int, float) and 0 < close < ev.PRICE_MAX:
            closes[sym] = float(close)
    found = 0
    for tk in tickers:
        close = closes.get(tk.sym)
        if close is not None:
            tk.prev_close = close
            found += 1
    return found


@dataclass(slots=True)
class Journal:
    """The trades merged while a hydration is in flight, per symbol, and the newest trade each symbol
    had merged before (which the snapshot must include for its sums to be exact)."""

    before: dict[str, TQ | None] = field(default_factory=dict)
    trades: dict[str, list[tuple[int, int, float]]] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)  # merged already: their mark does the rest
    size: int = 0
    overflow: bool = False

    def note(self, st: SymbolState, r: SymbolTrades) -> None:
        """Before ``r`` is merged into ``st``."""
        sym = st.sym
        if sym in self.closed:
            return
        entries = self.trades.get(sym)
        if entries is None:
            self.before[sym] = st.trade_tq
            entries = self.trades[sym] = []
        if self.overflow:
            return
        entries.extend((tr["t"], tr["q"], tr["s"]) for tr in r.trades)  # (a record keeps its newest 1,000)
        self.size += len(r.trades)
        if self.size > JOURNAL_MAX:
            self.overflow = True

    def close(self, sym: str) -> None:
        """``sym`` is merged: what comes next is counted against its mark, not kept here."""
        self.closed.add(sym)
        entries = self.trades.pop(sym, None)
        if entries:
            self.size -= len(entries)
        self.before.pop(sym, None)

    def after(self, sym: str, mark: TQ) -> tuple[int, float]:
        """Count and volume of the trades journaled for ``sym`` after ``mark``."""
        n, v = 0, 0.0
        for t, q, s in self.trades.get(sym, ()):
            if (t, q) > mark:
                n += 1
                v += s
        return n, v


def counted_after(r: SymbolTrades, mark: TQ) -> tuple[int, float]:
    """The count and volume of ``r``'s trades after the hydration mark: the others are in the snapshot.
    ``r.trades`` holds the newest of them (sorted): if the oldest kept is at or before the mark, every
    one dropped is too; otherwise the dropped ones count (they are older than anything seen after)."""
    t0, q0 = mark
    trades = r.trades
    kept = [tr for tr in trades if tr["t"] > t0 or (tr["t"] == t0 and tr["q"] > q0)]
    n = len(kept)
    v = sum(tr["s"] for tr in kept)
    dropped = r.n - len(trades)
    if dropped and (trades[0]["t"], trades[0]["q"]) > (t0, q0):
        n += dropped
        v += r.v - sum(tr["s"] for tr in trades)
    return n, v


@dataclass(slots=True)
class Outcome:
    stale: int = 0  # tickers whose snapshot was older than what had been merged (sums only grew)
    published: int = 0  # resync updates


class SnapshotMerge:
    """Merges snapshot tickers into the book's states (see the module's docstring)."""

    def __init__(self, merger: Any, day_of: TradingDay) -> None:
        self.merger = merger  # mdp.merge.Merger: names, stats saving
        self.day_of = day_of

    def apply(
        self, tickers: list[Ticker], book: Book, writes: Writes, journal: Journal, *, today: str,
        stats_part: bool, quotes_part: bool, prev_closes: dict[str, float],
    ) -> Outcome:  # fmt: skip
        """Merge ``tickers`` (their symbols held by ``book``) for trading day ``today``: the day stats,
        last trade and previous close when ``stats_part`` (the owner of their trades and aggregates
        shard), the last quote when ``quotes_part``. ``prev_closes`` collects the previous closes."""
        out = Outcome()
        held = book.symbols
        day_start = self.day_of.bounds(today)[0]
        for tk in tickers:
            st = held[tk.sym]
            names = st.names or self.merger.names_of(st)
            if quotes_part and tk.quote is not None and (st.quote_tq is None or tk.quote_tq > st.quote_tq):
                st.quote_tq = tk.quote_tq
                writes.set_ex(names.quote, tk.quote)
                st.seq[QUOTES] += 1
                writes.publish(names, QUOTES, b"quote", st.seq[QUOTES], tk.quote_tq[0], tk.quote, resync=True)  # type: ignore[index]
                out.published += 1
            if stats_part:
                if tk.prev_close is not None:
                    st.prev_close = tk.prev_close
                    prev_closes[tk.sym] = tk.prev_close
                self._trade(tk, st, names, writes, out)
                if self._stats(tk, st, journal, today, day_start, out):
                    self.merger.save_stats(st, writes, book, resync=True)
                    out.published += 1
        return out

    def _trade(self, tk: Ticker, st: SymbolState, names: SymbolNames, writes: Writes, out: Outcome) -> None:
        if tk.trade is None or (st.trade_tq is not None and tk.trade_tq <= st.trade_tq):  # type: ignore[operator]
            return
        st.trade_tq = tk.trade_tq
        encoded = orjson.dumps(tk.trade)
        writes.set_ex(names.trade, encoded)
        writes.sorted_set(names.trades, [(tk.trade["t"], encoded)], self.merger.recent)
        st.seq[TRADES] += 1
        data = b"[" + encoded + b"]"
        writes.publish(names, TRADES, b"trades", st.seq[TRADES], tk.trade["t"], data, resync=True)
        out.published += 1

    def _stats(
        self, tk: Ticker, st: SymbolState, journal: Journal, today: str, day_start: int, out: Outcome
    ) -> bool:
        """Merge the day bar into the day stats; True when the document changed."""
        doc = st.stats
        if tk.day is None or self.day_of(tk.trade_tq[0]) != today:  # type: ignore[index]
            # no trade today yet: only the reference moves, if a document of today is held
            if tk.prev_close is None or doc is None or doc["day"] != today:
                return False
            if doc.get("prev_close") == tk.prev_close:
                return False
            doc["prev_close"] = tk.prev_close
            stats.finish(doc, doc["t"])
            return True
        doc = stats.for_day(st, today)
        if doc is None:
            return False  # a newer day is held
        before = orjson.dumps(doc)
        o, h, lo, c, v, vw, n = tk.day
        if tk.prev_close is not None:
            doc["prev_close"] = tk.prev_close
        mark: TQ = tk.trade_tq  # type: ignore[assignment]
        after_n, after_v = journal.after(tk.sym, mark)
        # the newest trade merged before the request: the snapshot must hold it for its sums to be exact
        merged_before = journal.before[tk.sym] if tk.sym in journal.trades else st.trade_tq
        exact = not journal.overflow and (merged_before is None or merged_before <= mark)
        if doc.get("ht") is not None and (doc["ht"], doc["hq"]) > mark:
            mark, exact = (doc["ht"], doc["hq"]), False  # older than the snapshot merged last: its mark stays
        if exact:
            doc["trades"], doc["trade_volume"] = n + after_n, v + after_v
        else:
            out.stale += 1
            doc["trades"] = max(doc["trades"], n + after_n)
            doc["trade_volume"] = max(doc["trade_volume"], v + after_v)
        doc["ht"], doc["hq"] = mark
        if v > doc["agg_volume"]:
            doc["agg_volume"] = v
        doc["op"] = o
        if doc.get("high") is None or h > doc["high"]:
            doc["high"] = h
        if doc.get("low") is None or lo < doc["low"]:
            doc["low"] = lo
        t, q = tk.trade_tq  # type: ignore[misc]
        stats.last(doc, c, t, q)
        if vw is not None and (doc.get("vt") is None or t > doc["vt"]):
            doc["vwap"], doc["vt"] = vw, t
        if doc.get("t0") is None or day_start < doc["t0"]:
            doc["t0"] = day_start  # the day began before this processor saw it: a new high is new for real
        stats.finish(doc, t)
        return orjson.dumps(doc) != before
