"""LULD: the newest price bands per symbol and whether it is halted.

A symbol is halted while its newest LULD event carries one of ``MDP_HALT_INDICATORS`` (by default 15,
the SIP's "Suspended during Trading Halt or Trading Pause"); the next band without it (16, "Re-Opening
Update", or an ordinary update) resumes it. The merge keeps the halted set, and on a change writes the
``halts`` feed and a ``halt``/``resume`` alert.

Record: ``(sym, t, q, LULD JSON, halted)``, the newest per symbol; the JSON starts with ``{"t":T,"q":Q``.
"""

from __future__ import annotations

from typing import Any

import orjson

from . import events as ev
from .fold import Folded


class HaltsFold:
    kind = "halts"

    def __init__(self, halt_indicators: frozenset[int]) -> None:
        self.halt_indicators = halt_indicators

    def fold(self, events: list[dict[str, Any]]) -> Folded:
        out = Folded(self.kind)
        newest: dict[str, tuple[int, int, dict[str, Any]]] = {}
        for event in events:
            try:
                sym = ev.symbol(event)
                t = ev.time_ms(event)
                q = ev.sequence(event)
                upper, lower = ev.price(event, "h"), ev.price(event, "l")
                if lower > upper:
                    raise ev.Invalid("l (lower band) must not be above h (upper band)")
                ev.int_list(event, "i")
            except ev.Invalid as exc:
                out.invalid.append((event, str(exc)))
                continue
            out.events += 1
            cur = newest.get(sym)
            if cur is None or t > cur[0] or (t == cur[0] and q >= cur[1]):
                newest[sym] = (t, q, event)
        records = []
        for sym, (t, q, e) in newest.items():
            indicators = e.get("i") or []
            halted = not self.halt_indicators.isdisjoint(indicators)
            doc = {"t": t, "q": q, "upper": e["h"], "lower": e["l"], "i": indicators, "halted": halted}
            records.append((sym, t, q, orjson.dumps(doc), halted))
        out.records = records
        return out
