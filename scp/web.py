"""The py4web side of the control plane: sessions, login, the dashboard page and the HTTP adapter of
``scp.api``. Imported by the py4web app ``scp/apps/_default`` (mounted at ``/``) in each worker.

- Sessions live in Redis (``mdc.names.scp_session``), the cookie carries only a random id: a logout or a
  disabled account ends the session everywhere at once. HttpOnly, SameSite=Lax, Secure over HTTPS. A
  session is stored only at login (an anonymous visitor makes SCP store nothing) and carries its user's
  ``auth_epoch`` (``scp.store``): a disabled user, a new role or password ends it.
- Login: a form with a stateless CSRF token (``scp.guard.FormToken``), failed attempts limited per
  (account, client address) pair and per address (``scp.guard``; the address behind
  ``SCP_TRUSTED_PROXIES`` only), a fresh session id on success (no fixation). Registration exists only
  when ``SCP_REGISTRATION`` is on.
- ``/api``: a bearer API token, or the session cookie plus ``X-CSRF-Token`` on changes; WDS tokens minted
  at most ``WDS_TOKENS_PER_MINUTE`` a minute per user, dashboard loads included (429 with
  ``Retry-After``).
- The page carries the WDS URL and a short-lived WDS token, never a secret of the server.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis
import redis.cluster
from py4web import DAL, Session, abort, action, redirect, request, response
from py4web.core import render
from yatl.helpers import XML

from mdc import names
from mdc.connect import Target
from mdpipe.settings import (
    CommonSettings,
    MarketSettings,
    MdcSettings,
    MdqSettings,
    ScpSettings,
    WdsSettings,
    load,
)

from . import api, metrics
from .bridge import Bridge, bridge
from .guard import ClientAddress, FormToken, LoginLimiter, RateLimit
from .store import StoreError, open_store

log = logging.getLogger("scp")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'{connect}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
DRAIN_BYTES = 1 << 20  # a body too large but under this is read and dropped before the 413 (bounded)
TEMPLATES = os.path.join(os.path.dirname(__file__), "apps", "_default", "templates")
WDS_TOKENS_PER_MINUTE = 20  # POST /api/tokens per user: a page renews one a few times an hour


@dataclass
class Config:
    common: CommonSettings
    scp: ScpSettings
    wds: WdsSettings
    market: str
    mdc: MdcSettings
    mdq: MdqSettings


def load_config() -> Config:
    """Every setting SCP reads (ConfigError names each bad variable); never the vendor key."""
    common = load(CommonSettings)
    production = common.mdpipe_env == "production"
    return Config(
        common,
        load(ScpSettings, production=production),
        load(WdsSettings, production=production),
        load(MarketSettings).massive_market,
        load(MdcSettings),
        load(MdqSettings),
    )


class RedisSessions:
    """py4web's session storage interface (get, set with expiration) on Redis, under ``scp:session:``."""

    def __init__(self, client: redis.Redis | redis.cluster.RedisCluster, ttl_s: int) -> None:
        self.client, self.ttl_s = client, ttl_s

    def get(self, key: bytes | str) -> bytes | None:
        key = key.decode() if isinstance(key, bytes) else key
        if not 20 <= len(key) <= 100:
            return None
        return self.client.get(names.scp_session(key))

    def set(self, key: str, value: str, expiration: int | None) -> None:
        self.client.set(names.scp_session(key), value, ex=self.ttl_s)

    def delete(self, key: str) -> None:
        self.client.delete(names.scp_session(key))


class App:
    """Everything one worker process holds: settings, database, sessions, the bridge."""

    def __init__(self, config: Config) -> None:
        self.config = config
        s = config.scp
        target = Target.from_settings(config.common)  # REDIS_CLUSTER_NODES: every use on the cluster
        self.redis = target.sync_client(socket_timeout=3, socket_connect_timeout=3)
        self.sessions = RedisSessions(self.redis, s.scp_session_ttl_s)
        self.session = Session(
            secret=s.scp_session_secret.get_secret_value(),
            expiration=s.scp_session_ttl_s,
            storage=self.sessions,
            same_site="Lax",
            name="mdpipe_session",
        )
        self.store = open_store(s, self.session)
        self.db: DAL = self.store.db
        self.limiter = LoginLimiter(self.redis, s.scp_login_attempts)
        self.client_address = ClientAddress(s.scp_trusted_proxies)
        self.forms = FormToken(s.scp_session_secret.get_secret_value())
        self.token_mints = RateLimit(self.redis, "wds_token", WDS_TOKENS_PER_MINUTE)
        amqp = config.common.rabbitmq_url.get_secret_value()
        self._bridge_args = (
            target,
            amqp,
            config.mdc.mdc_prefix,
            config.mdq.mdq_exchange,
            config.mdq.mdq_shards,
        )

    def bridge(self) -> Bridge:
        return bridge(lambda: Bridge(*self._bridge_args))

    # -- who is calling --------------------------------------------------------------------------------

    def session_user(self) -> api.User | None:
        user = self.session.get("user") or {}
        if not isinstance(user, dict) or "id" not in user:
            return None
        last = self.session.get("recent_activity") or 0
        if time.time() - last > self.config.scp.scp_session_ttl_s:
            return None
        found = self.store.user(user["id"])
        if found is None or not found.active or user.get("epoch", 0) != found.epoch:
            return None  # disabled, or its role or password changed since this login
        if time.time() - last > 30:  # keep an active session alive (not on every request)
            self.session["recent_activity"] = int(time.time())
        return found

    def principal(self) -> api.Principal | None:
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer":
                raise api.ApiError(401, "unauthenticated", "Authorization must be Bearer <API token>")
            user = self.store.api_user(token.strip())
            if user is None:
                metrics.API_AUTH_FAILURES.inc()
                raise api.ApiError(401, "unauthenticated", "invalid, expired or revoked API token")
            return api.Principal(user, "token")
        user = self.session_user()
        if user is None:
            return None
        if request.method not in SAFE_METHODS and not self.csrf_ok(request.headers.get("X-CSRF-Token", "")):
            raise api.ApiError(403, "csrf", "send the page's CSRF token in X-CSRF-Token")
        return api.Principal(user, "session")

    def address(self) -> str:
        return self.client_address(request.environ)

    def form_csrf(self) -> str:
        """The anonymous forms' CSRF token, bound to a nonce cookie (set here when missing)."""
        nonce = request.get_cookie(FormToken.COOKIE) or ""
        if not 20 <= len(nonce) <= 40:
            nonce = FormToken.nonce()
            response.set_cookie(FormToken.COOKIE, nonce, path="/auth", httponly=True, same_site="Lax",
                                secure=request.url.startswith("https"))  # fmt: skip
        return self.forms.issue(nonce)

    def form_csrf_ok(self, given: str) -> bool:
        return self.forms.check(request.get_cookie(FormToken.COOKIE) or "", given)

    def csrf(self) -> str:
        token = self.session.get("csrf")
        if not token:
            token = self.session["csrf"] = secrets.token_urlsafe(32)
        return token

    def csrf_ok(self, given: str) -> bool:
        expected = self.session.get("csrf") or ""
        return bool(expected) and hmac.compare_digest(str(given).encode(), expected.encode())

    def start_session(self, user: api.User) -> None:
        """A fresh session id for the user (the anonymous one it had is deleted)."""
        self.end_session()
        self.session["uuid"] = secrets.token_urlsafe(32)
        self.session["user"] = {"id": user.id, "epoch": user.epoch}
        self.session["recent_activity"] = int(time.time())
        self.session["csrf"] = secrets.token_urlsafe(32)

    def end_session(self) -> None:
        old = self.session.get("uuid")
        if old:
            self.sessions.delete(old)
        self.session.clear()

    # -- the page ------------------------------------------------------------------------------------------

    def wds_url(self) -> str:
        if self.config.scp.scp_wds_url:
            return self.config.scp.scp_wds_url
        host = urlsplit(request.url).hostname or "127.0.0.1"
        scheme = "wss" if request.url.startswith("https") else "ws"
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{self.config.wds.wds_port}/ws"

    def page_config(self, user: api.User) -> dict[str, Any]:
        s = self.config.scp
        token = api.wds_token(s, self.config.wds, user)
        return {
            "user": {"email": user.email, "role": user.role},
            "wds": {
                "url": self.wds_url(),
                "token": token["token"],
                "expires": token["expires"],
                "channels": token["channels"],
            },
            "api": {"base": "/api", "csrf": self.csrf()},
            "logout": "/auth/logout",
            "symbols": s.watchlist,
        }


def _json_for_script(value: Any) -> str:
    """JSON safe inside <script type="application/json">: no "</script>", no HTML comment openers."""
    return (
        orjson.dumps(value).decode().replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )


def _security_headers(page: bool, wds_url: str = "") -> None:
    """``wds_url``: the page may open a WebSocket to that origin (and to no other)."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    if page:
        wds = urlsplit(wds_url) if wds_url else None
        connect = f" {wds.scheme}://{wds.netloc}" if wds and wds.scheme in ("ws", "wss") else ""
        response.headers["Content-Security-Policy"] = CSP.format(connect=connect)
        response.headers["Cache-Control"] = "no-store"


def _json_body() -> Any:
    """The request's JSON body (None when empty); ApiError on a wrong type, size or syntax."""
    length = request.content_length or 0
    if length > api.MAX_BODY_BYTES:
        if length <= DRAIN_BYTES:  # read it first: a client still sending would miss the answer
            for _ in range(0, length, 65_536):
                if not request.body.read(65_536):
                    break
        raise api.ApiError(413, "too_large", f"bodies are at most {api.MAX_BODY_BYTES} bytes")
    raw = request.body.read(api.MAX_BODY_BYTES + 1) if length or request.method not in SAFE_METHODS else b""
    if len(raw) > api.MAX_BODY_BYTES:
        raise api.ApiError(413, "too_large", f"bodies are at most {api.MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return None
    kind = (request.content_type or "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise api.ApiError(415, "unsupported_media_type", "send application/json")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise api.ApiError(400, "invalid_json", "the body is not valid JSON") from None


def register(app: App) -> None:
    """Declare the routes (py4web actions) of the app being imported."""
    session, db = app.session, app.db
    openapi_doc = orjson.dumps(api.openapi())

    def answer(status: int, doc: Any) -> bytes:
        response.status = status
        response.headers["Content-Type"] = "application/json"
        _security_headers(page=False)
        response.headers["Cache-Control"] = "no-store"
        return orjson.dumps(doc)

    @action("api/openapi.json", method=["GET"])
    def openapi_json() -> bytes:
        answer(200, None)
        return openapi_doc

    @action("api/<path:path>", method=["GET", "POST", "PUT", "PATCH", "DELETE"])
    @action("api", method=["GET", "POST", "PUT", "PATCH", "DELETE"])
    @action.uses(session, db)
    def api_route(path: str = "") -> bytes:
        started = time.perf_counter()
        route = "?"
        try:
            ctx = api.Context(app.config.scp, app.config.wds, app.config.market, app.store, app.bridge)
            try:
                route = api.match(request.method, "/api/" + path)[0].path
                ctx.principal = app.principal()
                if ctx.principal is not None and ctx.principal.via == "session":
                    ctx.csrf = app.csrf()
                if route == "/api/tokens" and request.method == "POST" and ctx.principal is not None:
                    wait = app.token_mints.retry_after(str(ctx.principal.user.id))
                    if wait:
                        response.headers["Retry-After"] = str(wait)
                        raise api.ApiError(429, "rate_limited", f"at most {WDS_TOKENS_PER_MINUTE} WDS "
                                           f"tokens a minute: retry in {wait} s")  # fmt: skip
                body = _json_body()
            except api.ApiError as exc:
                status, doc = exc.status, exc.document()
            else:
                status, doc = api.dispatch(ctx, request.method, "/api/" + path, body)
        except Exception:
            log.exception("api request failed", extra={"method": request.method, "route": route})
            db.rollback()
            status, doc = 500, {"error": {"code": "internal", "message": "internal error (logged)"}}
        metrics.API_REQUESTS.labels(request.method, route, str(status)).inc()
        metrics.API_SECONDS.labels(route).observe(time.perf_counter() - started)
        return answer(status, doc)

    @action("index", method=["GET"])
    @action.uses(session, db)
    def index() -> Any:
        user = app.session_user()
        if user is None:
            redirect("/auth/login")
        wait = app.token_mints.retry_after(str(user.id))  # the page carries a WDS token: counted alike
        if wait:
            response.status = 429
            response.headers["Retry-After"] = str(wait)
            _security_headers(page=True)
            return f"Too many page loads: at most {WDS_TOKENS_PER_MINUTE} a minute. Retry in {wait} s."
        config = app.page_config(user)  # type: ignore[arg-type]
        _security_headers(page=True, wds_url=config["wds"]["url"])
        return _render("index.html", config=XML(_json_for_script(config)))

    @action("auth/login", method=["GET", "POST"])
    @action.uses(session, db)
    def login() -> Any:
        _security_headers(page=True)
        if request.method in ("GET", "HEAD"):  # a HEAD is a GET without its body, never a post
            if app.session_user() is not None:
                redirect("/")
            return _render("login.html", csrf=app.form_csrf(), error="", email="",
                           registration=app.config.scp.scp_registration)  # fmt: skip
        form = request.forms
        email = str(form.get("email") or "").strip().lower()[:254]
        password = str(form.get("password") or "")
        address = app.address()
        error = ""
        if not app.form_csrf_ok(str(form.get("_csrf") or "")):
            error, status = "The form expired: try again.", 400
        elif app.limiter.blocked(address, email):
            error, status = "Too many failed logins: wait a minute.", 429
            metrics.LOGINS.labels("limited").inc()
        else:
            user = app.store.check_login(email, password)
            if user is not None and user.active:
                app.start_session(user)
                metrics.LOGINS.labels("ok").inc()
                log.info("login", extra={"user": user.email, "remote": address})
                redirect("/")
            app.limiter.failed(address, email)
            metrics.LOGINS.labels("failed").inc()
            log.warning("login failed", extra={"user": email, "remote": address})
            error, status = "Wrong e-mail or password.", 401
        response.status = status
        return _render("login.html", csrf=app.form_csrf(), error=error, email=email,
                       registration=app.config.scp.scp_registration)  # fmt: skip

    @action("auth/logout", method=["GET", "POST"])
    @action.uses(session, db)
    def logout() -> Any:
        # a POST with the page's CSRF token: a GET, or a form from another site, logs nobody out
        if request.method != "POST" or not app.csrf_ok(str(request.forms.get("_csrf") or "")):
            if app.session_user() is not None:
                redirect("/")
            redirect("/auth/login")
        app.end_session()
        redirect("/auth/login")

    @action("auth/register", method=["GET", "POST"])
    @action.uses(session, db)
    def register_user() -> Any:
        if not app.config.scp.scp_registration:
            abort(404)
        _security_headers(page=True)
        if request.method in ("GET", "HEAD"):  # a HEAD is a GET without its body, never a post
            return _render("register.html", csrf=app.form_csrf(), error="", email="")
        form = request.forms
        email = str(form.get("email") or "").strip().lower()[:254]
        error = ""
        if not app.form_csrf_ok(str(form.get("_csrf") or "")):
            error = "The form expired: try again."
        elif app.limiter.blocked(app.address(), email):
            error = "Too many attempts: wait a minute."
        else:
            try:
                user = app.store.create_user(email, str(form.get("password") or ""), "viewer")
            except StoreError as exc:
                app.limiter.failed(app.address(), email)
                error = str(exc)
            else:
                app.start_session(user)
                redirect("/")
        response.status = 400
        return _render("register.html", csrf=app.form_csrf(), error=error, email=email)

    @action("healthz", method=["GET"])
    def healthz() -> bytes:
        return answer(200, {"ok": True})

    @action("readyz", method=["GET"])
    @action.uses(db)
    def readyz() -> bytes:
        checks: dict[str, Any] = {}
        try:
            db.executesql("SELECT 1")
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = type(exc).__name__
        try:
            app.redis.ping()
            checks["redis"] = "ok"
        except redis.RedisError as exc:
            checks["redis"] = type(exc).__name__
        ok = all(v == "ok" for v in checks.values())
        return answer(200 if ok else 503, {"ready": ok, **checks})

    @action("metrics", method=["GET"])
    def metrics_page() -> bytes:
        body, kind = metrics.exposition()
        response.headers["Content-Type"] = kind
        return body


def _render(name: str, **context: Any) -> str:
    """A template of the app with ``context`` (yatl escapes every value but ``XML``)."""
    return render(filename=os.path.join(TEMPLATES, name), path=TEMPLATES, context=context, delimiters="[[ ]]")
