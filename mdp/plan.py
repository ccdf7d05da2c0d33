"""From one MDQ message to the Redis script calls that apply it: routing events to folds, chunking.

``Planner.plan(*batches)`` sends each event of one or more consecutive messages of a queue to the fold
of its type (``ROUTES``; anything else to ``raw``) and to each plug-in that asked for its type, and cuts
the records into calls of at most ``MDP_CHUNK_SYMBOLS`` records, so no single script blocks Redis for
long whatever the message size. Folding several messages together is what makes a busy processor
cheaper per event: a symbol's quotes of the whole group become one write. Each call is numbered, for
its redelivery id. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mdpipe.settings import MdcSettings, MdpSettings
from mdq.message import Batch

from .aggregates import MINUTE_BARS, SECOND_BARS, AggregatesFold
from .fold import Fold
from .halts import HaltsFold
from .plugins import Plugin, PluginFold
from .quotes import QuotesFold
from .raw import RawFold
from .session import TradingDay
from .trades import TradesFold

#: Event type -> fold. Forex quotes (``C``) and index values (``V``) use other field names: raw for now.
ROUTES: dict[str, str] = {
    "T": "trades",
    "XT": "trades",
    "Q": "quotes",
    "XQ": "quotes",
    **dict.fromkeys(SECOND_BARS | MINUTE_BARS, "aggregates"),
    "LULD": "halts",
}


@dataclass(slots=True)
class Call:
    script: str
    records: list[list[Any]]
    chunk: int  # number within the message, part of the redelivery id


@dataclass(slots=True)
class Plan:
    calls: list[Call] = field(default_factory=list)
    invalid: list[tuple[Any, str]] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)  # applied, by fold


class Planner:
    def __init__(self, mdp: MdpSettings, mdc: MdcSettings, plugins: list[Plugin] = ()) -> None:  # type: ignore[assignment]
        day = TradingDay(mdp.mdp_timezone, mdp.mdp_day_start)
        self.folds: dict[str, Fold] = {
            "trades": TradesFold(day, mdp.exclude_conditions),
            "quotes": QuotesFold(),
            "aggregates": AggregatesFold(day),
            "halts": HaltsFold(mdp.halt_indicators),
            "raw": RawFold(),
        }
        self.plugins = [PluginFold(p) for p in plugins]
        self.chunk = mdp.mdp_chunk_symbols

    def plan(self, *batches: Batch) -> Plan:
        plan = Plan()
        groups: dict[str, list[dict[str, Any]]] = {}
        wanted: list[list[dict[str, Any]]] = [[] for _ in self.plugins]
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
            for i, plugin in enumerate(self.plugins):
                if kind in plugin.plugin.events:
                    wanted[i].append(event)
        chunk = 0
        folded = [self.folds[name].fold(events) for name, events in groups.items()]
        folded += [plugin.fold(events) for plugin, events in zip(self.plugins, wanted, strict=True) if events]
        for result in folded:
            plan.invalid.extend(result.invalid)
            if result.script != "plugin":
                plan.events[result.script] = plan.events.get(result.script, 0) + result.events
            records = result.records
            for start in range(0, len(records), self.chunk):
                plan.calls.append(Call(result.script, records[start : start + self.chunk], chunk))
                chunk += 1
        return plan
