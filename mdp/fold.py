"""What every processor's fold returns, and the interface a processor (built-in or plug-in) follows.

A fold is pure: a list of vendor events in, per-symbol records for one Lua script out (see that script's
header for the record layout), plus the events it refused with the reason. No I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class Folded:
    script: str
    records: list[list[Any]] = field(default_factory=list)
    invalid: list[tuple[Any, str]] = field(default_factory=list)
    events: int = 0  # events applied


class Fold(Protocol):
    #: the Lua script that applies the records (``mdp/lua/<script>.lua``)
    script: str

    def fold(self, events: list[dict[str, Any]]) -> Folded: ...
