"""A small HTTP server every long-running component runs for operators and Kubernetes.

- ``GET /metrics``: Prometheus text format from the process registry.
- ``GET /healthz``: liveness, 200 while the event loop answers.
- ``GET /readyz``: readiness, 200 or 503 with the component's own JSON detail.
- extra routes a component adds (the emulator's ``/faults``), and optionally a ``fallback`` handler for
  the paths no route matches (the emulator's REST API); it returns None for a path it does not serve,
  or raises ``Abort`` to close the connection without an answer.

It speaks just enough HTTP/1.1 for probes and scrapers: one request per connection, request head at most
8 KiB, body at most 64 KiB, 10 s to send them; anything else gets a 4xx and the connection closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

MAX_HEAD = 8 * 1024
MAX_BODY = 64 * 1024
READ_TIMEOUT = 10.0


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, data: object) -> Response:
        return cls(status, orjson.dumps(data))


Handler = Callable[[Request], Awaitable[Response]]
Fallback = Callable[[Request], Awaitable[Response | None]]
Readiness = Callable[[], tuple[bool, dict]]


class Abort(Exception):
    """Raised by a handler: the connection is aborted, with no answer (a fault a client must survive)."""


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass
class ObservabilityServer:
    host: str
    port: int
    readiness: Readiness = lambda: (True, {})
    registry: CollectorRegistry = REGISTRY
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    fallback: Fallback | None = None
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("http listening", extra={"host": self.host, "port": self.port})

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                request = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT)
                response = await self._dispatch(request) if isinstance(request, Request) else request
            except TimeoutError:
                response = Response.json(408, {"error": "request timeout"})
            except Abort:
                writer.transport.abort()
                return
            except Exception:
                log.exception("http handler failed")
                response = Response.json(500, {"error": "internal error"})
            head = (
                f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Error')}\r\n"
                f"Content-Type: {response.content_type}\r\nContent-Length: {len(response.body)}\r\n"
                "Connection: close\r\nCache-Control: no-store\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + response.body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _dispatch(self, request: Request) -> Response:
        if request.path == "/metrics" and request.method == "GET":
            return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        if request.path == "/healthz" and request.method == "GET":
            return Response.json(200, {"status": "ok"})
        if request.path == "/readyz" and request.method == "GET":
            ready, detail = self.readiness()
            return Response.json(200 if ready else 503, {"ready": ready, **detail})
        handler = self.routes.get((request.method, request.path))
        if handler is not None:
            return await handler(request)
        if self.fallback is not None and not any(path == request.path for _, path in self.routes):
            response = await self.fallback(request)
            if response is not None:
                return response
        if any(path == request.path for _, path in self.routes) or request.path in (
            "/metrics",
            "/healthz",
            "/readyz",
        ):
            return Response.json(405, {"error": "method not allowed"})
        return Response.json(404, {"error": "not found"})


async def _read_request(reader: asyncio.StreamReader) -> Request | Response:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        return Response.json(413, {"error": "request head too large"})
    except asyncio.IncompleteReadError:
        return Response.json(400, {"error": "incomplete request"})
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError(version)
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
    except ValueError:
        return Response.json(400, {"error": "malformed request"})
    if length < 0 or length > MAX_BODY:
        return Response.json(413, {"error": "body too large"})
    body = await reader.readexactly(length) if length else b""
    url = urlsplit(target)
    return Request(method, url.path, parse_qs(url.query), headers, body)
