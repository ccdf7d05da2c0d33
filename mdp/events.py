"""Checks every processor applies to a vendor event before it may touch state.

An event failing them is not applied; the processor returns it with the reason, and the service sends
it to the dead-letter queue (the rest of its message is applied).
"""

from __future__ import annotations

from typing import Any

from mdc.names import SYMBOL_RE

T_MIN = 10**12  # event times are ms since the epoch: 2001-09-09 ...
T_MAX = 10**13  # ... to 2286-11-20; a time in s or ns is refused, not misread
PRICE_MAX = 1e12
SIZE_MAX = 10**15


class Invalid(Exception):
    """Raised by a fold for one event; the message is the reason, safe to log."""


_symbols: set[str] = set()  # symbols already checked; bounded below
#: For the folds' fast paths: ``type(sym) is str and sym in KNOWN_SYMBOLS`` means the symbol is valid.
KNOWN_SYMBOLS = _symbols


def symbol(event: dict[str, Any]) -> str:
    """The event's symbol, from the first of ``mdpipe.massive.SYMBOL_FIELDS`` it has: ``sym`` (stocks,
    options, futures, indices' bars), ``T`` (LULD, index values ``V``), ``pair`` (crypto, forex bars),
    ``p`` (forex quotes ``C``; a number elsewhere, so never a symbol)."""
    sym = event.get("sym")
    if sym is None:
        sym = event.get("T")
        if sym is None:
            sym = event.get("pair")
            if sym is None:
                sym = event.get("p")
    if type(sym) is not str:
        raise Invalid("symbol missing or not made of [A-Za-z0-9.:/_^-]{1,64}")
    if sym in _symbols:
        return sym
    if not SYMBOL_RE.fullmatch(sym):
        raise Invalid("symbol missing or not made of [A-Za-z0-9.:/_^-]{1,64}")
    if len(_symbols) > 200_000:
        _symbols.clear()
    _symbols.add(sym)
    return sym


def time_ms(event: dict[str, Any], field: str = "t") -> int:
    t = event.get(field)
    if type(t) is not int or not T_MIN <= t < T_MAX:
        raise Invalid(f"{field} must be an integer time in ms since the epoch")
    return t


def sequence(event: dict[str, Any]) -> int:
    q = event.get("q", 0)
    if type(q) is not int or q < 0:
        raise Invalid("q must be a non-negative integer")
    return q


def price(event: dict[str, Any], field: str) -> float:
    p = event.get(field)
    if (type(p) is not float and type(p) is not int) or not 0 <= p < PRICE_MAX:
        raise Invalid(f"{field} must be a price (a number from 0)")
    return p


def size(event: dict[str, Any], field: str, default: float | None = None) -> float:
    s = event.get(field, default)
    if (type(s) is not int and type(s) is not float) or not 0 <= s < SIZE_MAX:
        raise Invalid(f"{field} must be a size (a number from 0)")
    return s


def int_list(event: dict[str, Any], field: str) -> list[int]:
    value = event.get(field)
    if value is None:
        return []
    if type(value) is not list or not all(type(x) is int for x in value) or len(value) > 64:
        raise Invalid(f"{field} must be a list of integers")
    return value


#: The emulator's send stamp (``SIM_SEND_TS``): ns since the epoch, carried into the trade and quote
#: documents for latency measurement. Not vendor data: a stamp that is not such an integer is left out,
#: the event is applied all the same.
SEND_STAMP = "_st"
SEND_STAMP_MAX = 2**63


def carry_send_stamp(event: dict[str, Any], doc: dict[str, Any]) -> None:
    """Put the event's send stamp last in ``doc`` (trades and quotes) when it is a positive integer
    below 2**63; nothing otherwise."""
    if SEND_STAMP in event:  # the common case, a vendor event, costs one lookup
        st = event[SEND_STAMP]
        if type(st) is int and 0 < st < SEND_STAMP_MAX:
            doc[SEND_STAMP] = st


def small_int(event: dict[str, Any], field: str) -> int | None:
    value = event.get(field)
    if value is not None and (type(value) is not int or not -(2**31) <= value < 2**31):
        raise Invalid(f"{field} must be an integer")
    return value
