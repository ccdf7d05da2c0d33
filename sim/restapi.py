"""The vendor's REST API as the emulator serves it, with no I/O: a request checked and parsed into a
``Call``, and the vendor's JSON answer to it made from a ``Ledger``. See docs/massive-protocol.md.

Routes (stocks only; anything else under ``/v1``, ``/v2``, ``/v3`` is a 404):

| route | path |
| --- | --- |
| ``snapshot_all`` | ``/v2/snapshot/locale/us/markets/stocks/tickers[?tickers=A,B]`` |
| ``snapshot_ticker`` | ``/v2/snapshot/locale/us/markets/stocks/tickers/{ticker}`` |
| ``movers`` | ``/v2/snapshot/locale/us/markets/stocks/{gainers,losers}`` |
| ``grouped`` | ``/v2/aggs/grouped/locale/us/market/stocks/{date}`` |
| ``prev`` | ``/v2/aggs/ticker/{ticker}/prev`` |
| ``range`` | ``/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}`` |
| ``market_status`` | ``/v1/marketstatus/now`` |

Every path part and query parameter the routes use is checked, and a bad one is a 400 with the
vendor's error body; parameters no route uses are ignored, as the vendor does. Nothing here raises
anything but ``ApiError``, whatever the input (a hypothesis test fuzzes ``parse``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from .calendar import CLOSE, day_bounds, eastern, eastern_ms, midnight, session
from .ledger import Ledger
from .prevday import Bar, PreviousDay

TICKER = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:\-]{0,23}")
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # ASCII digits only (int() takes any Unicode digit)
DIGITS = re.compile(r"[0-9]{1,13}")
MAX_TICKERS = 5000
DEFAULT_LIMIT, MAX_LIMIT = 5000, 50_000
MAX_MULTIPLIER = {"minute": 60, "hour": 24, "day": 31}
MOVERS, MOVERS_MIN_VOLUME = 20, 10_000  # the vendor's: top 20, of the tickers that traded 10,000 shares
RATE_LIMITED = (
    "You've exceeded the maximum requests per minute, please wait or upgrade your subscription to "
    "continue. https://massive.com/pricing"
)
SNAPSHOT = ("v2", "snapshot", "locale", "us", "markets", "stocks")
GROUPED = ("v2", "aggs", "grouped", "locale", "us", "market", "stocks")
INDEX_GROUPS = ("s_and_p", "societe_generale", "msci", "ftse_russell", "mstar", "mstarc", "cgi", "nasdaq",
                "dow_jones")  # fmt: skip
# the snapshot's names of an event's fields (the vendor's REST names differ from its stream's)
TRADE_FIELDS = (("c", "c"), ("i", "i"), ("p", "p"), ("s", "s"), ("t", "t"), ("x", "x"), ("q", "q"),
                ("z", "z"), ("r", "trfi"), ("f", "trft"))  # fmt: skip
QUOTE_FIELDS = (("P", "ap"), ("S", "as"), ("p", "bp"), ("s", "bs"), ("t", "t"), ("x", "bx"), ("X", "ax"),
                ("q", "q"), ("z", "z"))  # fmt: skip
_ZERO_DAY = {"o": 0, "h": 0, "l": 0, "c": 0, "v": 0, "vw": 0, "n": 0}
_ZERO_MIN = {"av": 0, "t": 0, "n": 0, "o": 0, "h": 0, "l": 0, "c": 0, "v": 0, "vw": 0}


class ApiError(Exception):
    """An error answer: ``status`` and the vendor's JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def request_id() -> str:
    return uuid.uuid4().hex


def error(status: int, message: str) -> ApiError:
    """The vendor's error body: NOT_FOUND with a ``message``, ERROR with an ``error`` otherwise."""
    if status == 404:
        return ApiError(404, {"status": "NOT_FOUND", "request_id": request_id(), "message": message})
    return ApiError(status, {"status": "ERROR", "request_id": request_id(), "error": message})


def bad(message: str) -> ApiError:
    return error(400, message)


def is_rest_path(path: str) -> bool:
    return path.startswith(("/v1/", "/v2/", "/v3/", "/vX/"))


@dataclass(frozen=True, slots=True)
class Call:
    """A checked request: the route and its parameters."""

    route: str
    ticker: str = ""
    tickers: tuple[str, ...] | None = None
    direction: str = ""
    date: dt.date | None = None
    multiplier: int = 1
    timespan: str = ""
    start: str = ""  # the range bounds as given (kept in next_url), and as ms, both inclusive
    end: str = ""
    start_ms: int = 0
    end_ms: int = 0
    sort: str = "asc"
    limit: int = DEFAULT_LIMIT
    adjusted: bool = True


# -- parsing --------------------------------------------------------------------------------------


def parse(method: str, path: str, query: dict[str, list[str]]) -> Call:
    """The ``Call`` a request asks for, or ApiError (400 bad parameter, 404 unknown path, 405)."""
    parts = tuple(path.split("/")[1:]) if path.startswith("/") else ()
    if method != "GET":
        raise error(405, "method not allowed")
    if parts == (*SNAPSHOT, "tickers"):
        raw = _one(query, "tickers")
        _flag(query, "include_otc")
        return Call("snapshot_all", tickers=_tickers(raw or ""))
    if len(parts) == 8 and parts[:7] == (*SNAPSHOT, "tickers"):
        return Call("snapshot_ticker", ticker=_ticker(parts[7]))
    if len(parts) == 7 and parts[:6] == SNAPSHOT and parts[6] in ("gainers", "losers"):
        _flag(query, "include_otc")
        return Call("movers", direction=parts[6])
    if len(parts) == 8 and parts[:7] == GROUPED:
        _flag(query, "include_otc")
        return Call("grouped", date=_date(parts[7]), adjusted=_flag(query, "adjusted"))
    if len(parts) == 5 and parts[:3] == ("v2", "aggs", "ticker") and parts[4] == "prev":
        return Call("prev", ticker=_ticker(parts[3]), adjusted=_flag(query, "adjusted"))
    if len(parts) == 9 and parts[:3] == ("v2", "aggs", "ticker") and parts[4] == "range":
        return _range(parts[3], *parts[5:], query)
    if parts == ("v1", "marketstatus", "now"):
        return Call("market_status")
    raise error(404, "404 page not found")


def _range(ticker: str, multiplier: str, timespan: str, start: str, end: str, query: dict) -> Call:
    ticker = _ticker(ticker)
    if timespan not in ("second", "minute", "hour", "day", "week", "month", "quarter", "year"):
        raise bad(f"invalid timespan {timespan[:20]!r}")
    if timespan not in MAX_MULTIPLIER:
        raise bad(f"timespan {timespan!r} is not served by the emulator (minute, hour and day are)")
    if not DIGITS.fullmatch(multiplier) or not 1 <= int(multiplier) <= MAX_MULTIPLIER[timespan]:
        raise bad(f"multiplier must be from 1 to {MAX_MULTIPLIER[timespan]} for {timespan} bars")
    params = dict(query)
    cursor = _one(query, "cursor")
    if cursor is not None:  # a next_url's: its parameters win over any given beside it
        params.update({k: [v] for k, v in _cursor(cursor).items()})
    limit = _one(params, "limit")
    if limit is not None and (not DIGITS.fullmatch(limit) or not 1 <= int(limit) <= MAX_LIMIT):
        raise bad(f"limit must be an integer from 1 to {MAX_LIMIT}")
    sort = _one(params, "sort") or "asc"
    if sort not in ("asc", "desc"):
        raise bad("sort must be asc or desc")
    start_ms, end_ms = _bound(start, "from", False), _bound(end, "to", True)
    return Call(
        "range", ticker=ticker, multiplier=int(multiplier), timespan=timespan, start=start, end=end,
        start_ms=start_ms, end_ms=end_ms, sort=sort, limit=int(limit or DEFAULT_LIMIT),
        adjusted=_flag(params, "adjusted"),
    )  # fmt: skip


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise bad(f"{name} is given more than once")
    return values[0]


def _flag(query: dict[str, list[str]], name: str) -> bool:
    value = _one(query, name)
    if value is None:
        return name == "adjusted"  # adjusted by default; include_otc not
    if value not in ("true", "false"):
        raise bad(f"{name} must be true or false")
    return value == "true"


def _ticker(value: str) -> str:
    if not TICKER.fullmatch(value):
        raise bad(f"invalid ticker {value[:30]!r}")
    return value


def _tickers(value: str) -> tuple[str, ...] | None:
    if not value:
        return None  # every ticker, as the vendor reads an empty list
    names = value.split(",")
    if len(names) > MAX_TICKERS:
        raise bad(f"at most {MAX_TICKERS} tickers")
    return tuple(_ticker(name) for name in names)


def _date(value: str) -> dt.date:
    if DATE.fullmatch(value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise bad(f"invalid date {value[:30]!r}: YYYY-MM-DD")


def _bound(value: str, name: str, end: bool) -> int:
    """A range bound in ms: a date is its whole New York day (from its midnight; to its last ms)."""
    if DIGITS.fullmatch(value):
        return int(value)
    try:
        date = _date(value)
        day = date + dt.timedelta(days=1) if end else date
        return eastern_ms(day, dt.time(0)) - (1 if end else 0)
    except (ApiError, OverflowError, ValueError):
        raise bad(f"{name} must be a date (YYYY-MM-DD) or a millisecond timestamp") from None


def _cursor(value: str) -> dict[str, str]:
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
        pairs = parse_qsl(raw.decode("ascii"), strict_parsing=True)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad("invalid cursor") from None
    params = dict(pairs)
    if not pairs or len(params) != len(pairs) or not set(params) <= {"limit", "sort", "adjusted"}:
        raise bad("invalid cursor")
    return params


def cursor(call: Call) -> str:
    text = urlencode({"adjusted": str(call.adjusted).lower(), "limit": call.limit, "sort": call.sort})
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# -- answers --------------------------------------------------------------------------------------


class RestApi:
    """Answers checked calls from the ledger: ``answer(call, base_url) -> (status, body)``."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def answer(self, call: Call, base_url: str) -> tuple[int, dict[str, Any]]:
        try:
            return 200, getattr(self, "_" + call.route)(call, base_url)
        except ApiError as exc:
            return exc.status, exc.body

    def snapshot(self, sym: str) -> dict[str, Any] | None:
        """One ticker's snapshot, or None for a ticker with no previous day and nothing today."""
        led = self.ledger
        prev, agg, quote = led.previous(sym), led.trades.get(sym), led.last_quote(sym)
        if prev is None and agg is None and quote is None:
            return None
        out: dict[str, Any] = {"day": dict(_ZERO_DAY)}
        updated = 0
        if agg is not None and agg[4] > 0:
            o, h, low, c, v, value, n, _ = agg
            out["day"] = {"o": o, "h": h, "l": low, "c": c, "v": v, "vw": round(value / v, 4), "n": n}
        if quote is not None:
            out["lastQuote"] = _quote(quote)
            updated = out["lastQuote"].get("t", 0)
        trade = led.last_trade(sym)
        if trade is not None:
            out["lastTrade"] = _trade(trade)
            updated = max(updated, out["lastTrade"].get("t", 0))
        minute = led.minutes.get(sym)
        if minute is not None:
            t, o, h, low, c, v, vw, n, av = minute
            out["min"] = {"av": av, "t": t, "n": n, "o": o, "h": h, "l": low, "c": c, "v": v, "vw": vw}
        else:
            out["min"] = dict(_ZERO_MIN)
        if prev is not None:
            out["prevDay"] = {"o": prev.o, "h": prev.h, "l": prev.l, "c": prev.c, "v": prev.v, "vw": prev.vw,
                              "n": prev.n, "t": prev.t}  # fmt: skip
        change = out["day"]["c"] - prev.c if prev is not None and out["day"]["v"] else 0.0
        out["ticker"] = sym
        out["todaysChange"] = round(change, 4)
        out["todaysChangePerc"] = round(change / prev.c * 100, 4) if change and prev is not None else 0.0
        out["updated"] = updated
        return out

    def _snapshot_all(self, call: Call, base_url: str) -> dict[str, Any]:
        wanted = self.ledger.symbols() if call.tickers is None else dict.fromkeys(call.tickers)
        tickers = [s for s in map(self.snapshot, wanted) if s is not None]
        return {"status": "OK", "request_id": request_id(), "count": len(tickers), "tickers": tickers}

    def _snapshot_ticker(self, call: Call, base_url: str) -> dict[str, Any]:
        snap = self.snapshot(call.ticker)
        if snap is None:
            raise error(404, "Ticker not found.")
        return {"status": "OK", "request_id": request_id(), "ticker": snap}

    def _movers(self, call: Call, base_url: str) -> dict[str, Any]:
        led, ranked = self.ledger, []
        for sym, agg in led.trades.items():
            prev = led.previous(sym)
            if prev is not None and agg[4] >= MOVERS_MIN_VOLUME:
                change = (agg[3] - prev.c) / prev.c
                if (change > 0) if call.direction == "gainers" else (change < 0):
                    ranked.append((change, sym))
        ranked.sort(reverse=call.direction == "gainers")
        tickers = [self.snapshot(sym) for _, sym in ranked[:MOVERS]]
        return {"status": "OK", "request_id": request_id(), "tickers": tickers}

    def _grouped(self, call: Call, base_url: str) -> dict[str, Any]:
        led, results = self.ledger, []
        if call.date == led.prev_date:
            for sym in led.symbols():
                prev = led.previous(sym)
                if prev is not None:
                    results.append(_previous(prev))
        elif call.date == led.day:
            close = eastern_ms(led.day, CLOSE)
            for sym, (o, h, low, c, v, value, n, _) in led.trades.items():
                if v > 0:
                    results.append(_daily(sym, o, h, low, c, v, round(value / v, 4), n, close))
        return _list({"adjusted": call.adjusted}, results)

    def _prev(self, call: Call, base_url: str) -> dict[str, Any]:
        prev = self.ledger.previous(call.ticker)
        results = [] if prev is None else [_previous(prev)]
        return _list({"ticker": call.ticker, "adjusted": call.adjusted}, results)

    def _range(self, call: Call, base_url: str) -> dict[str, Any]:
        window = Windows(call.timespan, call.multiplier)
        base = self._minute_bars(call.ticker, call.start_ms, call.end_ms)
        if call.sort == "desc":
            base.reverse()
        page = _page(base, call.limit, window)
        bars = sorted(page) if call.sort == "desc" else page
        results = [
            {"v": v, "vw": vw, "o": o, "c": c, "h": h, "l": low, "t": t, "n": n}
            for t, o, h, low, c, v, vw, n in window.group(bars)
        ]
        if call.sort == "desc":
            results.reverse()
        head = {"ticker": call.ticker, "queryCount": len(page), "adjusted": call.adjusted}
        body = _list(head, results)
        if len(page) < len(base):
            nxt = str(base[len(page)][0])
            start, end = (nxt, call.end) if call.sort == "asc" else (call.start, nxt)
            body["next_url"] = (
                f"{base_url}/v2/aggs/ticker/{call.ticker}/range/{call.multiplier}/{call.timespan}/"
                f"{start}/{end}?cursor={cursor(call)}"
            )
        return body

    def _minute_bars(self, sym: str, start_ms: int, end_ms: int) -> list[Bar]:
        """The base bars of ``sym`` in [start_ms, end_ms], oldest first: the previous day's (made only
        when the range reaches it), then today's closed ones."""
        led, bars = self.ledger, []
        prev = led.previous(sym)
        if prev is not None:
            lo, hi = day_bounds(prev.date)
            if start_ms < hi and end_ms >= lo:
                bars += prev.bars()
        bars += led.day_bars(sym)
        return [bar for bar in bars if start_ms <= bar[0] <= end_ms]

    def _market_status(self, call: Call, base_url: str) -> dict[str, Any]:
        now_ms = self.ledger.clock_ms
        now = eastern(now_ms)
        part = session(now_ms)
        market = {"regular": "open", "pre": "extended-hours", "post": "extended-hours"}.get(part, "closed")
        indices = "open" if part == "regular" else "closed"
        weekday, hour = now.weekday(), now.hour
        fx_closed = weekday == 5 or (weekday == 6 and hour < 17) or (weekday == 4 and hour >= 17)
        return {
            "afterHours": part == "post",
            "currencies": {"crypto": "open", "fx": "closed" if fx_closed else "open"},
            "earlyHours": part == "pre",
            "exchanges": {"nasdaq": market, "nyse": market, "otc": market},
            "indicesGroups": dict.fromkeys(INDEX_GROUPS, indices) | {"cccy": "open"},
            "market": market,
            "serverTime": now.isoformat(timespec="seconds"),
        }


class Windows:
    """The windows bars are grouped into: ``multiplier`` minutes or hours counted from the New York
    midnight, or ``multiplier`` New York days counted from 0001-01-01; a window is named by its start."""

    def __init__(self, timespan: str, multiplier: int) -> None:
        self.timespan, self.multiplier = timespan, multiplier
        self.span = multiplier * (60_000 if timespan == "minute" else 3_600_000)
        self._lo, self._hi = 0, -1  # the New York calendar day last seen, for the midnight

    def __call__(self, t: int) -> int:
        if not self._lo <= t < self._hi:
            self._lo = midnight(t)
            self._hi = midnight(self._lo + 30 * 3_600_000)  # 30 h later: the next date, whatever DST does
        if self.timespan != "day":
            return self._lo + (t - self._lo) // self.span * self.span
        date = eastern(self._lo).date()
        first = dt.date.fromordinal((date.toordinal() - 1) // self.multiplier * self.multiplier + 1)
        return eastern_ms(first, dt.time(0))

    def group(self, bars: list[Bar]) -> list[Bar]:
        """``bars`` (oldest first) merged per window."""
        out: list[list] = []
        for t, o, h, low, c, v, vw, n in bars:
            start = self(t)
            if out and out[-1][0] == start:
                cur = out[-1]
                cur[2], cur[3], cur[4] = max(cur[2], h), min(cur[3], low), c
                cur[5] += v
                cur[6] += vw * v
                cur[7] += n
            else:
                out.append([start, o, h, low, c, v, vw * v, n])
        return [(t, o, h, low, c, v, round(pv / v, 4) if v else 0.0, n) for t, o, h, low, c, v, pv, n in out]


def _page(base: list[Bar], limit: int, window: Windows) -> list[Bar]:
    """The first ``limit`` base bars, cut at a window's edge so no window is split across pages (a
    window of more than ``limit`` bars is taken whole)."""
    if len(base) <= limit:
        return base
    edge = window(base[limit - 1][0])
    if window(base[limit][0]) != edge:
        return base[:limit]
    cut = limit
    while cut > 0 and window(base[cut - 1][0]) == edge:
        cut -= 1
    if cut == 0:
        cut = limit
        while cut < len(base) and window(base[cut][0]) == edge:
            cut += 1
    return base[:cut]


def _list(head: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """A list answer; ``results`` is left out when empty, as the vendor does."""
    body = {**head, "queryCount": head.get("queryCount", len(results)), "resultsCount": len(results)}
    if results:
        body["results"] = results
    return {**body, "status": "OK", "request_id": request_id()}


def _previous(prev: PreviousDay) -> dict:
    return _daily(prev.sym, prev.o, prev.h, prev.l, prev.c, prev.v, prev.vw, prev.n, prev.t)


def _daily(sym: str, o: float, h: float, low: float, c: float, v: int, vw: float, n: int, t: int) -> dict:
    return {"T": sym, "v": v, "vw": vw, "o": o, "c": c, "h": h, "l": low, "t": t, "n": n}


def _trade(e: dict[str, Any]) -> dict[str, Any]:
    """A trade event as the snapshot's ``lastTrade`` (times in ns)."""
    return _rename(e, TRADE_FIELDS)


def _quote(e: dict[str, Any]) -> dict[str, Any]:
    """A quote event as the snapshot's ``lastQuote``: P/S/X the ask, p/s/x the bid (times in ns)."""
    return _rename(e, QUOTE_FIELDS)


def _rename(e: dict[str, Any], fields: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    out = {}
    for name, field in fields:
        value = e.get(field)
        if field in ("t", "trft"):
            value = value * 1_000_000 if type(value) is int else None
        if value is not None:
            out[name] = value
    return out
