"""The example plug-in: a momentum signal from minute bars, on ``signals.momentum``.

For each symbol it keeps a fast and a slow exponential moving average of minute-bar closes (5 and 20
bars). Once both have seen ``SLOW`` bars, a cross of the fast average over the slow one publishes
``{"sym", "side": "buy"|"sell", "close", "fast", "slow", "t"}`` (type ``signal``) and stores the
symbol's latest signal under ``<prefix>:signal:momentum:<SYM>``.

State is per process and bounded (``MAX_SYMBOLS``, least recently updated dropped). It is a teaching
example of the plug-in interface, not trading advice.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from .plugins import Publish, Store

FAST, SLOW = 5, 20
MAX_SYMBOLS = 50_000


class Momentum:
    name = "momentum"
    events = frozenset({"AM", "XA", "CA"})

    def __init__(self) -> None:
        # sym -> [fast, slow, bars seen, last side, last bar start]
        self.state: OrderedDict[str, list[Any]] = OrderedDict()

    def process(self, events: list[dict[str, Any]]) -> list[Publish | Store]:
        out: list[Publish | Store] = []
        for bar in sorted(events, key=_start):
            sym, close, start = bar.get("sym") or bar.get("pair"), bar.get("c"), bar.get("s")
            if type(sym) is not str or type(close) not in (int, float) or type(start) is not int:
                continue  # the aggregates processor reports bad bars; a signal just skips them
            st = self.state.get(sym)
            if st is None:
                st = self.state[sym] = [close, close, 0, None, 0]
                if len(self.state) > MAX_SYMBOLS:
                    self.state.popitem(last=False)
            else:
                self.state.move_to_end(sym)
            if start <= st[4]:
                continue  # a repeated or older bar
            st[0] += (close - st[0]) * 2 / (FAST + 1)
            st[1] += (close - st[1]) * 2 / (SLOW + 1)
            st[2] += 1
            st[4] = start
            if st[2] < SLOW:
                continue
            side = "buy" if st[0] > st[1] else "sell"
            if side != st[3]:
                crossed = st[3] is not None
                st[3] = side
                if not crossed:
                    continue  # the first side is a state, not a cross
                data = {"sym": sym, "side": side, "close": close, "fast": round(st[0], 6),
                        "slow": round(st[1], 6), "t": bar.get("e", start)}  # fmt: skip
                out.append(Publish(f"signals.{self.name}", "signal", data["t"], data))
                out.append(Store(sym, data))
        return out


def _start(bar: dict[str, Any]) -> int:
    s = bar.get("s")
    return s if type(s) is int else 0
