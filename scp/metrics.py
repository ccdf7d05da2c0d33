"""SCP's Prometheus metrics, summed over the gunicorn workers (prometheus-client's multiprocess mode:
``mdpipe scp`` sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

API_REQUESTS = Counter("mdpipe_scp_api_requests_total", "API requests", ["method", "route", "status"])
API_SECONDS = Histogram("mdpipe_scp_api_seconds", "API request duration", ["route"])
API_AUTH_FAILURES = Counter("mdpipe_scp_api_auth_failures_total", "Requests with a bad API token")
LOGINS = Counter("mdpipe_scp_logins_total", "Login attempts by outcome", ["outcome"])


def exposition() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
