"""Structured logging: one JSON object per line on stderr, and no secret in any line.

Two defences keep secrets out of logs. Fields whose name says secret (token, password, api_key, cookie,
authorization, ...) are replaced by ``"[redacted]"``; and every secret value the process knows
(registered with ``register_secret`` when settings are loaded) is scrubbed from every message, field
and traceback, which also covers libraries that log frames at DEBUG level (``websockets`` logs the auth
frame that carries the vendor API key).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
import threading
from typing import Any

import orjson

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime", "taskName"}
)
_SECRET_NAME = re.compile(r"(token|secret|passw|api_?key|cookie|authorization|credential)", re.IGNORECASE)
_REDACTED = "[redacted]"
_MIN_SECRET_LEN = 4  # shorter values would scrub ordinary words

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Scrub ``value`` from every log line this process writes from now on."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _secrets_lock:
            _secrets.add(value)


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced, in one pass (a replacement is never scanned
    again, so one secret inside another or inside the marker cannot garble it)."""
    if not _secrets:
        return text
    pattern = _pattern()
    return pattern.sub(_REDACTED, text) if pattern is not None else text


_compiled: tuple[frozenset[str], re.Pattern[str] | None] = (frozenset(), None)


def _pattern() -> re.Pattern[str] | None:
    global _compiled
    with _secrets_lock:
        current = frozenset(_secrets)
    if current != _compiled[0]:
        # longest first: a secret that contains another is replaced whole
        alternatives = sorted(current, key=len, reverse=True)
        _compiled = (current, re.compile("|".join(map(re.escape, alternatives))) if alternatives else None)
    return _compiled[1]


def _clean(key: str, value: Any) -> Any:
    if _SECRET_NAME.search(key):
        return _REDACTED
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return scrub(str(value))


class JsonFormatter(logging.Formatter):
    """``{"ts":..., "level":..., "component":..., "logger":..., "msg":..., <extra fields>}``."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = _clean(key, value)
        if record.exc_info:
            entry["exc"] = scrub(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal, with the same scrubbing."""

    def __init__(self, component: str) -> None:
        super().__init__(f"%(asctime)s {component} %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: _clean(k, v) for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items() if not k.startswith("_"))
        return scrub(line)


def setup(component: str, level: str = "INFO", fmt: str = "json") -> None:
    """Send every logger's records to stderr in the chosen format; call once per process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(component) if fmt == "json" else TextFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that log every frame at DEBUG would flood the log; they get INFO at most.
    for noisy in ("websockets", "aio_pika", "aiormq", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(level)))
