"""Chart history, the pure parts: the vendor's minute bars as MDC minute bars, the range to ask for, and
the merge with the live bars that a ``bars.SYM`` snapshot carries.

The history of a symbol (``Names.history``) holds the minute bars of the day and of the previous trading
day from the vendor's REST API, written by a gateway (``wds.history``) in the very shape the processors
write live minute bars (``mdp.aggregates``: ``{"t","e","o","h","l","c","v","vw"}``, ``t`` the start and
``e`` the end, in ms). A snapshot's minute bars are the two merged by start, the live bar winning: the
live bars are the pipeline's own, the history only fills what it did not see.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import orjson

from .tradingday import TradingDay

MINUTE_MS = 60_000


def fetch_range(days: TradingDay, day: str) -> tuple[int, int]:
    """The first and last ms of the bars to ask for on ``day``: from the start of the previous trading day
    to the end of ``day`` (the vendor answers with the bars so far)."""
    start, _ = days.bounds(days.previous(day))
    _, end = days.bounds(day)
    return start, end - 1


def _number(x: Any) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def mdc_bar(vendor: Any) -> dict[str, Any] | None:
    """A vendor minute bar (``{"o","h","l","c","v","vw","n","t"}``) as an MDC minute bar; None when it is
    not a valid bar (the same checks the processors make on live bars)."""
    if not isinstance(vendor, dict):
        return None
    t, o, h, low, c, v = (vendor.get(f) for f in ("t", "o", "h", "l", "c", "v"))
    if type(t) is not int or t <= 0 or not all(_number(x) and x > 0 for x in (o, h, low, c)):
        return None
    if not low <= min(o, c) <= max(o, c) <= h:
        return None
    if not _number(v) or v < 0:
        return None
    vw = vendor.get("vw")
    if vw is not None and not _number(vw):
        vw = None
    if type(v) is float and v.is_integer():
        v = int(v)  # the live bars carry a whole volume as an integer
    return {"t": t, "e": t + MINUTE_MS, "o": o, "h": h, "l": low, "c": c, "v": v, "vw": vw}


def history_members(vendor_bars: Iterable[Any], start: int, end: int, keep: int) -> list[tuple[int, bytes]]:
    """The (start, JSON) members of a history: the valid bars starting in [start, end], one per start (the
    later in the answer wins), oldest first, the newest ``keep``."""
    by_start: dict[int, bytes] = {}
    for vendor in vendor_bars:
        bar = mdc_bar(vendor)
        if bar is not None and start <= bar["t"] <= end:
            by_start[bar["t"]] = orjson.dumps(bar)
    return sorted(by_start.items())[-keep:] if keep > 0 else []


Bar = dict[str, Any]


def merge_minutes(history: list[Bar], live: list[Bar], n: int = 0) -> list[Bar]:
    """History and live minute bars (each oldest first) as one list by start, oldest first, the live bar
    winning at an equal start; the newest ``n`` (all when 0)."""
    if not history:
        return live[-n:] if n > 0 else live
    by_start = {bar["t"]: bar for bar in history if isinstance(bar, dict) and "t" in bar}
    for bar in live:
        by_start[bar["t"]] = bar
    merged = [by_start[t] for t in sorted(by_start)]
    return merged[-n:] if n > 0 else merged
