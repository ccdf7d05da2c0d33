"""Quotes: the newest NBBO per symbol, with its spread and mid. Older quotes in a group are superseded
there and then; the merge keeps an older group from overwriting a newer quote.

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
                get("sym"),
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
