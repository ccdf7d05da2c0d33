"""Day stats: the ``md:stats:{SYM}`` document, merged from trades and bars (see docs/mdc.md for fields).

Every merge is commutative (sums, max, min, "newest wins" by event time and sequence) and the redelivery
markers make the sums idempotent, so shuffled, repeated or sharded delivery gives the same document.
Pure: the caller owns the document (``SymbolState.stats``) and writes it.
"""

from __future__ import annotations

import math
from typing import Any

from .book import SymbolState

Alert = tuple[str, int, bytes]  # (kind, event time, the alert's own JSON fields, each after a comma)


def _round(x: float, digits: int) -> float:
    m = 10.0**digits
    return math.floor(x * m + 0.5) / m


def for_day(st: SymbolState, day: str) -> dict[str, Any] | None:
    """The stats of ``st`` for trading day ``day``, or None when the event belongs to an older day than
    the one held. A new day starts from nothing but the previous close (the previous day's last price,
    else its previous close, else ``md:prevclose``)."""
    doc = st.stats
    if doc is not None and doc["day"] > day:
        return None
    if doc is None or doc["day"] < day:
        prev = None
        if doc is not None:
            prev = doc.get("last")
            if prev is None:
                prev = doc.get("prev_close")
        if prev is None:
            prev = st.prev_close
        doc = {
            "sym": st.sym,
            "day": day,
            "t": 0,
            "volume": 0,
            "trade_volume": 0,
            "agg_volume": 0,
            "trades": 0,
        }
        if prev is not None:
            doc["prev_close"] = prev
        st.stats = doc
    return doc


def seen(doc: dict[str, Any], t: int) -> None:
    """The day's first event time: new highs and lows alert only once the day has warmed up."""
    t0 = doc.get("t0")
    if t0 is None or t < t0:
        doc["t0"] = t


def high_low(
    doc: dict[str, Any], hi: float | None, hi_t: int, lo: float | None, lo_t: int, warmup_ms: int
) -> list[Alert]:
    """Widen the day's range; a new high or low once the day has warmed up is an alert."""
    alerts: list[Alert] = []
    if hi is not None:
        high = doc.get("high")
        if high is None or hi > high:
            if high is not None and hi_t - doc["t0"] >= warmup_ms:
                alerts.append(("new_high", hi_t, b',"price":%b,"prev":%b' % (_num(hi), _num(high))))
            doc["high"] = hi
    if lo is not None:
        low = doc.get("low")
        if low is None or lo < low:
            if low is not None and lo_t - doc["t0"] >= warmup_ms:
                alerts.append(("new_low", lo_t, b',"price":%b,"prev":%b' % (_num(lo), _num(low))))
            doc["low"] = lo
    return alerts


def last(doc: dict[str, Any], p: float, t: int, q: int) -> None:
    """The last price, newest by (t, q)."""
    lt = doc.get("lt")
    if lt is None or t > lt or (t == lt and q > doc["lq"]):
        doc["last"], doc["lt"], doc["lq"] = p, t, q


def finish(doc: dict[str, Any], t: int) -> None:
    """The derived fields, once a group's merges are in: volume, open, change and gap."""
    if t > doc["t"]:
        doc["t"] = t
    doc["volume"] = max(doc["trade_volume"], doc["agg_volume"])
    op = doc.get("op")
    opened = op if op is not None else doc.get("first")  # the vendor's day open wins over the first trade
    if opened is None:
        doc.pop("open", None)
    else:
        doc["open"] = opened
    prev = doc.get("prev_close")
    from_prev = prev is not None and prev > 0
    ref = prev if from_prev else opened  # no previous close known: change since the open, and said so
    price = doc.get("last")
    if price is not None and ref is not None and ref > 0:
        doc["change"] = _round(price - ref, 6)
        doc["change_pct"] = _round((price / ref - 1) * 100, 4)
        doc["change_from"] = "prev_close" if from_prev else "open"
    if opened is not None and prev is not None and prev > 0:
        doc["gap_pct"] = _round((opened / prev - 1) * 100, 4)


def _num(x: float) -> bytes:
    return repr(x).encode() if type(x) is float else b"%d" % x
