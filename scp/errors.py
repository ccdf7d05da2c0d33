"""WSGI middleware in front of py4web: malformed requests get a JSON 4xx before py4web sees them, and no
error answer of the API, nor any 500, is an HTML page.

py4web parses a JSON body itself on any anonymous POST/PUT/PATCH/DELETE (its session fixture looks for a
``_session_token`` in it), before SCP's code runs: a body that is not an object (``[1]``, ``1``) or is
nested deeply enough to exhaust the recursion limit was a 500, stored as an error ticket on disk. Here a
JSON body must parse (orjson: no oversized integers, UTF-8 only), be an object and nest at most
``MAX_DEPTH`` levels. Error tickets are not stored at all: py4web still logs the traceback.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from http import HTTPStatus
from io import BytesIO
from typing import Any

import orjson

from .api import MAX_BODY_BYTES

MAX_DEPTH = 32
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
         405: "method_not_allowed", 408: "timeout", 413: "too_large", 415: "unsupported_media_type",
         500: "internal"}  # fmt: skip

StartResponse = Callable[..., Any]


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a code Python does not name
        return "Error"


def error(start_response: StartResponse, status: int, code: str, message: str,
          headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:  # fmt: skip
    body = orjson.dumps({"error": {"code": code, "message": message}})
    start_response(f"{status} {_phrase(status)}", [
        ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"), *headers])  # fmt: skip
    return [body]


def depth(value: Any) -> int:
    """How deeply ``value`` nests (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def json_problem(environ: dict[str, Any]) -> tuple[int, str, str] | None:
    """Why the JSON body of ``environ`` is refused, or None; the body read is put back for the app."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 400, "bad_request", "Content-Length: not a number"
    if length > MAX_BODY_BYTES:
        return 413, "too_large", f"bodies are at most {MAX_BODY_BYTES} bytes"
    raw = environ["wsgi.input"].read(length) if length > 0 else b""
    raw = raw if raw.strip() else b""
    environ["wsgi.input"], environ["CONTENT_LENGTH"] = BytesIO(raw), str(len(raw))
    if not raw:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return 400, "invalid_json", "the body is not valid JSON (UTF-8, integers within 64 bits)"
    if not isinstance(doc, dict):  # as the API's own validation answers it
        return 422, "invalid_request", "body: must be an object"
    if depth(doc) > MAX_DEPTH:
        return 400, "invalid_json", f"the body nests more than {MAX_DEPTH} levels"
    return None


def guard(inner: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        path = environ.get("PATH_INFO", "")
        api = path == "/api" or path.startswith("/api/")
        if method not in METHODS:
            return error(start_response, 405, "method_not_allowed", "allowed: " + ", ".join(METHODS),
                         [("Allow", ", ".join(METHODS))])  # fmt: skip
        if api and any(ord(c) < 32 or ord(c) == 127 for c in path):
            # the router matches no path with control characters: answer as the API does
            return error(start_response, 404, "not_found", "no such API route: see /api/openapi.json")
        kind = str(environ.get("CONTENT_TYPE", "")).split(";")[0].strip().lower()
        if method not in ("GET", "HEAD") and kind == "application/json":
            problem = json_problem(environ)
            if problem is not None:
                return error(start_response, *problem)
        replaced: list[int] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            code = int(status[:3])
            ctype = next((v for k, v in headers if k.lower() == "content-type"), "")
            if (code >= 500 or (api and code >= 400)) and not ctype.startswith("application/json"):
                replaced.append(code)  # py4web's or ombott's HTML error page: answered as JSON below
                return lambda data: None
            return start_response(status, headers, exc_info)

        body = inner(environ, start)
        if not replaced:
            return body
        if hasattr(body, "close"):
            body.close()
        code = replaced[0]
        message = "internal error (logged)" if code >= 500 else _phrase(code)
        return error(start_response, code, CODES.get(code, "error"), message)

    return app


class NoTickets:
    """py4web's error logger for SCP: the traceback is already logged; nothing is stored on disk."""

    def log(self, app_name: str, snapshot: dict[str, Any]) -> str:
        return str(uuid.uuid4())


def install() -> None:
    """Replace py4web's ticket store (one row of ~6 KB per 500, in a world-readable file, unbounded)."""
    from py4web.core import error_logger

    error_logger.plugins["_default"] = NoTickets()
