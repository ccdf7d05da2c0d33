"""The trading day of an event time: shared by the processors (day stats reset at its start) and the
gateways (the chart history asks the vendor for this day and the one before), so both draw the same line.

The day of ``t`` is the local date (``MDP_TIMEZONE``) of ``t`` shifted back by ``MDP_DAY_START``: with
America/New_York and 04:00, 03:59 New York time still belongs to the previous day. Daylight saving time
is the time zone database's business (zoneinfo). The previous trading day is the weekday before
(Monday's is Friday); exchange holidays are not known here.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo


class TradingDay:
    """``day(t_ms) -> "2026-11-20"``; the current day's bounds are cached, so a call is two compares."""

    __slots__ = ("_day", "_hi", "_lo", "start", "tz")

    def __init__(self, timezone: str = "America/New_York", start: str = "04:00") -> None:
        self.tz = zoneinfo.ZoneInfo(timezone)
        self.start = dt.time.fromisoformat(start)
        self._lo, self._hi, self._day = 0, 0, ""

    def __call__(self, t_ms: int) -> str:
        if self._lo <= t_ms < self._hi:
            return self._day
        return self._compute(t_ms)

    def bounds(self, day: str) -> tuple[int, int]:
        """The first and one-past-last ms of ``day``."""
        date = dt.date.fromisoformat(day)
        return self._ms(date), self._ms(date + dt.timedelta(days=1))

    @staticmethod
    def previous(day: str) -> str:
        """The trading day before ``day``: the weekday before it."""
        date = dt.date.fromisoformat(day) - dt.timedelta(days=1)
        while date.weekday() >= 5:  # Saturday, Sunday
            date -= dt.timedelta(days=1)
        return date.isoformat()

    def _ms(self, date: dt.date) -> int:
        return int(dt.datetime.combine(date, self.start, tzinfo=self.tz).timestamp() * 1000)

    def _compute(self, t_ms: int) -> str:
        local = dt.datetime.fromtimestamp(t_ms / 1000, self.tz)
        date = local.date()
        if local.time() < self.start:
            date -= dt.timedelta(days=1)
        day = date.isoformat()
        self._lo, self._hi = self.bounds(day)
        self._day = day
        return day
