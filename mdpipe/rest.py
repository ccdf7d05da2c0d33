"""The vendor's REST API, for the data plane: bounded, polite, never on the event loop.

``VendorRest`` wraps the ``massive`` package's ``RESTClient`` (the vendor's own client: its paths, auth
header and retries of 429 and 5xx answers) for the calls a pipeline needs: the full-market snapshot, the
grouped daily bars of a date, and a symbol's minute bars. Around each call:

- a rate limit (``RateLimit``: a token bucket of ``MASSIVE_REST_RATE`` requests per second, per process)
  that makes callers wait their turn rather than be refused by the vendor;
- the call itself in a worker thread (the client is blocking), with ``MASSIVE_REST_TIMEOUT_S`` as its
  connect and read timeouts; the answer is read raw and decoded with orjson, not into the client's
  model objects (a full-market snapshot is several megabytes: ten times faster);
- the outcome counted (``mdpipe_rest_requests_total``, ``mdpipe_rest_seconds``) and kept for
  ``/readyz`` (``status``): ``ok``, ``degraded`` (the last call failed: the stream goes on without it,
  the caller retries) or ``off`` (no API key: nothing is called).

Failures raise ``RestError`` with a reason that is safe to log: the API key is only ever in a request
header, never in a URL, a log line or an error text. Retrying later is the caller's decision (with
``mdpipe.backoff.Backoff``), since only the caller knows whether the answer is still wanted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import Counter, Histogram

from .settings import MassiveRestSettings

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "mdpipe_rest_requests_total",
    "Vendor REST requests, by call and outcome",
    ["call", "outcome"],  # outcome: ok, http_4xx, http_5xx, http_429, timeout, error, invalid
)
SECONDS = Histogram(
    "mdpipe_rest_seconds",
    "Vendor REST request time, rate-limit wait excluded, by call",
    ["call"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
WAITED = Counter("mdpipe_rest_rate_wait_seconds_total", "Time REST calls waited for the rate limit")


class RestError(Exception):
    """A REST call failed; ``str()`` is safe to log. ``status``: the HTTP status, if one came."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


class RateLimit:
    """A token bucket: ``rate`` requests per second, bursts of ``burst``. Sans-I/O: ``reserve()``
    takes a token now and says how long to wait for it to be due."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, max(1.0, burst), clock
        self.tokens = self.burst
        self.at = clock()

    def reserve(self) -> float:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class VendorRest:
    def __init__(self, settings: MassiveRestSettings, *, market: str = "stocks") -> None:
        self.settings = settings
        self.market = market
        self.limit = RateLimit(settings.massive_rest_rate, settings.massive_rest_rate)
        self.status = "off"
        self.last_error: str | None = None
        self.calls = 0
        self.failures = 0
        self._client: Any = None
        key = settings.massive_api_key
        if key is not None:
            from massive import RESTClient  # the vendor's client: imported only where a key is given

            timeout = settings.massive_rest_timeout_s
            self._client = RESTClient(
                api_key=key.get_secret_value(), base=settings.massive_rest_url, connect_timeout=timeout,
                read_timeout=timeout, retries=settings.massive_rest_retries, pagination=False, num_pools=2,
                maxsize=4,
            )  # fmt: skip
            self.status = "ok"

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def readiness(self) -> dict[str, Any]:
        """For ``/readyz``: the status, and the last failure while degraded."""
        out: dict[str, Any] = {"status": self.status}
        if self.status == "degraded":
            out["error"] = self.last_error
        return out

    # -- the calls --------------------------------------------------------------------------------------

    async def snapshot_all(self) -> list[dict[str, Any]]:
        """Every ticker's snapshot (the vendor's JSON objects: ``ticker``, ``day``, ``prevDay``,
        ``lastTrade``, ``lastQuote``, ``min``, ``updated``)."""
        body = await self._get("snapshot", lambda c: c.get_snapshot_all(self.market, raw=True))
        return _list(body, "tickers")

    async def grouped_daily(self, day: str) -> list[dict[str, Any]]:
        """Every ticker's daily bar of ``day`` (YYYY-MM-DD): ``T``, ``o``, ``h``, ``l``, ``c``, ``v`` ..."""
        body = await self._get("grouped", lambda c: c.get_grouped_daily_aggs(day, raw=True))
        return _list(body, "results")

    async def minute_bars(
        self, sym: str, start_ms: int, end_ms: int, limit: int = 50_000
    ) -> list[dict[str, Any]]:
        """``sym``'s minute bars starting in [start_ms, end_ms], oldest first (``t`` their start, ms)."""
        body = await self._get(
            "aggs",
            lambda c: c.list_aggs(sym, 1, "minute", start_ms, end_ms, sort="asc", limit=limit, raw=True),
        )
        return _list(body, "results")

    # -- one request ------------------------------------------------------------------------------------

    async def _get(self, call: str, request: Callable[[Any], Any]) -> Any:
        client = self._client
        if client is None:
            raise RestError("no MASSIVE_API_KEY: the REST API is not used")
        wait = self.limit.reserve()
        if wait > 0:
            WAITED.inc(wait)
            await asyncio.sleep(wait)
        began = time.perf_counter()
        self.calls += 1
        try:
            body = await asyncio.to_thread(_fetch, client, request)
        except RestError as exc:
            self._failed(call, exc, _outcome(exc.status))
            raise
        except Exception as exc:  # urllib3's timeouts and connection errors, after the client's retries
            error = RestError(_describe(exc))
            self._failed(call, error, "timeout" if "timeout" in type(exc).__name__.lower() else "error")
            raise error from None
        finally:
            SECONDS.labels(call).observe(time.perf_counter() - began)
        REQUESTS.labels(call, "ok").inc()
        if self.status != "ok":
            log.info("vendor REST available again", extra={"call": call})
        self.status, self.last_error = "ok", None
        return body

    def _failed(self, call: str, exc: RestError, outcome: str) -> None:
        REQUESTS.labels(call, outcome).inc()
        self.failures += 1
        if self.status != "degraded":
            log.warning("vendor REST call failed", extra={"call": call, "error": str(exc)})
        self.status, self.last_error = "degraded", str(exc)


def _fetch(client: Any, request: Callable[[Any], Any]) -> Any:
    """In the worker thread: the request (raw), its status checked, its JSON decoded."""
    from massive.exceptions import BadResponse

    try:
        response = request(client)
    except BadResponse as exc:  # the client raises it for any status but 200, with the body as text
        raise _vendor_error(str(exc)) from None
    if response.status != 200:
        raise RestError(f"HTTP {response.status}", response.status)
    try:
        return orjson.loads(response.data)
    except orjson.JSONDecodeError:
        raise RestError("answer is not JSON", 200) from None


def _list(body: Any, key: str) -> list[dict[str, Any]]:
    """``body[key]``, a list of objects (absent: empty, as the vendor sends for no results)."""
    if not isinstance(body, dict):
        raise RestError("answer is not a JSON object", 200)
    items = body.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise RestError(f"answer's {key} is not a list", 200)
    return [item for item in items if isinstance(item, dict)]


def _vendor_error(text: str) -> RestError:
    """A ``RestError`` from the vendor's error body: its message (``error``, ``message`` or ``status``),
    short, and the HTTP status it implies (the client does not pass the status on)."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return RestError(f"HTTP error: {text[:200]}")
    said = next((body[f] for f in ("error", "message", "status") if isinstance(body.get(f), str)), text)
    status = str(body.get("status", "")).upper()
    message = str(body.get("error") or body.get("message") or "").lower()
    code = None
    if status == "NOT_AUTHORIZED" or "api key" in message:
        code = 401
    elif status == "NOT_FOUND" or "not found" in message:
        code = 404
    elif "exceeded" in message or "too many" in message:
        code = 429
    return RestError(f"HTTP error: {said[:200]}", code)


def _outcome(status: int | None) -> str:
    if status is None:
        return "error"
    if status == 429:
        return "http_429"
    return "http_5xx" if status >= 500 else "http_4xx" if status >= 400 else "invalid"


def _describe(exc: Exception) -> str:
    """A transport error, without the URL's query (no secret is there, but keep it short anyway)."""
    reason = getattr(exc, "reason", None)
    text = f"{type(exc).__name__}: {reason or exc}"
    return text.split("?", 1)[0][:300]
