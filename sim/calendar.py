"""The emulator's US-Eastern calendar, with no I/O: trading days, sessions, local times as epoch ms.

The trading day of a time is its New York date shifted back by 04:00, the rule the processors apply
with their defaults (``MDP_TIMEZONE=America/New_York``, ``MDP_DAY_START=04:00``): 03:59 still belongs
to the day before, so the synthetic market and the REST ledger start a new day when the pipeline does.
The previous trading day is the weekday before (Monday's is Friday); exchange holidays are not
modelled. Sessions, for ``/v1/marketstatus/now``: pre-market 04:00-09:30, regular 09:30-16:00,
after-hours 16:00-20:00 on weekdays, closed otherwise.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

EASTERN = zoneinfo.ZoneInfo("America/New_York")
DAY_START = dt.time(4, 0)
OPEN, CLOSE, POST_END = dt.time(9, 30), dt.time(16, 0), dt.time(20, 0)
REGULAR_MINUTES = 390  # 09:30 to 16:00


def eastern_ms(date: dt.date, time: dt.time) -> int:
    """Epoch ms of ``time`` New York time on ``date`` (daylight saving from the time zone database)."""
    return int(dt.datetime.combine(date, time, tzinfo=EASTERN).timestamp() * 1000)


def eastern(t_ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(t_ms / 1000, EASTERN)


def trading_day(t_ms: int) -> dt.date:
    local = eastern(t_ms)
    return local.date() - dt.timedelta(days=1) if local.time() < DAY_START else local.date()


def day_bounds(day: dt.date) -> tuple[int, int]:
    """The first and one-past-last ms of trading day ``day``."""
    return eastern_ms(day, DAY_START), eastern_ms(day + dt.timedelta(days=1), DAY_START)


def previous_trading_day(day: dt.date) -> dt.date:
    day -= dt.timedelta(days=1)
    while day.weekday() >= 5:  # Saturday, Sunday
        day -= dt.timedelta(days=1)
    return day


def session(t_ms: int) -> str:
    """``pre``, ``regular``, ``post`` or ``closed`` at ``t_ms``."""
    local = eastern(t_ms)
    now = local.time()
    if local.weekday() >= 5 or now < DAY_START or now >= POST_END:
        return "closed"
    if now < OPEN:
        return "pre"
    return "regular" if now < CLOSE else "post"


def midnight(t_ms: int) -> int:
    """Epoch ms of the New York midnight that starts the calendar date of ``t_ms``."""
    return eastern_ms(eastern(t_ms).date(), dt.time(0))
