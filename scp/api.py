"""The control-plane REST API (``/api``), without the web framework: routes, authorization, validation.

``ROUTES`` is the one table of the API: each route's method, path, least role, request body schema and
handler. ``dispatch`` matches a request against it, checks who may call it, validates the body and
returns ``(status, document)``; the py4web app only adapts HTTP to it, and ``openapi()`` builds the
OpenAPI document from the same table, so the document cannot drift from the code.

Errors are ``{"error": {"code", "message"}}`` with a 4xx status (503 when Redis or RabbitMQ do not
answer); an unexpected failure is a bug, answered 500 without details and logged.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from mdc import names as mdc_names
from mdc.names import SIGNALS, Names, valid_symbol
from mdl import control
from mdpipe import __version__
from mdpipe.settings import ScpSettings, WdsSettings
from wds.tokens import Grant, mint

from .bridge import Bridge, Unavailable
from .store import ROLES, Store, StoreError, User

MAX_BODY_BYTES = 64 * 1024
ROLE_RANK = {"viewer": 1, "admin": 2}
MINUTE_BARS = 60  # in a symbol's snapshot
SIGNAL_CHANNELS = 200  # listed at most by GET /api/signals (then ``truncated``)
SIGNAL_SCAN_CACHE_S = 5.0  # one SCAN per process this often, however many dashboards ask


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def document(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True)
class Principal:
    user: User
    via: str  # "session" or "token"


@dataclass
class Context:
    """What a handler may use: the caller, the request's parts, and the process's services."""

    settings: ScpSettings
    wds: WdsSettings
    market: str
    store: Store
    bridge: Callable[[], Bridge]
    principal: Principal | None = None
    params: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    body: Any = None
    csrf: str | None = None

    @property
    def user(self) -> User:
        assert self.principal is not None
        return self.principal.user

    def data(self, work: Callable[[Bridge], Any]) -> Any:
        try:
            bridge = self.bridge()
            return bridge.call(lambda: work(bridge))
        except Unavailable as exc:
            raise ApiError(503, "unavailable", f"the data plane did not answer ({exc})") from None


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # "/api/users/{id}"
    role: str | None  # least role; None: anyone
    handler: Callable[[Context], tuple[int, Any]]
    summary: str
    body: dict[str, Any] | None = None  # JSON schema of the request body
    responses: tuple[int, ...] = (200,)

    @property
    def regex(self) -> re.Pattern[str]:
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path)
        return re.compile(pattern + r"\Z")


# -- handlers ------------------------------------------------------------------------------------------


def get_me(ctx: Context) -> tuple[int, Any]:
    doc = {**ctx.user.public(), "via": ctx.principal.via}  # type: ignore[union-attr]
    if ctx.csrf:  # a session's: what the page sends in X-CSRF-Token (same-origin reads only)
        doc["csrf"] = ctx.csrf
    return 200, doc


def get_status(ctx: Context) -> tuple[int, Any]:
    now = time.time()

    async def gather(bridge: Bridge) -> dict[str, Any]:
        out: dict[str, Any] = {"time": now, "version": __version__, "market": ctx.market}
        try:
            out["redis"] = await bridge.redis_health()
            beats = await bridge.reader.heartbeats()
            raw = await bridge.redis.get(mdc_names.mdl_status(ctx.market))
            out["mdl"] = mdl = _json_or_none(raw)
            if isinstance(mdl, dict) and isinstance(mdl.get("ts"), int | float):
                # the listener's heartbeat is its status key (per market, refreshed every 2 s)
                beat = {k: v for k, v in mdl.items() if k not in ("ts", "market", "rejected")}
                beats = [{**beat, "component": "mdl", "at": mdl["ts"] * 1000}, *beats]
            out["components"] = [_component(b, now) for b in beats]
        except Exception as exc:  # Redis down: the rest of the status still helps
            out["redis"] = {"ok": False, "error": type(exc).__name__}
            out.setdefault("components", [])
        try:
            out["queues"] = await bridge.queues()
            out["broker"] = {"ok": True}
        except Exception as exc:
            out["queues"] = []
            out["broker"] = {"ok": False, "error": type(exc).__name__}
        return out

    return 200, ctx.data(gather)


def _component(beat: dict[str, Any], now: float) -> dict[str, Any]:
    base = ("component", "instance", "version", "host", "pid", "started", "at")
    at = beat.get("at")
    age = round(now - at / 1000, 1) if isinstance(at, int | float) else None
    return {
        "component": beat.get("component"),
        "instance": beat.get("instance"),
        "version": beat.get("version"),
        "up": age is not None and age < 15,
        "age_s": age,
        "figures": {k: v for k, v in beat.items() if k not in base},
    }


def _json_or_none(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def get_subscriptions(ctx: Context) -> tuple[int, Any]:
    async def read(bridge: Bridge) -> dict[str, Any]:
        desired = _json_or_none(await bridge.redis.get(mdc_names.mdl_desired(ctx.market)))
        status = _json_or_none(await bridge.redis.get(mdc_names.mdl_status(ctx.market)))
        return {"market": ctx.market, "desired": desired, "listener": status}

    return 200, ctx.data(read)


def put_subscriptions(ctx: Context) -> tuple[int, Any]:
    body = ctx.body
    subs, paused = body.get("subscriptions"), body.get("paused")
    return 200, _request(ctx, subscriptions=subs, paused=paused)


def post_pause(ctx: Context) -> tuple[int, Any]:
    return 200, _request(ctx, paused=True)


def post_resume(ctx: Context) -> tuple[int, Any]:
    return 200, _request(ctx, paused=False)


def post_reconnect(ctx: Context) -> tuple[int, Any]:
    _request(ctx, reconnect=True)
    return 202, {"market": ctx.market, "reconnect": "requested"}


def _request(ctx: Context, **kw: Any) -> dict[str, Any]:
    async def send(bridge: Bridge) -> Any:
        return await control.request(bridge.redis, ctx.market, **kw)

    try:
        desired = ctx.data(send)
    except control.ControlError as exc:
        raise ApiError(422, "invalid_subscriptions", str(exc)) from None
    if desired is None:
        return {"market": ctx.market}
    return {"market": ctx.market, "subscriptions": list(desired.subscriptions), "paused": desired.paused}


def role_grant(scp: ScpSettings, user: User) -> Grant:
    """The channels ``user``'s role may read through WDS (admins: ``*``; viewers: SCP_VIEWER_CHANNELS)."""
    allowed = ["*"] if user.role == "admin" else scp.viewer_channels
    return Grant(user.email, 0, tuple(allowed), "")


def wds_token(
    scp: ScpSettings,
    wds: WdsSettings,
    user: User,
    channels: list[str] | None = None,
    ttl_s: int | None = None,
) -> dict[str, Any]:
    """A WDS token for ``user``: ``channels`` within its role's (default: all of those), living ``ttl_s``
    within its role's longest (default: WDS_TOKEN_TTL_S, capped). ApiError when asked for more."""
    grant = role_grant(scp, user)
    channels = list(grant.channels) if channels is None else channels
    refused = [c for c in channels if not grant.allows(c)]
    if refused:
        raise ApiError(403, "forbidden_channels", "your role does not allow: " + ", ".join(refused[:10]))
    longest = wds.wds_token_max_ttl_s if user.role == "admin" else scp.scp_viewer_token_max_s
    ttl = min(wds.wds_token_ttl_s, longest) if ttl_s is None else ttl_s
    if ttl > longest:
        raise ApiError(422, "ttl_too_long", f"ttl_s: at most {longest} for your role")
    now = time.time()
    try:
        token = mint(wds, user.email, channels, ttl_s=ttl, now=now)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    return {"token": token, "expires": int(now) + ttl, "channels": channels, "subject": user.email}


def post_wds_token(ctx: Context) -> tuple[int, Any]:
    body = ctx.body or {}
    return 200, wds_token(ctx.settings, ctx.wds, ctx.user, body.get("channels"), body.get("ttl_s"))


def get_api_tokens(ctx: Context) -> tuple[int, Any]:
    everyone = ctx.query.get("all") in ("1", "true") and ctx.user.role == "admin"
    return 200, {"tokens": ctx.store.api_tokens(None if everyone else ctx.user.id)}


def post_api_token(ctx: Context) -> tuple[int, Any]:
    body = ctx.body
    days = body.get("days", 90)
    if days > ctx.settings.scp_api_token_max_days:
        raise ApiError(422, "invalid_request", f"days: at most {ctx.settings.scp_api_token_max_days}")
    record, token = ctx.store.mint_api_token(ctx.user.id, body["name"], days)
    return 201, {**record, "token": token}


def delete_api_token(ctx: Context) -> tuple[int, Any]:
    token_id = _int_param(ctx, "id")
    if not ctx.store.revoke_api_token(token_id, None if ctx.user.role == "admin" else ctx.user.id):
        raise ApiError(404, "not_found", "no such token")
    return 200, {"id": token_id, "revoked": True}


def get_symbol(ctx: Context) -> tuple[int, Any]:
    sym = ctx.params["sym"]
    if not valid_symbol(sym):
        raise ApiError(400, "invalid_symbol", "not a symbol: letters, digits and . : / _ ^ - (1 to 64)")

    async def read(bridge: Bridge) -> dict[str, Any]:
        reader = bridge.reader
        return {
            "sym": sym,
            "stats": await reader.stats(sym),
            "quote": await reader.quote(sym),
            "minute_bars": await reader.minute_bars(sym, MINUTE_BARS),
        }

    found = ctx.data(read)
    if found["stats"] is None and found["quote"] is None and not found["minute_bars"]:
        raise ApiError(404, "not_found", "nothing cached for this symbol")
    return 200, found


# the SCAN of signals.* channels, per MDC prefix: (monotonic time it was taken, channels, truncated)
_signal_scans: dict[str, tuple[float, tuple[str, ...], bool]] = {}


async def scan_signal_channels(
    redis: Redis | RedisCluster, names: Names, limit: int = SIGNAL_CHANNELS
) -> tuple[list[str], bool]:
    """The ``signals.*`` channels that have a seq counter (``Names.signal_seq``), at most ``limit``
    (sorted), and whether there were more. On a cluster ``scan_iter`` walks every master in turn."""
    start = len(names.signal_seq(""))
    found: set[str] = set()
    async for key in redis.scan_iter(match=names.signal_seq(f"{SIGNALS}.*"), count=1000):
        channel = (key.decode() if isinstance(key, bytes) else key)[start:]
        if not mdc_names.is_known_channel(channel):  # a signals.* name as mdc.names allows it
            continue
        found.add(channel)
        if len(found) > limit:
            break
    ordered = sorted(found)
    return ordered[:limit], len(ordered) > limit


def get_signals(ctx: Context) -> tuple[int, Any]:
    grant = role_grant(ctx.settings, ctx.user)

    async def read(bridge: Bridge) -> dict[str, Any]:
        prefix = bridge.names.prefix
        cached = _signal_scans.get(prefix)
        if cached is None or time.monotonic() - cached[0] > SIGNAL_SCAN_CACHE_S:
            channels, truncated = await scan_signal_channels(bridge.redis, bridge.names)
            cached = _signal_scans[prefix] = (time.monotonic(), tuple(channels), truncated)
        _, channels, truncated = cached
        mine = [c for c in channels if grant.allows(c)]
        mget = getattr(bridge.redis, "mget_nonatomic", bridge.redis.mget)  # a cluster's keys span slots
        seqs = await mget([bridge.names.signal_seq(c) for c in mine]) if mine else []
        listed = [
            {"channel": c, "seq": int(seq)} for c, seq in zip(mine, seqs, strict=True) if seq is not None
        ]
        return {"channels": listed, "truncated": truncated}

    return 200, ctx.data(read)


def get_users(ctx: Context) -> tuple[int, Any]:
    return 200, {"users": [u.public() for u in ctx.store.users()]}


def post_user(ctx: Context) -> tuple[int, Any]:
    body = ctx.body
    try:
        user = ctx.store.create_user(body["email"], body["password"], body.get("role", "viewer"))
    except StoreError as exc:
        raise ApiError(409 if "exists" in str(exc) else 422, "invalid_request", str(exc)) from None
    return 201, user.public()


def patch_user(ctx: Context) -> tuple[int, Any]:
    user_id, body = _int_param(ctx, "id"), ctx.body
    current = ctx.store.user(user_id)
    if current is None:
        raise ApiError(404, "not_found", "no such user")
    demoted = (
        current.role == "admin"
        and current.active
        and (body.get("role") == "viewer" or body.get("active") is False)
    )
    if demoted and ctx.store.admins() <= 1:
        raise ApiError(409, "last_admin", "this is the last active admin")
    try:
        user = ctx.store.update_user(
            user_id, role=body.get("role"), active=body.get("active"), password=body.get("password")
        )
    except StoreError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    return 200, user.public()  # type: ignore[union-attr]


def _int_param(ctx: Context, name: str) -> int:
    value = ctx.params[name]
    if not value.isdigit() or len(value) > 12:
        raise ApiError(400, "invalid_request", f"{name}: a positive whole number")
    return int(value)


# -- the table -----------------------------------------------------------------------------------------

_CHANNELS = {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 200}, "minItems": 1,
             "maxItems": 1000}  # fmt: skip
_SUBSCRIPTIONS = {
    "oneOf": [
        {"type": "string", "minLength": 1, "maxLength": MAX_BODY_BYTES},
        {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 100}, "minItems": 1},
    ],
    "description": 'Vendor subscriptions, "T.*,Q.AAPL" or a list of them',
}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/me", "viewer", get_me, "The caller: e-mail, role, how authenticated"),
    Route("GET", "/api/status", "viewer", get_status,
          "Every component instance (heartbeats), MDQ queue depths and consumers, Redis health"),
    Route("GET", "/api/mdl/subscriptions", "viewer", get_subscriptions,
          "The listener's desired subscriptions and what it applied"),
    Route("PUT", "/api/mdl/subscriptions", "admin", put_subscriptions,
          "Change the listener's subscriptions (and pause state) at run time",
          _object({"subscriptions": _SUBSCRIPTIONS, "paused": {"type": "boolean"}}, ("subscriptions",)),
          (200, 422)),
    Route("POST", "/api/mdl/pause", "admin", post_pause, "Pause the feed (unsubscribe everything)"),
    Route("POST", "/api/mdl/resume", "admin", post_resume, "Resume the feed"),
    Route("POST", "/api/mdl/reconnect", "admin", post_reconnect, "Drop the vendor connection and reconnect",
          responses=(202,)),
    Route("POST", "/api/tokens", "viewer", post_wds_token,
          "Mint a WDS token for the caller (channels and lifetime bounded by role)",
          _object({"channels": _CHANNELS,
                   "ttl_s": {"type": "integer", "minimum": 10, "maximum": 31 * 86400}}),
          (200, 403, 422)),
    Route("GET", "/api/api-tokens", "viewer", get_api_tokens, "The caller's API tokens (admins: ?all=1)"),
    Route("POST", "/api/api-tokens", "viewer", post_api_token, "Create an API token (shown once)",
          _object({"name": {"type": "string", "minLength": 1, "maxLength": 100},
                   "days": {"type": "integer", "minimum": 1, "maximum": 3650}}, ("name",)),
          (201, 422)),
    Route("DELETE", "/api/api-tokens/{id}", "viewer", delete_api_token, "Revoke an API token", None,
          (200, 404)),
    Route("GET", "/api/symbols/{sym}", "viewer", get_symbol,
          "A symbol's cached state: day stats, quote, recent minute bars", None, (200, 400, 404)),
    Route("GET", "/api/signals", "viewer", get_signals,
          "The signals.* channels published now that the caller's role may read, with their seq"),
    Route("GET", "/api/users", "admin", get_users, "Every user"),
    Route("POST", "/api/users", "admin", post_user, "Create a user",
          _object({"email": {"type": "string", "minLength": 3, "maxLength": 254},
                   "password": {"type": "string", "minLength": 12, "maxLength": 1024},
                   "role": {"type": "string", "enum": list(ROLES)}}, ("email", "password")),
          (201, 409, 422)),
    Route("PATCH", "/api/users/{id}", "admin", patch_user, "Change a user's role, state or password",
          _object({"role": {"type": "string", "enum": list(ROLES)}, "active": {"type": "boolean"},
                   "password": {"type": "string", "minLength": 12, "maxLength": 1024}}),
          (200, 404, 409, 422)),
)  # fmt: skip


# -- dispatch ------------------------------------------------------------------------------------------


def match(method: str, path: str) -> tuple[Route, dict[str, str]]:
    """The route of ``method path`` and its path parameters; ApiError 404 or 405."""
    allowed = []
    for route in ROUTES:
        found = route.regex.match(path)
        if found:
            if route.method == method:
                return route, found.groupdict()
            allowed.append(route.method)
    if allowed:
        raise ApiError(405, "method_not_allowed", "allowed: " + ", ".join(allowed))
    raise ApiError(404, "not_found", "no such API route: see /api/openapi.json")


def authorize(route: Route, principal: Principal | None) -> None:
    if route.role is None:
        return
    if principal is None:
        raise ApiError(401, "unauthenticated", "log in, or send Authorization: Bearer <API token>")
    if ROLE_RANK.get(principal.user.role, 0) < ROLE_RANK[route.role]:
        raise ApiError(403, "forbidden", f"this needs the {route.role} role")


def validate(schema: dict[str, Any], value: Any, where: str = "body") -> None:
    """A small JSON-schema subset (what ROUTES use): type, properties, required, additionalProperties,
    enum, min/max length, items, min/max items, minimum/maximum, oneOf."""
    if "oneOf" in schema:
        for option in schema["oneOf"]:
            try:
                validate(option, value, where)
                return
            except ApiError:
                continue
        raise ApiError(422, "invalid_request", f"{where}: {schema.get('description', 'not valid')}")
    kind = schema.get("type")
    checks = {"object": dict, "array": list, "string": str, "boolean": bool}
    if kind == "integer":
        if type(value) is not int:
            raise ApiError(422, "invalid_request", f"{where}: a whole number")
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            raise ApiError(422, "invalid_request",
                           f"{where}: from {schema.get('minimum')} to {schema.get('maximum')}")  # fmt: skip
    elif kind in checks and not isinstance(value, checks[kind]):
        raise ApiError(422, "invalid_request", f"{where}: must be a{'n' if kind == 'object' else ''} {kind}")
    if "enum" in schema and value not in schema["enum"]:
        raise ApiError(422, "invalid_request", f"{where}: one of {', '.join(map(str, schema['enum']))}")
    if kind == "string" and not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 1 << 30):
        raise ApiError(422, "invalid_request", f"{where}: {schema.get('minLength', 0)} to "
                       f"{schema.get('maxLength')} characters")  # fmt: skip
    if kind == "string" and "\x00" in value:
        raise ApiError(422, "invalid_request", f"{where}: no NUL characters")
    if kind == "array":
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 1 << 30):
            raise ApiError(422, "invalid_request", f"{where}: {schema.get('minItems', 0)} to "
                           f"{schema.get('maxItems')} items")  # fmt: skip
        for i, item in enumerate(value):
            validate(schema.get("items", {}), item, f"{where}[{i}]")
    if kind == "object":
        props = schema.get("properties", {})
        missing = [k for k in schema.get("required", ()) if k not in value]
        if missing:
            raise ApiError(422, "invalid_request", f"{where}: missing {', '.join(missing)}")
        extra = [k for k in value if k not in props]
        if extra and schema.get("additionalProperties") is False:
            raise ApiError(422, "invalid_request", f"{where}: unknown field {str(extra[0])[:50]}")
        for key, sub in props.items():
            if key in value:
                validate(sub, value[key], f"{key}")


def dispatch(ctx: Context, method: str, path: str, body: Any) -> tuple[int, Any]:
    """Answer one API request: (status, JSON document). Raises nothing but bugs."""
    try:
        route, params = match(method, path)
        authorize(route, ctx.principal)
        ctx.params = params
        if route.body is not None:
            validate(route.body, {} if body is None and not route.body.get("required") else body)
            ctx.body = body if body is not None else {}
        return route.handler(ctx)
    except ApiError as exc:
        return exc.status, exc.document()
    except StoreError as exc:
        return 422, ApiError(422, "invalid_request", str(exc)).document()


# -- OpenAPI -------------------------------------------------------------------------------------------

_ERROR = {"$ref": "#/components/schemas/Error"}
_TEXT = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad request", 401: "Not logged in",
         403: "Forbidden", 404: "Not found", 409: "Conflict", 422: "Invalid input",
         503: "Redis or RabbitMQ did not answer"}  # fmt: skip


def openapi() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{re.sub(r'[^a-z]+', '_', route.path[5:]).strip('_')}",
            "responses": {},
        }
        names = re.findall(r"\{(\w+)\}", route.path)
        if names:
            op["parameters"] = [
                {"name": n, "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": r"^\d{1,12}$"} if n == "id" else
                 {"type": "string", "minLength": 1, "maxLength": 64}}
                for n in names
            ]  # fmt: skip
        if route.body is not None:
            op["requestBody"] = {
                "required": bool(route.body.get("required")),
                "content": {"application/json": {"schema": route.body}},
            }
        codes = set(route.responses)
        if route.role is not None:
            codes |= {401, 403}
            op["security"] = [{"bearer": []}, {"session": []}]
        if route.body is not None:
            codes |= {400, 422}
        if route.handler in (get_status, get_subscriptions, put_subscriptions, post_pause, post_resume,
                             post_reconnect, get_symbol, get_signals):  # fmt: skip
            codes.add(503)
        for code in sorted(codes):
            schema = {"type": "object"} if code < 300 else _ERROR
            op["responses"][str(code)] = {
                "description": _TEXT.get(code, "OK"),
                "content": {"application/json": {"schema": schema}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "mdpipe control plane", "version": __version__,
                 "description": "Control and inspect the pipeline. Programs: Authorization: Bearer <API "
                 "token>. The dashboard: its session cookie, with X-CSRF-Token on changes."},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "mdpipe_session"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["code", "message"],
                                             "properties": {"code": {"type": "string"},
                                                            "message": {"type": "string"}}}},
                }
            },
        },
    }  # fmt: skip
