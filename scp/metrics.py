"""SCP's Prometheus metrics, summed over the gunicorn workers (prometheus-client's multiprocess mode:
``mdpipe scp`` sets ``PROMETHEUS_MULTIPROC_DIR`` to a private, emptied ``SCP_DATA_DIR/metrics`` before the
workers start, and marks each worker's files dead when it exits).

The master imports this module (through ``scp.web``) before it sets that directory, and the workers
inherit what it imported: metrics made at import would keep their values in the worker's memory, where
the collector does not look (``/metrics`` was empty). So each metric is made on first use, in the
process that uses it, with the kind of value the directory calls for.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

LOGIN_OUTCOMES = ("ok", "failed", "limited")
_SPECS: dict[str, tuple[type, str, str, tuple[str, ...]]] = {
    "API_REQUESTS": (Counter, "mdpipe_scp_api_requests_total", "API requests", ("method", "route", "status")),
    "API_SECONDS": (Histogram, "mdpipe_scp_api_seconds", "API request duration", ("route",)),
    "API_AUTH_FAILURES": (Counter, "mdpipe_scp_api_auth_failures_total", "Requests with a bad API token", ()),
    "LOGINS": (Counter, "mdpipe_scp_logins_total", "Login attempts by outcome", ("outcome",)),
}
_made: dict[str, Any] = {}
_made_in = 0  # the pid that made them: a forked worker makes its own
_lock = threading.Lock()


def _make_all() -> None:
    global _made_in
    registry: Any = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        values.ValueClass = values.get_value_class()  # file-backed, named by this process's pid
        registry = None  # the collector reads the files, not a registry
    for name, (kind, metric, doc, labels) in _SPECS.items():
        _made[name] = kind(metric, doc, list(labels), registry=registry)
    _made_in = os.getpid()
    for outcome in LOGIN_OUTCOMES:  # scraped at 0 before the first attempt: a rate of failures needs them
        _made["LOGINS"].labels(outcome)


def __getattr__(name: str) -> Any:
    if name not in _SPECS:
        raise AttributeError(name)
    with _lock:
        if _made_in != os.getpid():
            _make_all()
    return _made[name]


def exposition() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        with _lock:
            if _made_in != os.getpid():
                _make_all()  # the series exist (at 0) even in a worker that served nothing else yet
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
