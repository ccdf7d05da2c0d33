"""The emulator's REST API on its HTTP server (``SIM_HTTP_PORT``), as the vendor answers it.

``RestServer.handle`` is the HTTP server's fallback for the paths under ``/v1``, ``/v2``, ``/v3``. In
order, for every such request:

1. the REST faults in force (``RestFaults``, switched by ``POST /faults``): ``rest_down`` aborts the
   connection with no answer, ``rest_slow`` delays the answer, ``rest_error`` and ``rest_429`` answer
   with that status whatever the request;
2. the key, as the vendor takes it (``Authorization: Bearer KEY``, else ``?apiKey=KEY``), compared in
   constant time: 401 when missing or wrong;
3. the rate limit (``SIM_REST_RATE`` requests per minute per key, ``TokenBucket``): 429;
4. the request checked and answered (``sim.restapi``): 400, 404, 405 or the answer.

Each answer is counted in ``mdpipe_sim_rest_requests_total{route,status}``.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from dataclasses import dataclass

from mdpipe.observe import Abort, Request, Response

from . import metrics
from .restapi import RATE_LIMITED, ApiError, Call, RestApi, error, is_rest_path, parse

HOST = re.compile(r"(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
REST_FAULTS = ("rest_error", "rest_slow", "rest_down", "rest_429")
MAX_DELAY_S = 600.0
PREVIOUS_STEP = 200  # previous days made between two turns of the event loop (about 12 ms)


class TokenBucket:
    """``per_minute`` requests a minute: a minute's worth may come at once, then one every
    60/``per_minute`` seconds. ``per_minute`` 0: no limit."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.tokens = self.capacity
        self.refill = per_minute / 60.0
        self.at = time.monotonic()

    def take(self, now: float) -> bool:
        if not self.capacity:
            return True
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.refill)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class RestFaults:
    """The REST faults in force, each until a time (``time.monotonic``)."""

    error_until: float = 0.0
    error_status: int = 503
    slow_until: float = 0.0
    delay: float = 2.0
    down_until: float = 0.0
    limited_until: float = 0.0

    def switch(self, name: str, now: float, seconds: float, *, status: int = 503, delay: float = 2.0) -> None:
        until = now + seconds
        if name == "rest_error":
            self.error_until, self.error_status = until, status
        elif name == "rest_slow":
            self.slow_until, self.delay = until, delay
        elif name == "rest_down":
            self.down_until = until
        elif name == "rest_429":
            self.limited_until = until
        else:
            raise ValueError(f"not a REST fault: {name}")


class RestServer:
    def __init__(self, api: RestApi, *, key: str, rate: int, address: str) -> None:
        """``address``: host:port of the HTTP server, for ``next_url`` when a request has no usable Host."""
        self.api = api
        self.faults = RestFaults()
        self._key = key.encode()
        self._bucket = TokenBucket(rate)
        self.address = address

    async def handle(self, request: Request) -> Response | None:
        if not is_rest_path(request.path):
            return None
        faults, now = self.faults, time.monotonic()
        try:
            call: Call | ApiError = parse(request.method, request.path, request.query)
        except ApiError as exc:
            call = exc
        route = call.route if isinstance(call, Call) else {400: "invalid"}.get(call.status, "unknown")
        if now < faults.down_until:
            metrics.REST_REQUESTS.labels(route, "aborted").inc()
            raise Abort
        if now < faults.slow_until:
            await asyncio.sleep(faults.delay)
        refused = self._refusal(request, call, now)
        if refused is None and route in ("snapshot_all", "movers", "grouped"):
            done = False  # an answer about every symbol: their previous days made first, in steps, so
            while not done:  # that the market keeps going meanwhile
                done = self.api.ledger.make_previous(PREVIOUS_STEP)
                await asyncio.sleep(0)
        status, body = refused or self.api.answer(call, self._base_url(request))  # type: ignore[arg-type]
        metrics.REST_REQUESTS.labels(route, str(status)).inc()
        return Response.json(status, body)

    def _refusal(self, request: Request, call: Call | ApiError, now: float) -> tuple[int, dict] | None:
        """The error answer to give instead of answering ``call``, if any."""
        faults = self.faults
        try:
            if now < faults.error_until:
                raise error(faults.error_status, "injected by the emulator")
            if now < faults.limited_until:
                raise error(429, RATE_LIMITED)
            offered = self._offered(request)
            if offered is None:
                raise error(401, "API Key was not provided")
            if not hmac.compare_digest(offered.encode(), self._key):
                raise error(401, "Unknown API Key")
            if not self._bucket.take(now):
                raise error(429, RATE_LIMITED)
            if isinstance(call, ApiError):
                raise call
        except ApiError as exc:
            return exc.status, exc.body
        return None

    @staticmethod
    def _offered(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        keys = request.query.get("apiKey")
        return keys[0] if keys else None

    def _base_url(self, request: Request) -> str:
        host = request.headers.get("host", "")
        return f"http://{host if HOST.fullmatch(host) else self.address}"
