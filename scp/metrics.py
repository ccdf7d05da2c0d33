"""SCP's Prometheus metrics, summed over the gunicorn workers (prometheus-client's multiprocess mode:
``mdpipe scp`` sets ``PROMETHEUS_MULTIPROC_DIR`` to a private, emptied ``SCP_DATA_DIR/metrics`` before the
workers start, and marks each worker's files dead when it exits).

The master imports this module (through ``scp.web``) before it sets that directory, and the workers
inherit what it imported: metrics made at import keep their values in memory, where the collector does
not look (``/metrics`` was empty). So each worker makes them again once forked (``for_worker``, from
gunicorn's ``post_fork``), file-backed; users read them as ``metrics.NAME`` at each use.
"""

from __future__ import annotations

import os

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


def _make(registry: CollectorRegistry | None) -> tuple[Counter, Histogram, Counter, Counter]:
    logins = Counter("mdpipe_scp_logins_total", "Login attempts by outcome", ["outcome"], registry=registry)
    for outcome in LOGIN_OUTCOMES:  # scraped at 0 before the first attempt: a rate of failures needs them
        logins.labels(outcome)
    return (
        Counter(
            "mdpipe_scp_api_requests_total", "API requests", ["method", "route", "status"], registry=registry
        ),
        Histogram("mdpipe_scp_api_seconds", "API request duration", ["route"], registry=registry),
        Counter("mdpipe_scp_api_auth_failures_total", "Requests with a bad API token", registry=registry),
        logins,
    )


API_REQUESTS, API_SECONDS, API_AUTH_FAILURES, LOGINS = _make(REGISTRY)


def for_worker() -> None:
    """In a forked worker: the metrics again, file-backed under ``PROMETHEUS_MULTIPROC_DIR`` (named by
    this worker's pid), in no registry (the collector reads the files)."""
    global API_REQUESTS, API_SECONDS, API_AUTH_FAILURES, LOGINS
    values.ValueClass = values.get_value_class()
    API_REQUESTS, API_SECONDS, API_AUTH_FAILURES, LOGINS = _make(None)


def exposition() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
