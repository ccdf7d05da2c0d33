"""The control plane against real PostgreSQL, Redis and RabbitMQ, through ``mdpipe scp`` under gunicorn:
login and sessions, the authorization matrix of every API route, token scoping, CSRF, and no secret in
any answer."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests
from redis.asyncio import Redis

from mdc.names import Names, is_known_channel
from mdc.publisher import BlockingPublisher
from mdpipe.private_services import free_port
from mdpipe.settings import WdsSettings
from scp.api import ROUTES, scan_signal_channels
from wds.tokens import Verifier

from .conftest import REDIS_URL
from .scp_support import ADMIN, PG, SESSION_SECRET, TOKEN_SECRET, VENDOR_KEY, Scp

VIEWER = ("viewer@example.com", "viewer-password-123")
VIEWER_SIGNALS = "signals.apitest_*"  # the signals.* channels a viewer may read (not signals.apihidden)


@pytest.fixture(scope="module")
def scp():
    server = Scp(
        SCP_VIEWER_CHANNELS=f"stats.*,leaders.*,quotes.AAPL,{VIEWER_SIGNALS}", SCP_LOGIN_ATTEMPTS="3"
    )
    admin = server.login(*ADMIN)
    csrf = server.api(admin, "GET", "/api/me").json()["csrf"]
    r = server.api(admin, "POST", "/api/users", csrf, json={"email": VIEWER[0], "password": VIEWER[1]})
    assert r.status_code == 201, r.text
    yield server
    err = server.stop()
    for secret in (SESSION_SECRET, TOKEN_SECRET, VENDOR_KEY, ADMIN[1], VIEWER[1]):
        assert secret not in err, "a secret reached the log"


def _csrf(scp: Scp, s: requests.Session) -> str:
    return scp.api(s, "GET", "/api/me").json()["csrf"]


def test_login_wrong_password_logout_and_registration_off(scp):
    s = scp.anonymous()
    assert s.get(scp.base + "/", allow_redirects=False).headers["Location"] == "/auth/login"
    r = scp.post_login(s, VIEWER[0], "not-the-password-at-all")
    assert r.status_code == 401 and "Wrong e-mail or password" in r.text
    assert scp.api(s, "GET", "/api/me").status_code == 401

    s = scp.login(*VIEWER)
    me = scp.api(s, "GET", "/api/me").json()
    assert (me["email"], me["role"], me["via"]) == (VIEWER[0], "viewer", "session")
    cookie = next(c for c in s.cookies if c.name == "mdpipe_session")
    assert cookie.has_nonstandard_attr("HttpOnly") or "httponly" in str(cookie._rest).lower()

    stolen = requests.Session()
    stolen.cookies.set("mdpipe_session", cookie.value)
    assert scp.api(stolen, "GET", "/api/me").status_code == 200
    # logging out takes a POST with the page's CSRF token: a link or a form from elsewhere does nothing
    assert s.get(scp.base + "/auth/logout", allow_redirects=False).headers["Location"] == "/"
    forged = s.post(scp.base + "/auth/logout", data={"_csrf": "forged"}, allow_redirects=False)
    assert forged.headers["Location"] == "/"
    assert scp.api(s, "GET", "/api/me").status_code == 200
    csrf = scp.page_config(s)["api"]["csrf"]
    r = s.post(scp.base + "/auth/logout", data={"_csrf": csrf}, allow_redirects=False)
    assert r.headers["Location"] == "/auth/login"
    assert scp.api(s, "GET", "/api/me").status_code == 401
    # the session is gone on the server: a copy of the old cookie is worth nothing
    assert scp.api(stolen, "GET", "/api/me").status_code == 401

    assert requests.get(scp.base + "/auth/register", timeout=10).status_code == 404


def test_a_session_ends_when_idle_for_its_lifetime(scp):
    store = redis.Redis.from_url(REDIS_URL)
    before = set(store.scan_iter(match="scp:session:*"))
    s = scp.login(*VIEWER)
    (key,) = set(store.scan_iter(match="scp:session:*")) - before
    assert 8 * 3600 - 60 < store.ttl(key) <= 8 * 3600  # SCP_SESSION_TTL_S, renewed by activity
    assert scp.api(s, "GET", "/api/me").status_code == 200
    store.pexpire(key, 1)  # as if the lifetime went by without a request
    time.sleep(0.05)
    assert scp.api(s, "GET", "/api/me").status_code == 401
    assert s.get(scp.base + "/", allow_redirects=False).headers["Location"] == "/auth/login"
    store.close()


def test_production_mode_refuses_to_start_with_development_secrets(tmp_path):
    env = {"PATH": os.environ["PATH"], "MDPIPE_ENV": "production", "SCP_DATA_DIR": str(tmp_path),
           "RABBITMQ_URL": "amqp://mdpipe:a-broker-password@127.0.0.1:5672/"}  # fmt: skip
    for extra, missing in (
        ({}, "SCP_SESSION_SECRET"),
        ({"SCP_SESSION_SECRET": SESSION_SECRET}, "WDS_TOKEN_SECRET"),
    ):
        argv = [sys.executable, "-m", "mdpipe", "scp"]
        run = subprocess.run(argv, env={**env, **extra}, capture_output=True, text=True, timeout=60)
        assert run.returncode == 2, run.stderr
        assert f"invalid setting {missing}: production mode needs a value of its own" in run.stderr
        assert "Traceback" not in run.stderr and SESSION_SECRET not in run.stderr


def test_a_form_without_its_csrf_token_is_refused(scp):
    s = requests.Session()
    r = s.post(
        scp.base + "/auth/login", data={"email": ADMIN[0], "password": ADMIN[1]}, allow_redirects=False
    )
    assert r.status_code == 400 and "The form expired" in r.text


def test_failed_logins_are_limited_per_account(scp):
    target = "limited@example.com"
    admin = scp.login(*ADMIN)
    scp.api(
        admin, "POST", "/api/users", _csrf(scp, admin), json={"email": target, "password": "limited-pass-123"}
    )
    s = scp.anonymous()
    codes = [scp.post_login(s, target, f"wrong-password-{i}").status_code for i in range(4)]
    assert codes == [401, 401, 401, 429]
    # even the right password waits out the minute
    assert scp.post_login(s, target, "limited-pass-123").status_code == 429


def _call(scp: Scp, s: requests.Session, method: str, path: str, csrf: str | None):
    path = path.replace("{id}", "999999").replace("{sym}", "AAPL")
    return scp.api(s, method, path, csrf, json={} if method in ("POST", "PUT", "PATCH") else None)


def test_every_route_refuses_anonymous_and_checks_the_role(scp):
    anon, viewer, admin = scp.anonymous(), scp.login(*VIEWER), scp.login(*ADMIN)
    vc, ac = _csrf(scp, viewer), _csrf(scp, admin)
    for route in ROUTES:
        what = f"{route.method} {route.path}"
        assert _call(scp, anon, route.method, route.path, None).status_code == 401, what
        v = _call(scp, viewer, route.method, route.path, vc)
        a = _call(scp, admin, route.method, route.path, ac)
        if route.role == "admin":
            assert v.status_code == 403, what
        else:
            assert v.status_code not in (401, 403, 500), (what, v.status_code, v.text)
        assert a.status_code not in (401, 403, 500), (what, a.status_code, a.text)
        for r in (v, a):
            assert r.headers["Content-Type"] == "application/json"
            if r.status_code >= 400:
                assert set(r.json()["error"]) == {"code", "message"}
    assert requests.get(scp.base + "/api/openapi.json", timeout=10).json()["openapi"].startswith("3.")


def test_changes_by_session_need_the_csrf_header(scp):
    admin = scp.login(*ADMIN)
    r = scp.api(admin, "POST", "/api/mdl/pause")
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf"
    r = scp.api(admin, "POST", "/api/mdl/pause", "forged-token")
    assert r.status_code == 403


def test_api_tokens_act_as_their_user_until_revoked(scp):
    viewer = scp.login(*VIEWER)
    r = scp.api(viewer, "POST", "/api/api-tokens", _csrf(scp, viewer), json={"name": "bot", "days": 1})
    assert r.status_code == 201
    token, token_id = r.json()["token"], r.json()["id"]
    bot = requests.Session()
    bot.headers["Authorization"] = f"Bearer {token}"
    assert scp.api(bot, "GET", "/api/me").json()["via"] == "token"
    assert scp.api(bot, "GET", "/api/users").status_code == 403  # a viewer's token
    assert scp.api(bot, "POST", "/api/mdl/pause").status_code == 403  # no CSRF needed, still a viewer
    listed = scp.api(bot, "GET", "/api/api-tokens").json()["tokens"]
    assert [t["id"] for t in listed] == [token_id] and token not in str(listed)
    assert scp.api(bot, "DELETE", f"/api/api-tokens/{token_id}").status_code == 200
    assert scp.api(bot, "GET", "/api/me").status_code == 401
    bad = requests.Session()
    bad.headers["Authorization"] = "Bearer mdp_not-a-real-token"
    assert scp.api(bad, "GET", "/api/me").status_code == 401


def test_wds_tokens_are_scoped_by_role(scp):
    verifier = Verifier(WdsSettings(wds_token_secret=TOKEN_SECRET))
    viewer, admin = scp.login(*VIEWER), scp.login(*ADMIN)
    vc, ac = _csrf(scp, viewer), _csrf(scp, admin)
    r = scp.api(viewer, "POST", "/api/tokens", vc, json={})
    grant = verifier.verify(r.json()["token"])
    assert grant.subject == VIEWER[0]
    assert set(grant.channels) == {"stats.*", "leaders.*", "quotes.AAPL", VIEWER_SIGNALS}
    assert grant.allows("stats.MSFT") and not grant.allows("trades.AAPL")
    assert 0 < grant.expires - time.time() <= 900 + 5

    r = scp.api(viewer, "POST", "/api/tokens", vc, json={"channels": ["trades.AAPL"]})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_channels"
    r = scp.api(viewer, "POST", "/api/tokens", vc, json={"channels": ["*"]})
    assert r.status_code == 403
    r = scp.api(viewer, "POST", "/api/tokens", vc, json={"ttl_s": 7200})
    assert r.status_code == 422 and r.json()["error"]["code"] == "ttl_too_long"
    r = scp.api(admin, "POST", "/api/tokens", ac, json={"channels": ["*"], "ttl_s": 7200})
    assert r.status_code == 200 and verifier.verify(r.json()["token"]).channels == ("*",)


def test_the_dashboard_page_carries_a_scoped_wds_token(scp):
    viewer = scp.login(*VIEWER)
    page = viewer.get(scp.base + "/", timeout=10)
    assert page.status_code == 200 and "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"
    config = scp.page_config(viewer)
    assert config["user"] == {"email": VIEWER[0], "role": "viewer"}
    grant = Verifier(WdsSettings(wds_token_secret=TOKEN_SECRET)).verify(config["wds"]["token"])
    assert grant.subject == VIEWER[0] and not grant.allows("trades.AAPL") and grant.allows("stats.AAPL")
    assert config["wds"]["url"].startswith("ws://127.0.0.1:") and config["api"]["csrf"]
    # the page may open a WebSocket to WDS and to nowhere else
    wds_origin = config["wds"]["url"].removesuffix("/ws")
    assert f"connect-src 'self' {wds_origin};" in page.headers["Content-Security-Policy"]
    login_page = requests.get(scp.base + "/auth/login", timeout=10)
    assert "connect-src 'self';" in login_page.headers["Content-Security-Policy"]


def _drop_signals(store: redis.Redis, prefix: str, pattern: str) -> None:
    names = Names(prefix)
    for match in (names.signal_seq(pattern), names.signal_recent(pattern)):
        for key in store.scan_iter(match=match):
            store.delete(key)


def _signals(scp: Scp, s: requests.Session, want: set[str]) -> dict:
    """GET /api/signals once every channel of ``want`` is listed (the channel list is cached 5 s)."""
    deadline = time.monotonic() + 10
    while True:
        r = scp.api(s, "GET", "/api/signals")
        assert r.status_code == 200, r.text
        doc = r.json()
        if want <= {c["channel"] for c in doc["channels"]} or time.monotonic() > deadline:
            return doc
        time.sleep(0.2)


def test_signal_channels_are_listed_with_their_seq_within_the_role(scp):
    prefix = scp.env["MDC_PREFIX"]
    store = redis.Redis.from_url(REDIS_URL)
    _drop_signals(store, prefix, "signals.api*")
    try:
        seqs: dict[str, int] = {}
        for name in ("apitest_a", "apitest_b", "apihidden"):
            with BlockingPublisher(REDIS_URL, name, prefix=prefix, heartbeat=False) as pub:
                pub.publish({"sym": "AAPL", "side": "up"}, suffix="AAPL", type="cross")
                for i in range(3):
                    pub.publish({"n": i})
                pub.flush(5)
                seqs.update(pub.publisher.last_seq)
        for name in ("apitest_a", "apitest_b", "apihidden"):
            assert (seqs[f"signals.{name}"], seqs[f"signals.{name}.AAPL"]) == (3, 1)
        viewer, admin = scp.login(*VIEWER), scp.login(*ADMIN)

        doc = _signals(scp, admin, set(seqs))
        assert doc["truncated"] is False
        names = [c["channel"] for c in doc["channels"]]
        assert names == sorted(names) and all(is_known_channel(n) for n in names)
        assert [c for c in doc["channels"] if c["channel"] in seqs] == [
            {"channel": ch, "seq": seqs[ch]} for ch in sorted(seqs)
        ]
        # a viewer: only what SCP_VIEWER_CHANNELS lets its WDS tokens read
        doc = _signals(scp, viewer, {ch for ch in seqs if "apihidden" not in ch})
        assert [c["channel"] for c in doc["channels"]] == sorted(ch for ch in seqs if "apihidden" not in ch)
        # the seq is read on every request (only the list of channels is cached)
        with BlockingPublisher(REDIS_URL, "apitest_b", prefix=prefix, heartbeat=False) as pub:
            pub.publish({"n": 3})
            pub.flush(5)
        store.delete(Names(prefix).signal_seq("signals.apitest_a"))  # gone: no longer listed
        doc = scp.api(viewer, "GET", "/api/signals").json()
        listed = {c["channel"]: c["seq"] for c in doc["channels"]}
        assert listed["signals.apitest_b"] == 4 and "signals.apitest_a" not in listed
        # nobody without a session or an API token
        assert scp.api(scp.anonymous(), "GET", "/api/signals").status_code == 401
    finally:
        _drop_signals(store, prefix, "signals.api*")
        store.close()


async def test_the_scan_of_signal_channels_is_bounded():
    names = Names(f"sigscan{secrets.token_hex(4)}")
    client = Redis.from_url(REDIS_URL)
    try:
        bulk = {names.signal_seq(f"signals.bulk.S{i:03}"): i for i in range(205)}
        await client.mset({**bulk, names.signal_seq("signals.Not-A-Name"): 1, names.seq(): 1})
        channels, truncated = await scan_signal_channels(client, names)
        assert truncated is True and len(channels) == 200 and channels == sorted(channels)
        assert all(c.startswith("signals.bulk.S") for c in channels)
        channels, truncated = await scan_signal_channels(client, names, limit=300)
        assert truncated is False and channels == [f"signals.bulk.S{i:03}" for i in range(205)]
    finally:
        keys = [k async for k in client.scan_iter(match=f"{names.prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def test_bad_input_gets_a_json_4xx(scp):
    admin = scp.login(*ADMIN)
    ac = _csrf(scp, admin)
    as_json = {"Content-Type": "application/json"}
    cases = [
        (
            "PUT",
            "/api/mdl/subscriptions",
            {"data": "{not json", "headers": as_json},
            400,
        ),
        ("PUT", "/api/mdl/subscriptions", {"data": "x=1", "headers": {"Content-Type": "text/plain"}}, 415),
        ("PUT", "/api/mdl/subscriptions", {"json": {"subscriptions": "T.*", "extra": 1}}, 422),
        ("PUT", "/api/mdl/subscriptions", {"json": {"subscriptions": "NOPE.AAPL"}}, 422),
        ("PUT", "/api/mdl/subscriptions", {"json": ["T.*"]}, 422),
        (
            "PUT",
            "/api/mdl/subscriptions",
            {"data": b"[" * 70_000, "headers": as_json},
            413,
        ),
        ("POST", "/api/users", {"json": {"email": "x", "password": "short"}}, 422),
        ("POST", "/api/users", {"json": {"email": VIEWER[0], "password": "long-enough-pass"}}, 409),
        ("PATCH", "/api/users/abc", {"json": {}}, 400),
        ("PATCH", "/api/users/1", {"json": {"role": "root"}}, 422),
        ("PATCH", "/api/users/1", {"json": {"role": "viewer"}}, 409),  # the last admin
        ("GET", "/api/symbols/bad$sym", {}, 400),
        ("GET", "/api/symbols/%00bad", {}, 404),  # no route has control characters
        ("GET", "/api/symbols/NOSUCHSYM", {}, 404),
        ("GET", "/api/nope", {}, 404),
        ("DELETE", "/api/status", {}, 405),
    ]
    for method, path, kw, status in cases:
        r = scp.api(admin, method, path, ac, **kw)
        assert r.status_code == status, (method, path, r.status_code, r.text[:200])
        assert r.json()["error"]["code"]


def test_no_secret_in_any_page_or_answer(scp):
    viewer, admin = scp.login(*VIEWER), scp.login(*ADMIN)
    bodies = [
        requests.get(scp.base + p, timeout=10).text for p in ("/auth/login", "/api/openapi.json", "/healthz")
    ]
    for s in (viewer, admin):
        c = _csrf(scp, s)
        for route in ROUTES:
            if route.method == "GET" and "{" not in route.path:
                bodies.append(scp.api(s, "GET", route.path, c).text)
        bodies.append(scp.api(s, "POST", "/api/tokens", c, json={}).text)
        bodies.append(s.get(scp.base + "/", timeout=10).text)
    text = "\n".join(bodies)
    for secret in (SESSION_SECRET, TOKEN_SECRET, VENDOR_KEY, ADMIN[1], VIEWER[1], "guest:guest"):
        assert secret not in text


def test_the_docs_list_every_api_route_with_its_role():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "scp.md").read_text()
    rows = set(re.findall(r"^\| `(GET|POST|PUT|PATCH|DELETE) (/api/\S+)` \| (\w+) \|", doc, re.M))
    assert rows == {(r.method, r.path, r.role) for r in ROUTES}


def test_scp_keeps_its_schema_records_in_the_database_not_in_its_data_folder(tmp_path):
    from mdpipe.settings import ScpSettings
    from scp.store import open_store

    from .scp_support import _admin_sql

    name = f"mdpipe_scp_schema_{os.getpid()}"
    _admin_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    _admin_sql(f"CREATE DATABASE {name}")
    try:
        for i in range(2):  # the second start has a new, empty data folder (a new container, a replica)
            folder = tmp_path / str(i)
            store = open_store(ScpSettings(pydal_uri=f"{PG}/{name}", scp_data_dir=str(folder)))
            store.create_user(f"user{i}@example.com", "a-long-password", "viewer")
            assert store.db(store.db.auth_user).count() == i + 1
            store.db.close()
            assert list(folder.iterdir()) == []
    finally:
        _admin_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_database_that_never_answers_is_waited_for_then_a_clear_exit_1(tmp_path):
    closed = f"postgres://postgres:db-password-123@127.0.0.1:{free_port()}/mdpipe"
    env = {
        "PATH": os.environ["PATH"],
        "PYDAL_URI": closed,
        "SCP_DB_WAIT_S": "2",
        "SCP_DATA_DIR": str(tmp_path),
    }
    run = subprocess.run([sys.executable, "-m", "mdpipe", "scp"], env=env, capture_output=True, text=True,
                         timeout=90)  # fmt: skip
    assert run.returncode == 1, run.stderr  # not 2: a restart may find it up
    assert "did not answer in 2 s" in run.stderr and "db-password-123" not in run.stderr
    assert "Traceback" not in run.stderr
