"""Everything without a processor of its own (imbalances, values, unknown event types): the newest
``MDC_RAW_EVENTS`` of each event type kept for ``MDC_RAW_TTL_S``, for inspection, and counted.

Record: ``(event type, [event JSON, ...])``, oldest first."""

from __future__ import annotations

import re
from typing import Any

import orjson

from .fold import Folded

_EVENT_TYPE = re.compile(r"[A-Za-z0-9_]{1,16}")


class RawFold:
    kind = "raw"

    def fold(self, events: list[dict[str, Any]]) -> Folded:
        out = Folded(self.kind)
        by_type: dict[str, list[bytes]] = {}
        for event in events:
            kind = event.get("ev")
            if type(kind) is not str or not _EVENT_TYPE.fullmatch(kind):
                kind = "unknown"
            by_type.setdefault(kind, []).append(orjson.dumps(event))
            out.events += 1
        out.records = [(kind, items) for kind, items in by_type.items()]
        return out
