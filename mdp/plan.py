"""From a group of MDQ messages to what the merge takes: routing events to folds.

``Planner.plan(*batches)`` sends each event of one or more consecutive messages of a queue to the fold
of its type (``ROUTES``; anything else to ``raw``) and to each plug-in that asked for its type. Folding
several messages together is what makes a busy processor cheaper per event: a symbol's quotes of the
whole group become one write. Pure: no I/O, no state (it runs while the previous group is written).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mdc.tradingday import TradingDay
from mdpipe.settings import MdpSettings
from mdq.message import Batch

from .aggregates import MINUTE_BARS, SECOND_BARS, AggregatesFold
from .fold import Fold, Folded
from .halts import HaltsFold
from .plugins import Plugin, PluginFold
from .quotes import ForexQuotesFold, QuotesFold
from .raw import RawFold
from .trades import TradesFold
from .values import ValuesFold

#: Event type -> fold, for every market (docs/mdp.md, "Markets"): trades (``T``: stocks, options,
#: futures; ``XT``: crypto, whose conditions exclude nothing), quotes (``Q``, ``XQ``; forex ``C``
#: through a fold of their own, into the same document), bars (``A``/``AM``, ``XAS``/``XA``,
#: ``CAS``/``CA``), LULD bands, index values (``V``, into the day stats). Anything else (``NOI``,
#: ``FMV``, ``LV``, ``XL2``) is kept raw.
ROUTES: dict[str, str] = {
    "T": "trades",
    "XT": "crypto_trades",
    "Q": "quotes",
    "XQ": "quotes",
    "C": "forex_quotes",
    **dict.fromkeys(SECOND_BARS | MINUTE_BARS, "aggregates"),
    "LULD": "halts",
    "V": "values",
}
#: The folds whose records are a symbol's state (``record[0]`` or ``record.sym``): the merge needs it held.
STATEFUL = frozenset({"trades", "crypto_trades", "quotes", "forex_quotes", "aggregates", "halts", "values"})
#: The folds whose records are objects with a ``sym`` (the others' are tuples, the symbol first).
_BY_ATTRIBUTE = ("trades", "aggregates", "values")


@dataclass(slots=True)
class Plan:
    folded: list[Folded] = field(default_factory=list)
    invalid: list[tuple[Any, str]] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)  # applied, by fold
    symbols: set[str] = field(default_factory=set)  # whose state the merge needs


class Planner:
    def __init__(self, mdp: MdpSettings, plugins: list[Plugin] = ()) -> None:  # type: ignore[assignment]
        day = self.day = TradingDay(*mdp.trading_day())
        self.folds: dict[str, Fold] = {
            "trades": TradesFold(day, mdp.exclude_conditions),
            # a crypto trade's conditions are its side (1 sell, 2 buy), not the SIP's: none is excluded
            "crypto_trades": TradesFold(day, frozenset()),
            "quotes": QuotesFold(),
            "forex_quotes": ForexQuotesFold(),
            # the vendor's index bars have no volume (docs/massive-protocol.md): 0
            "aggregates": AggregatesFold(day, 0 if mdp.massive_market == "indices" else None),
            "halts": HaltsFold(mdp.halt_indicators),
            "values": ValuesFold(day),
            "raw": RawFold(),
        }
        self.plugins = [PluginFold(p) for p in plugins]
        #: event type -> the plug-ins (by index) that asked for it
        self._wants: dict[str, list[int]] = {}
        for i, plugin in enumerate(plugins):
            for kind in plugin.events:
                self._wants.setdefault(kind, []).append(i)

    def plan(self, *batches: Batch) -> Plan:
        plan = Plan()
        groups: dict[str, list[dict[str, Any]]] = {}
        wanted: list[list[dict[str, Any]]] = [[] for _ in self.plugins]
        wants = self._wants
        events = batches[0].events if len(batches) == 1 else [e for b in batches for e in b.events]
        for event in events:
            if type(event) is not dict:
                plan.invalid.append((event, "not a JSON object"))
                continue
            kind = event.get("ev")
            if type(kind) is not str:
                kind = ""  # a list or an object is no type: raw, which refuses it with a reason
            name = ROUTES.get(kind, "raw")
            group = groups.get(name)
            if group is None:
                group = groups[name] = []
            group.append(event)
            if kind in wants:
                for i in wants[kind]:
                    wanted[i].append(event)
        folded = [self.folds[name].fold(events) for name, events in groups.items()]
        folded += [plugin.fold(events) for plugin, events in zip(self.plugins, wanted, strict=True) if events]
        symbols = plan.symbols
        for result in folded:
            plan.invalid.extend(result.invalid)
            kind = result.kind
            if kind != "plugin":
                plan.events[kind] = plan.events.get(kind, 0) + result.events
            if not result.records:
                continue
            if kind in _BY_ATTRIBUTE:
                symbols.update(r.sym for r in result.records)
            elif kind in STATEFUL:
                symbols.update(r[0] for r in result.records)
            plan.folded.append(result)
        return plan
