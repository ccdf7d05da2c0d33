"""A running ``mdpipe scp`` (gunicorn, two workers) on a PostgreSQL database of its own, and logged-in
HTTP sessions against it (``requests``: real cookies, real CSRF tokens)."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import psycopg2
import requests

from mdpipe.private_services import free_port

from .conftest import REDIS_URL

PG = "postgres://postgres@127.0.0.1:5432"
ADMIN = ("admin@example.com", "admin-password-123")
SESSION_SECRET = "session-secret-for-tests-" + secrets.token_hex(8)
TOKEN_SECRET = "wds-token-secret-for-tests-" + secrets.token_hex(8)
VENDOR_KEY = "vendor-key-" + secrets.token_hex(8)  # in SCP's environment: must never reach a response


def _admin_sql(sql: str) -> None:
    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


class Scp:
    def __init__(self, **env: str) -> None:
        self.port = free_port()
        self.dbname = f"mdpipe_scp_{os.getpid()}_{secrets.token_hex(3)}"
        _admin_sql(f"CREATE DATABASE {self.dbname}")
        self.data = tempfile.mkdtemp(prefix="mdpipe-scp-test-")
        self.env = {
            **os.environ,
            "SCP_PORT": str(self.port),
            "SCP_WORKERS": "2",
            "SCP_DATA_DIR": self.data,
            "PYDAL_URI": f"{PG}/{self.dbname}",
            "SCP_SESSION_SECRET": SESSION_SECRET,
            "WDS_TOKEN_SECRET": TOKEN_SECRET,
            "SCP_ADMIN_EMAIL": ADMIN[0],
            "SCP_ADMIN_PASSWORD": ADMIN[1],
            "REDIS_URL": REDIS_URL,
            "MDC_PREFIX": "scptest",
            "MDQ_EXCHANGE": "scptest",
            "MASSIVE_API_KEY": VENDOR_KEY,
            "LOG_FORMAT": "json",
            **env,
        }
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match="scp:login:*"):
            client.delete(key)
        client.close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mdpipe", "scp"], env=self.env, stderr=subprocess.PIPE, text=True
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        err = self.stop()
        raise AssertionError("mdpipe scp never became ready:\n" + err[-3000:])

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        _admin_sql(f"DROP DATABASE IF EXISTS {self.dbname} WITH (FORCE)")
        return err or ""

    def anonymous(self) -> requests.Session:
        return requests.Session()

    def login(self, email: str, password: str) -> requests.Session:
        """A browser-like session, logged in (AssertionError if the login fails)."""
        s = requests.Session()
        r = self.post_login(s, email, password)
        assert r.status_code == 303 and r.headers["Location"] == "/", (r.status_code, r.text[:300])
        return s

    def post_login(self, s: requests.Session, email: str, password: str) -> requests.Response:
        page = s.get(self.base + "/auth/login")
        csrf = re.search(r'name="_csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        return s.post(self.base + "/auth/login", data={"_csrf": csrf, "email": email, "password": password},
                      allow_redirects=False)  # fmt: skip

    def page_config(self, s: requests.Session) -> dict[str, Any]:
        import json

        page = s.get(self.base + "/")
        found = re.search(r'<script[^>]*id="mdpipe-config"[^>]*>(.*?)</script>', page.text, re.S)
        assert found, page.text[:500]
        return json.loads(found.group(1))

    def api(self, s: requests.Session, method: str, path: str, csrf: str | None = None, **kw: Any):
        headers = kw.pop("headers", {})
        if csrf:
            headers["X-CSRF-Token"] = csrf
        return s.request(method, self.base + path, headers=headers, timeout=10, **kw)
