"""`mdpipe wds` as a process, fuzzed with malformed frames over real WebSockets: every frame gets an
``error`` reply or a clean close, and the server and its other clients are unharmed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from mdpipe.private_services import free_port
from mdpipe.settings import WdsSettings
from wds.tokens import mint

from .conftest import REDIS_URL, http
from .mdp_support import mdc_settings
from .strategies import JSON

SECRET = "a-test-secret-of-at-least-thirty-two-characters"
CLOSES = {1000, 1009, 4001}  # a clean close: normal, frame above the hard limit, refused auth


class Wds:
    def __init__(self) -> None:
        self.port, self.http_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "WDS_PORT": str(self.port),
            "WDS_HTTP_PORT": str(self.http_port),
            "WDS_TOKEN_SECRET": SECRET,
            "REDIS_URL": REDIS_URL,
            "MDC_PREFIX": mdc_settings().mdc_prefix,
            "LOG_FORMAT": "json",
            "WDS_ACTIONS_PER_S": "10000",
        }
        self.settings = WdsSettings(wds_token_secret=SECRET)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mdpipe", "wds"], env=self.env, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if asyncio.run(http(self.http_port, "GET", "/readyz"))[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError("mdpipe wds never became ready")

    def token(self, subject: str = "fuzz") -> str:
        return mint(self.settings, subject, ["*"], ttl_s=3600)

    def connect(self, token: str | None = None) -> ClientConnection:
        query = f"?token={token}" if token else ""
        return connect(f"ws://127.0.0.1:{self.port}/ws{query}", open_timeout=5, close_timeout=2)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=20)
        return err


@pytest.fixture(scope="module")
def wds() -> Iterator[Wds]:
    server = Wds()
    yield server
    server.stop()


def events(ws: ClientConnection, timeout: float = 2.0) -> list[dict]:
    return orjson.loads(ws.recv(timeout=timeout))


def answered_or_closed(ws: ClientConnection, frame: str | bytes) -> None:
    """Send ``frame``; the server answers with events (an error for a bad frame) or closes cleanly."""
    replies: list[dict] = []
    closed: ConnectionClosed | None = None
    try:
        ws.send(frame)
        ws.send('{"action":"ping","id":"after"}')
        while not any(e.get("id") == "after" for e in replies):
            replies += events(ws)
    except ConnectionClosed as exc:
        closed = exc
    if closed is not None:
        assert closed.rcvd is not None and closed.rcvd.code in CLOSES, closed
    else:
        kinds = {"error", "subscribed", "unsubscribed", "snapshot", "pong", "authenticated"}
        assert all(e["event"] in kinds for e in replies)


FRAMES = st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=2000),
    JSON.map(lambda v: orjson.dumps(v).decode()),
    st.fixed_dictionaries(
        {"action": st.sampled_from(["subscribe", "unsubscribe", "ping", "auth", "nope"])},
        optional={"channels": JSON, "max_hz": JSON, "id": JSON, "token": JSON},
    ).map(lambda v: orjson.dumps(v).decode()),
    st.integers(16_000, 40_000).map(lambda n: '{"action":"ping","pad":"' + "x" * n + '"}'),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(FRAMES, min_size=1, max_size=5))
def test_fuzzed_frames_get_an_error_or_a_clean_close_and_harm_nobody(wds, frames):
    with wds.connect(wds.token()) as ws:
        assert events(ws)[0]["event"] == "authenticated"
        for frame in frames:
            answered_or_closed(ws, frame)
    with wds.connect(wds.token("witness")) as witness:  # the server still serves others
        assert events(witness)[0]["event"] == "authenticated"
        witness.send('{"action":"ping","id":1}')
        pong = events(witness)[0]
        assert (pong["event"], pong["id"]) == ("pong", 1)


def test_fuzzed_first_frames_before_auth(wds):
    for frame in (b"\x00\x01", "{", '{"action":"subscribe","channels":["stats.A"]}', '{"action":"auth"}',
                  '{"action":"auth","token":"not.a.jwt"}', "x" * 20_000):  # fmt: skip
        with wds.connect() as ws:
            ws.send(frame)
            error = events(ws)[0]
            assert error["event"] == "error" and error["code"] in {
                "bad_json", "bad_request", "auth_required", "auth_failed", "frame_too_large"}  # fmt: skip
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=2)
            assert info.value.rcvd is not None and info.value.rcvd.code == 4001


def test_a_frame_above_the_hard_limit_closes_1009(wds):
    with wds.connect(wds.token()) as ws:
        events(ws)
        ws.send("x" * (1_048_576 + 1))
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


def test_the_process_logs_json_without_tokens_and_stops_on_sigterm():
    server = Wds()
    tok = server.token("logged")
    with server.connect(tok) as ws:
        events(ws)
    err = server.stop()
    assert server.proc.returncode == 0
    lines = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(line.get("msg") == "client connected" and line.get("sub") == "logged" for line in lines), err[
        -2000:
    ]
    assert tok not in err and SECRET not in err
