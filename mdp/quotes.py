"""Quotes: the newest NBBO per symbol, with its spread and mid. Older quotes in a message are superseded
there and then; the Lua script keeps an older message from overwriting a newer quote."""

from __future__ import annotations

from typing import Any

import orjson

from . import events as ev
from .fold import Folded


class QuotesFold:
    script = "quotes"

    def fold(self, events: list[dict[str, Any]]) -> Folded:
        out = Folded(self.script)
        newest: dict[str, tuple[int, int, dict[str, Any]]] = {}
        for event in events:
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
        out.records = [[sym, t, q, _doc(t, q, e)] for sym, (t, q, e) in newest.items()]
        return out


def _doc(t: int, q: int, e: dict[str, Any]) -> str:
    bp, ap = e["bp"], e["ap"]
    return orjson.dumps(
        {
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
    ).decode()
