"""What every processor's fold returns, and the interface a processor (built-in or plug-in) follows.

A fold is pure: a list of vendor events in, one record per symbol (and trading day) out, for
``mdp.merge`` to merge into the state (see each fold for its record), plus the events it refused with
the reason. No I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class Folded:
    kind: str  # the fold: trades, quotes, aggregates, halts, raw, plugin
    records: list[Any] = field(default_factory=list)
    invalid: list[tuple[Any, str]] = field(default_factory=list)
    events: int = 0  # events applied


class Fold(Protocol):
    #: the fold's name, which ``mdp.merge`` dispatches on
    kind: str

    def fold(self, events: list[dict[str, Any]]) -> Folded: ...
