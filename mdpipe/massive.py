"""Facts about the Massive (formerly Polygon.io) WebSocket protocol, in one place.

The emulator speaks this protocol and the listener consumes it; both take the list of markets, the
event types each market carries, the status names and the symbol field of each event from here.
See docs/massive-protocol.md for the sources of these facts.
"""

from __future__ import annotations

from typing import Any

#: Markets, as they appear in the URL path (``wss://socket.massive.com/<market>``).
MARKETS: tuple[str, ...] = (
    "stocks",
    "options",
    "forex",
    "crypto",
    "indices",
    "futures",
    "futures/cme",
    "futures/cbot",
    "futures/nymex",
    "futures/comex",
)

_FUTURES = frozenset({"T", "Q", "A", "AM"})

#: Event types (the ``ev`` field) each market publishes, as the ``massive`` client 2.9 knows them.
EVENT_TYPES: dict[str, frozenset[str]] = {
    "stocks": frozenset({"T", "Q", "A", "AM", "LULD", "NOI", "FMV", "LV"}),
    "options": frozenset({"T", "Q", "A", "AM", "FMV", "LV"}),
    "forex": frozenset({"C", "CA", "CAS", "AM", "FMV", "LV"}),
    "crypto": frozenset({"XT", "XQ", "XL2", "XA", "XAS", "AM", "FMV", "LV"}),
    "indices": frozenset({"V", "A", "AM"}),
    "futures": _FUTURES,
    "futures/cme": _FUTURES,
    "futures/cbot": _FUTURES,
    "futures/nymex": _FUTURES,
    "futures/comex": _FUTURES,
}

#: Vendor feed host names; MASSIVE_FEED also accepts any host:port (the emulator).
FEEDS: tuple[str, ...] = (
    "socket.massive.com",
    "delayed.massive.com",
    "business.massive.com",
    "delayed-business.massive.com",
    "launchpad.massive.com",
)

STATUS = "status"
# Status values the server sends in ``{"ev":"status","status":...}`` events.
CONNECTED = "connected"
AUTH_SUCCESS = "auth_success"
AUTH_FAILED = "auth_failed"
AUTH_TIMEOUT = "auth_timeout"
SUCCESS = "success"
ERROR = "error"
MAX_CONNECTIONS = "max_connections"
SLOW_CONSUMER = "slow_consumer"

#: Fields that hold the symbol, in the order they are tried: ``sym`` (trades, quotes, aggregates, FMV),
#: ``T`` (LULD, NOI, index values), ``pair`` (forex aggregates and crypto), ``p`` (forex quotes ``C``;
#: in every other event type ``p`` is a number, a price, and so never taken).
SYMBOL_FIELDS: tuple[str, ...] = ("sym", "T", "pair", "p")


def event_symbol(event: dict[str, Any]) -> str | None:
    """The symbol an event is about, or None when it names none."""
    for field in SYMBOL_FIELDS:
        value = event.get(field)
        if isinstance(value, str):
            return value
    return None


def status_event(status: str, message: str) -> dict[str, str]:
    return {"ev": STATUS, "status": status, "message": message}


def parse_subscriptions(params: str, market: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Split ``"T.*,Q.AAPL"`` into ``[("T", "*"), ("Q", "AAPL")]`` and the list of invalid parts.

    A part is ``EV.SYMBOL`` where EV is an event type of ``market`` and SYMBOL is ``*`` or a symbol
    (which may itself contain dots or colons, as ``O:SPY251219C00650000`` or ``BRK.B`` do).
    """
    types = EVENT_TYPES.get(market, frozenset())
    valid: list[tuple[str, str]] = []
    invalid: list[str] = []
    for raw in params.split(","):
        part = raw.strip()
        if not part:
            continue
        ev, dot, sym = part.partition(".")
        if not dot or ev not in types or not _valid_symbol(sym):
            invalid.append(part)
        else:
            valid.append((ev, sym))
    return valid, invalid


_SYMBOL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.:/-_^")


def _valid_symbol(sym: str) -> bool:
    return sym == "*" or (0 < len(sym) <= 64 and all(ch in _SYMBOL_CHARS for ch in sym))
