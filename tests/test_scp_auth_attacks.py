"""Issue 19's attacks on SCP's authentication, each run against a real ``mdpipe scp`` (gunicorn,
PostgreSQL, Redis, HTTP over sockets), bounded in count and time: forged ``X-Forwarded-For``, locking a
user out, telling accounts apart by timing, sessions and API tokens that outlive a disabled account or
a password change, anonymous requests that fill Redis, unbounded token minting, a world-readable
database file, look-alike addresses.

Connections from 127.0.0.2 play a reverse proxy (``SCP_TRUSTED_PROXIES``); those from 127.0.0.1 are
clients reaching SCP directly."""

from __future__ import annotations

import os
import re
import statistics
import time

import pytest
import redis
import requests
from requests.adapters import HTTPAdapter

from .conftest import REDIS_URL
from .scp_support import ADMIN, Scp

PROXY = "127.0.0.2"
FORGED = "203.0.113."  # addresses an attacker writes into X-Forwarded-For


class _From(HTTPAdapter):
    """Connections from a chosen local address (127.0.0.2: the trusted proxy)."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def _via_proxy(client: str) -> requests.Session:
    """A browser behind the trusted proxy, which says the browser's address is ``client``."""
    s = requests.Session()
    s.mount("http://", _From(PROXY))
    s.headers["X-Forwarded-For"] = client
    return s


@pytest.fixture(scope="module")
def scp():
    store = redis.Redis.from_url(REDIS_URL)
    for key in store.scan_iter(match="scp:limit:*"):  # user ids start again in each new database
        store.delete(key)
    store.close()
    server = Scp(SCP_TRUSTED_PROXIES=PROXY, SCP_LOGIN_ATTEMPTS="5")
    yield server
    err = server.stop()
    # the log's "remote" is the socket's peer, or what the trusted proxy said: never a forged header
    remotes = set(re.findall(r'"remote": ?"([^"]*)"', err))
    assert remotes and all(r == "127.0.0.1" or r.startswith("198.51.100.") for r in remotes), remotes


def _user(scp: Scp, email: str, password: str) -> int:
    admin = scp.login(*ADMIN)
    csrf = scp.api(admin, "GET", "/api/me").json()["csrf"]
    r = scp.api(admin, "POST", "/api/users", csrf, json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_a_forged_forwarded_for_resets_nothing_and_nobody_can_lock_another_user_out(scp):
    target = ("target@example.com", "target-password-123")
    _user(scp, *target)
    attacker = scp.anonymous()  # straight to SCP: its X-Forwarded-For is not believed
    codes = []
    for i in range(7):
        attacker.headers["X-Forwarded-For"] = f"{FORGED}{i}"
        codes.append(scp.post_login(attacker, target[0], f"guess-{i}").status_code)
    assert codes == [401] * 5 + [429] * 2  # a fresh header per try did not reset the count
    # the attack locked its own (account, address) pair, not the account: its owner logs in elsewhere
    owner = _via_proxy("198.51.100.7")
    assert scp.post_login(owner, *target).status_code == 303

    # behind the trusted proxy, the address it gives is the client's: counted per address it names
    guesser = _via_proxy("198.51.100.8")
    assert [scp.post_login(guesser, target[0], f"x-{i}").status_code for i in range(6)] == [401] * 5 + [429]
    guesser.headers["X-Forwarded-For"] = f"{FORGED}9, 198.51.100.8"  # what the client wrote comes first
    assert scp.post_login(guesser, target[0], "x").status_code == 429
    assert scp.post_login(_via_proxy("198.51.100.9"), target[0], "x").status_code == 401


def test_a_wrong_password_takes_as_long_for_an_unknown_account_as_for_a_real_one(scp):
    _user(scp, "timed@example.com", "timed-password-123")
    s = _via_proxy("198.51.100.20")
    real, unknown = [], []
    for i in range(4):  # interleaved, so load on the machine falls on both alike
        for email, times in (("timed@example.com", real), (f"nobody{i}@example.com", unknown)):
            started = time.perf_counter()
            assert scp.post_login(s, email, "wrong-password-1").status_code == 401
            times.append(time.perf_counter() - started)
    real_s, unknown_s = statistics.median(real), statistics.median(unknown)
    print(f"wrong password: real account {real_s * 1000:.0f} ms, unknown {unknown_s * 1000:.0f} ms")
    assert real_s > 0.05  # the password hash is paid (PBKDF2, 210,000 rounds)
    assert 0.5 < unknown_s / real_s < 2, (real, unknown)  # it was 0.02-0.05


def test_disabling_a_user_or_changing_its_password_ends_its_sessions_and_api_tokens(scp):
    email, password = "epoch@example.com", "epoch-password-123"
    user_id = _user(scp, email, password)
    admin = scp.login(*ADMIN)
    ac = scp.api(admin, "GET", "/api/me").json()["csrf"]

    def patch(**body: object) -> None:
        assert scp.api(admin, "PATCH", f"/api/users/{user_id}", ac, json=body).status_code == 200

    def logged_in(new_password: str) -> tuple[requests.Session, requests.Session]:
        """A session of the user and a program holding an API token it made."""
        s = scp.login(email, new_password)
        csrf = scp.api(s, "GET", "/api/me").json()["csrf"]
        token = scp.api(s, "POST", "/api/api-tokens", csrf, json={"name": "bot"}).json()["token"]
        bot = requests.Session()
        bot.headers["Authorization"] = f"Bearer {token}"
        assert scp.api(s, "GET", "/api/me").status_code == scp.api(bot, "GET", "/api/me").status_code == 200
        return s, bot

    session, bot = logged_in(password)
    patch(active=False)
    assert [scp.api(c, "GET", "/api/me").status_code for c in (session, bot)] == [401, 401]
    patch(active=True)  # re-enabling does not bring the old session or token back
    assert [scp.api(c, "GET", "/api/me").status_code for c in (session, bot)] == [401, 401]

    session, bot = logged_in(password)
    patch(password="a-new-password-456")
    assert [scp.api(c, "GET", "/api/me").status_code for c in (session, bot)] == [401, 401]
    session, bot = logged_in("a-new-password-456")
    patch(role="admin")  # a new role: sessions made under the old one end too
    assert [scp.api(c, "GET", "/api/me").status_code for c in (session, bot)] == [401, 401]


def test_anonymous_requests_store_nothing_in_redis(scp):
    store = redis.Redis.from_url(REDIS_URL)
    before = set(store.scan_iter(match="scp:session:*"))
    s = _via_proxy("198.51.100.30")
    for _ in range(10):
        assert s.get(scp.base + "/auth/login", timeout=10).status_code == 200
        assert s.get(scp.base + "/", allow_redirects=False, timeout=10).status_code == 303
        assert s.get(scp.base + "/api/me", timeout=10).status_code == 401
    assert scp.post_login(s, ADMIN[0], "wrong-password-1").status_code == 401
    assert set(store.scan_iter(match="scp:session:*")) == before
    assert "mdpipe_session" not in s.cookies  # no session id was even handed out
    # the login form's CSRF token is bound to its browser: another browser's is refused
    other = _via_proxy("198.51.100.31")
    token = (
        other.get(scp.base + "/auth/login", timeout=10).text.split('name="_csrf" value="')[1].split('"')[0]
    )
    form = {"_csrf": token, "email": ADMIN[0], "password": ADMIN[1]}
    assert s.post(scp.base + "/auth/login", data=form, allow_redirects=False).status_code == 400
    assert set(store.scan_iter(match="scp:session:*")) == before
    assert scp.post_login(s, *ADMIN).status_code == 303  # the login stores the one session
    assert len(set(store.scan_iter(match="scp:session:*")) - before) == 1
    store.close()


def test_wds_tokens_are_minted_20_a_minute_per_user(scp):
    email = "minter@example.com"
    _user(scp, email, "minter-password-123")
    viewer, admin = scp.login(email, "minter-password-123"), scp.login(*ADMIN)
    vc, ac = (scp.api(s, "GET", "/api/me").json()["csrf"] for s in (viewer, admin))
    codes = [scp.api(viewer, "POST", "/api/tokens", vc, json={}).status_code for _ in range(20)]
    assert codes == [200] * 20
    r = scp.api(viewer, "POST", "/api/tokens", vc, json={})
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert r.headers["Content-Type"] == "application/json" and 1 <= int(r.headers["Retry-After"]) <= 60
    assert scp.api(admin, "POST", "/api/tokens", ac, json={}).status_code == 200  # per user
    page = viewer.get(scp.base + "/", timeout=10)  # the dashboard carries a token: not a way around
    assert page.status_code == 429 and "mdpipe-config" not in page.text and page.headers["Retry-After"]


def test_look_alike_addresses_are_refused(scp):
    admin = scp.login(*ADMIN)
    ac = scp.api(admin, "GET", "/api/me").json()["csrf"]
    cases = {
        "\u0430dmin@example.com": 422,  # a Cyrillic "а" in the local part
        "boss@ex\u0430mple.com": 422,  # and in the domain, beside Latin letters
        "\uff41dmin@example.com": 409,  # full-width Latin: NFKC makes it admin@example.com, which exists
    }
    for email, status in cases.items():
        r = scp.api(admin, "POST", "/api/users", ac, json={"email": email, "password": "long-enough-pass"})
        assert r.status_code == status, (email, r.status_code, r.text)
    emails = [u["email"] for u in scp.api(admin, "GET", "/api/users").json()["users"]]
    assert all(e.isascii() for e in emails), emails


def test_the_sqlite_database_is_readable_by_its_owner_only(tmp_path):
    from mdpipe.settings import ScpSettings
    from scp.store import open_store

    old = tmp_path / "old"  # an install made before: folder 0755, file 0644
    old.mkdir(mode=0o755)
    (old / "scp.sqlite").touch(mode=0o644)
    for folder in (tmp_path / "new" / "scp", old):
        open_store(ScpSettings(scp_data_dir=str(folder))).create_user(
            f"u@{folder.name}.example.com", "a-long-password", "admin"
        )
        assert os.stat(folder / "scp.sqlite").st_mode & 0o777 == 0o600
        assert os.stat(folder).st_mode & 0o777 == 0o700
