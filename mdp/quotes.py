"""Quotes: the newest NBBO per symbol, with its spread and mid. Older quotes in a group are superseded
there and then; the merge keeps an older group from overwriting a newer quote.

Stocks, options and futures ``Q`` and crypto ``XQ`` (symbol ``pair``, no ``q``, no exchange per side:
``bx``/``ax`` null) go through ``QuotesFold``; forex ``C`` (``p`` the pair, ``b`` bid, ``a`` ask, ``x``
the exchange, no sizes, no ``q``) through ``ForexQuotesFold``, into the same document: ``bs`` and ``as``
null (the vendor sends no sizes), ``bx`` and ``ax`` both ``x``.

Record: ``(sym, t, q, quote JSON)``, the JSON starting with ``{"t":T,"q":Q`` (how a processor taking
over reads the time back).
"""

from __future__ import annotations

from typing import Any

import orjson

from . import events as ev
from .fold import Folded


class QuotesFold:
    kind = "quotes"

    def fold(self, events: list[dict[str, Any]]) -> Folded:
        out = Folded(self.kind)
        newest: dict[str, tuple[int, int, dict[str, Any]]] = {}
        known, t_min, t_max, p_max, s_max = ev.KNOWN_SYMBOLS, ev.T_MIN, ev.T_MAX, ev.PRICE_MAX, ev.SIZE_MAX
        for event in events:
            # The fast path checks what the slow one does, inline: this loop runs for most of the feed.
            get = event.get
            sym, t, q, bp, ap, bs, as_ = (
                get("sym") or get("pair"),  # crypto (``XQ``): ``pair``
                get("t"),
                get("q", 0),
                get("bp"),
                get("ap"),
                get("bs", 0),
                get("as", 0),
            )
            tb, ta, tbs, tas = type(bp), type(ap), type(bs), type(as_)
            if not (
                type(sym) is str and sym in known and type(t) is int and t_min <= t < t_max
                and type(q) is int and q >= 0
                and (tb is float or tb is int) and (ta is float or ta is int)
                and 0 <= bp < p_max and 0 <= ap < p_max
                and (tbs is int or tbs is float) and (tas is int or tas is float) and 0 <= bs < s_max
                and 0 <= as_ < s_max
            ):  # fmt: skip
                try:
                    sym = ev.symbol(event)
                    t = ev.time_ms(event)
                    q = ev.sequence(event)
                    ev.price(event, "bp")
                    ev.price(event, "ap")
                    ev.size(event, "bs", 0)
                    ev.size(event, "as", 0)
                except ev.Invalid as exc:
                    out.invalid.append((event, str(exc)))
                    continue
            out.events += 1
            cur = newest.get(sym)
            if cur is None or t > cur[0] or (t == cur[0] and q >= cur[1]):
                newest[sym] = (t, q, event)
        out.records = [(sym, t, q, quote_doc(t, q, e)) for sym, (t, q, e) in newest.items()]
        return out


def quote_doc(t: int, q: int, e: dict[str, Any]) -> bytes:
    """The stored and published quote document (JSON) of a quote event's fields (``bp``, ``bs``, ``bx``,
    ``ap``, ``as``, ``ax``), at (``t``, ``q``)."""
    bp, ap = e["bp"], e["ap"]
    doc = {
        "t": t,
        "q": q,
        "bp": bp,
        "bs": e.get("bs", 0),
        "bx": e.get("bx"),
        "ap": ap,
        "as": e.get("as", 0),
        "ax": e.get("ax"),
        "spread": round(ap - bp, 6),
        "mid": round((ap + bp) / 2, 6),
    }
    ev.carry_send_stamp(e, doc)
    return orjson.dumps(doc)


class ForexQuotesFold:
    """Forex quotes (``C``): ``{"ev":"C","p":"EUR/USD","x":48,"a":1.1,"b":1.09,"t":...}``. Same record and
    document as ``QuotesFold``'s (its kind is ``quotes``: the merge does not tell them apart)."""

    kind = "quotes"

    def fold(self, events: list[dict[str, Any]]) -> Folded:
        out = Folded(self.kind)
        newest: dict[str, tuple[int, dict[str, Any]]] = {}
        known, t_min, t_max, p_max = ev.KNOWN_SYMBOLS, ev.T_MIN, ev.T_MAX, ev.PRICE_MAX
        for event in events:
            get = event.get
            sym, t, bp, ap, x = get("p"), get("t"), get("b"), get("a"), get("x")
            tb, ta = type(bp), type(ap)
            if not (
                type(sym) is str and sym in known and type(t) is int and t_min <= t < t_max
                and (tb is float or tb is int) and (ta is float or ta is int)
                and 0 <= bp < p_max and 0 <= ap < p_max and (x is None or type(x) is int)
            ):  # fmt: skip
                try:
                    sym = ev.symbol(event)
                    t = ev.time_ms(event)
                    ev.price(event, "b")
                    ev.price(event, "a")
                    ev.small_int(event, "x")
                except ev.Invalid as exc:
                    out.invalid.append((event, str(exc)))
                    continue
            out.events += 1
            cur = newest.get(sym)
            if cur is None or t >= cur[0]:  # no sequence number: the later in the group wins a tie
                newest[sym] = (t, event)
        out.records = [(sym, t, 0, forex_quote_doc(t, e)) for sym, (t, e) in newest.items()]
        return out


def forex_quote_doc(t: int, e: dict[str, Any]) -> bytes:
    """The quote document of a forex quote (``b``, ``a``, ``x``): a quote's, sizes null."""
    bp, ap, x = e["b"], e["a"], e.get("x")
    doc = {
        "t": t,
        "q": 0,
        "bp": bp,
        "bs": None,
        "bx": x,
        "ap": ap,
        "as": None,
        "ax": x,
        "spread": round(ap - bp, 6),
        "mid": round((ap + bp) / 2, 6),
    }
    ev.carry_send_stamp(e, doc)
    return orjson.dumps(doc)
