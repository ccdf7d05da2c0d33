"""Attacks on SCP's HTTP layer (issue 19: items 1, 2, 3, 7, 9), each over real sockets against a running
``mdpipe scp``, bounded in connections and time: slow request heads and bodies, chunked bodies past the
limit, malformed JSON bodies on every route that takes one, methods the API does not have, and the
metrics every worker adds to."""

from __future__ import annotations

import os
import re
import select
import socket
import stat
import time
from pathlib import Path

import pytest
import requests

from scp import front
from scp.api import ROUTES

from .scp_support import ADMIN, Scp

SLOW = 20  # connections; the server has 2 workers x 4 threads


@pytest.fixture(scope="module")
def scp():
    server = Scp()
    admin = server.login(*ADMIN)
    csrf = server.api(admin, "GET", "/api/me").json()["csrf"]
    made = server.api(admin, "POST", "/api/api-tokens", csrf, json={"name": "attacks", "days": 1})
    server.bearer = {"Authorization": f"Bearer {made.json()['token']}"}  # type: ignore[attr-defined]
    yield server
    server.stop()


def _connect(scp: Scp) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", scp.port), timeout=5)
    sock.setblocking(False)
    return sock


def test_slow_heads_and_bodies_neither_starve_the_server_nor_last(scp):
    """Half the connections send a header line every 2 s, half a body byte every 2 s: the pages still
    answer at once, and the server closes every one of them by its deadlines (not for being idle)."""
    heads = [_connect(scp) for _ in range(SLOW // 2)]
    bodies = [_connect(scp) for _ in range(SLOW // 2)]
    for sock in heads:
        sock.send(b"GET /healthz HTTP/1.1\r\nHost: scp\r\n")
    for sock in bodies:
        sock.send(b"POST /api/tokens HTTP/1.1\r\nHost: scp\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{")  # fmt: skip
    started = time.monotonic()
    closed: dict[socket.socket, float] = {}
    probes: list[float] = []
    last_drip = started
    deadline = started + front.LIMITS.header_timeout + front.LIMITS.body_timeout / 2 + 3
    while time.monotonic() < deadline and len(closed) < SLOW:
        if time.monotonic() - last_drip >= 2:
            last_drip = time.monotonic()
            for sock in heads + bodies:
                if sock not in closed:
                    try:
                        sock.send(b"X-Slow: 1\r\n" if sock in heads else b" ")
                    except OSError:
                        closed[sock] = time.monotonic() - started
        if len(probes) < 6 and time.monotonic() - started > 1:
            for path in ("/healthz", "/auth/login"):
                t = time.perf_counter()
                assert requests.get(scp.base + path, timeout=5).status_code == 200
                probes.append(time.perf_counter() - t)
        open_ = [s for s in heads + bodies if s not in closed]
        for sock in select.select(open_, [], [], 0.2)[0]:
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                closed[sock] = time.monotonic() - started
    for sock in heads + bodies:
        sock.close()
    assert len(probes) == 6 and max(probes) < 1.0, probes  # with gthread: every thread held, timeouts
    assert len(closed) == SLOW, f"{SLOW - len(closed)} slow connections still open"
    assert min(closed.values()) > 4, closed  # they were sending: closed by a deadline, not idleness
    assert max(closed.values()) < front.LIMITS.header_timeout + 3


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def _workers(scp: Scp) -> list[int]:
    pid = scp.proc.pid
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def test_chunked_bodies_are_bounded_and_still_work(scp):
    workers = _workers(scp)
    assert len(workers) == 2
    before = sum(_rss_kb(p) for p in workers)
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", scp.port), timeout=5)
        sock.sendall(b"POST /api/tokens HTTP/1.1\r\nHost: scp\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
        sent, refused, started = 0, None, time.monotonic()
        try:
            while sent < 16 << 20:
                sock.sendall(b"10000\r\n" + b" " * 0x10000 + b"\r\n")
                sent += 0x10000
        except OSError as exc:
            refused = exc
        try:
            answer = sock.recv(100)
        except OSError:
            answer = b""
        sock.close()
        # the server stopped reading past its limit, answered and closed at once (gthread + ombott read
        # it all, 16 MB, or stalled: a write timed out)
        assert isinstance(refused, BrokenPipeError | ConnectionResetError), (refused, sent)
        assert sent < 12 << 20 and time.monotonic() - started < 4, (sent, time.monotonic() - started)
        assert answer in (b"", b"HTTP/1.1 400 Bad Request\r\n\r\n"), answer
    grown_mb = (sum(_rss_kb(p) for p in workers) - before) / 1024
    assert grown_mb < 40, grown_mb  # was about 130 MB per request

    # a small chunked body is decoded by the server and read by the API like any other
    def chunks():
        yield b'{"channels": '
        yield b'["stats.AAPL"]}'

    r = requests.post(scp.base + "/api/tokens", data=chunks(), timeout=10,
                      headers={**scp.bearer, "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 200 and r.json()["channels"] == ["stats.AAPL"], r.text


DEEP = b"[" * 20_000 + b"]" * 20_000  # under the 64 KiB limit, far past any recursion limit
HUGE_INT = b'{"ttl_s": 1' + b"0" * 5000 + b"}"
NOT_OBJECTS = [b"[1]", b"1", b'"x"', b"null", b"true"]  # 422, as the API's validation answers them
INVALID = [DEEP, b'{"a": ' + DEEP + b"}", b'{"name": "x', HUGE_INT, b'{"ttl_s": NaN}', b"\xff\xfe{}",
           b'{"a":' * 40 + b"1" + b"}" * 40]  # 400  # fmt: skip


def _targets() -> list[tuple[str, str]]:
    out = [(r.method, r.path.replace("{id}", "1").replace("{sym}", "AAPL")) for r in ROUTES]
    return [(m, p) for m, p in out if m not in ("GET", "HEAD")] + [("POST", "/auth/login")]


def test_malformed_json_bodies_are_json_4xx_and_store_nothing(scp):
    service = Path(scp.data) / "apps" / ".service"
    stored = {p: p.stat().st_size for p in service.rglob("*") if p.is_file()}
    for who in ({}, scp.bearer):
        for method, path in _targets():
            for body, status in [(b, 422) for b in NOT_OBJECTS] + [(b, 400) for b in INVALID]:
                r = requests.request(method, scp.base + path, data=body, timeout=10,
                                     headers={**who, "Content-Type": "application/json"})  # fmt: skip
                what = (method, path, body[:20], r.status_code, r.text[:100])
                assert r.status_code == status, what  # py4web: 500 (HTML) or 400 (HTML)
                assert r.headers["Content-Type"].startswith("application/json"), what
                assert r.json()["error"]["code"], what
    after = {p: p.stat().st_size for p in service.rglob("*") if p.is_file()}
    grown = {str(p.name): after[p] - stored.get(p, 0) for p in after if after[p] != stored.get(p, 0)}
    assert not grown, grown  # py4web stored about 6 KB per 500 as an error ticket
    for path in [Path(scp.data) / "apps", *Path(scp.data).rglob("*")]:
        mode = os.stat(path, follow_symlinks=False).st_mode
        if not stat.S_ISLNK(mode):
            assert mode & 0o077 == 0, (str(path.relative_to(scp.data)), oct(mode))


@pytest.mark.parametrize("method", ["TRACE", "OPTIONS", "CONNECT", "PROPFIND"])
def test_methods_the_api_does_not_have_are_json_405(scp, method):
    for path in ("/api/me", "/api/users/1", "/healthz"):
        r = requests.request(method, scp.base + path, timeout=10)
        assert r.status_code == 405 and r.headers["Content-Type"] == "application/json", (path, r.text[:200])
        assert r.json()["error"]["code"] == "method_not_allowed"
        assert "GET" in r.headers["Allow"]


def test_head_of_the_forms_is_their_get_without_a_body(scp):
    for path in ("/auth/login", "/auth/register"):
        got, head = requests.get(scp.base + path, timeout=10), requests.head(scp.base + path, timeout=10)
        assert head.status_code == got.status_code and not head.content, (path, head.status_code)


def test_api_errors_from_the_framework_are_json(scp):
    # bodies py4web itself refuses before SCP's code: a form body too large for its parser
    form = {**scp.bearer, "Content-Type": "application/x-www-form-urlencoded"}
    r = requests.post(scp.base + "/api/tokens", data=b"a=" + b"b" * 300_000, timeout=10, headers=form)
    assert 400 <= r.status_code < 500 and r.headers["Content-Type"] == "application/json", r.text[:200]
    # a request head past the server's bound: refused or closed, never read on
    try:
        big = {"X-Big": "x" * front.MAX_HEAD_BYTES}
        status = requests.get(scp.base + "/api/me", headers=big, timeout=10).status_code
    except requests.ConnectionError:
        status = 0
    assert status in (0, 400, 431), status


def test_only_html_errors_are_rewritten():
    """The middleware alone: an HTML error under /api and any HTML 5xx become JSON; a JSON 503 (the
    API's ``unavailable``, ``/readyz``) and a page's HTML 404 pass as they are."""
    from scp.errors import guard

    def answer(status: str, kind: str, body: bytes):
        def inner(environ, start_response):
            start_response(status, [("Content-Type", kind)])
            return [body]

        return guard(inner)

    def call(app, path: str) -> tuple[str, dict[str, str], bytes]:
        got: dict[str, object] = {}
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path}
        body = b"".join(app(environ, lambda s, h, e=None: got.update(status=s, headers=dict(h))))
        return str(got["status"]), dict(got["headers"]), body  # type: ignore[arg-type]

    html, js = "text/html", "application/json"
    assert call(answer("503 Service Unavailable", js, b'{"ready":false}'), "/readyz")[2] == b'{"ready":false}'
    assert call(answer("404 Not Found", html, b"<p>"), "/nope")[2] == b"<p>"
    status, headers, body = call(answer("404 Not Found", html, b"<p>"), "/api/x")
    assert status.startswith("404") and headers["Content-Type"] == js and b'"not_found"' in body
    status, headers, body = call(answer("500 Internal Server Error", html, b"<p>"), "/auth/login")
    assert status.startswith("500") and headers["Content-Type"] == js and b'"internal"' in body
    status, _, body = call(answer("499 Client Closed", html, b"<p>"), "/api/x")
    assert status == "499 Error" and b'"error"' in body


def _sample(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert found, f"{name} missing from /metrics:\n{text[:2000]}"
    return float(found.group(1))


def test_metrics_sum_every_worker(scp):
    s = requests.Session()
    failed_before = _sample(s.get(scp.base + "/metrics", timeout=10).text,
                            'mdpipe_scp_logins_total{outcome="failed"}')  # fmt: skip
    for _ in range(3):
        r = scp.post_login(requests.Session(), "nobody@example.com", "wrong-password-123")
        assert r.status_code in (401, 429), r.status_code
    for _ in range(6):  # fresh connections: both workers
        bad = {"Authorization": "Bearer mdp_bad"}
        assert requests.get(scp.base + "/api/me", headers=bad, timeout=10).status_code == 401
    text = requests.get(scp.base + "/metrics", timeout=10).text
    logins = sum(_sample(text, f'mdpipe_scp_logins_total{{outcome="{o}"}}') for o in ("failed", "limited"))
    assert logins >= failed_before + 3, text[:2000]
    assert _sample(text, "mdpipe_scp_api_auth_failures_total") >= 6
    assert 'mdpipe_scp_api_requests_total{method="GET",route="/api/me",status="401"}' in text
