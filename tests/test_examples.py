"""The example signal worker (``examples/signal_worker.py``): its computation directly, and the whole
path end to end: the emulator's market through MDL, MDQ and MDP into minute bars, the worker's
breakouts published under its own Redis user, and a real WDS client receiving them (the browser's
card is checked in ``test_scp_browser``)."""

from __future__ import annotations

import asyncio
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
import requests
from playwright.sync_api import Browser, expect
from websockets.asyncio.client import connect

from bench.procs import Child, child_env
from mdc import acl
from mdc.names import Names
from mdpipe.private_services import free_port
from mdpipe.settings import WdsSettings
from wds.tokens import mint

from .conftest import REDIS_URL
from .scp_support import TOKEN_SECRET, Scp
from .test_scp_browser import Stack, browser, follow_signals, log_in

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from signal_worker import Breakouts  # noqa: E402


def bar(t: int, h: float, low: float, c: float) -> dict:
    return {"t": t, "e": t + 60_000, "o": c, "h": h, "l": low, "c": c, "v": 100, "vw": c}


def test_a_close_beyond_the_previous_bars_range_is_a_breakout():
    b = Breakouts(bars=3)
    assert [b.bar("AAPL", bar(i * 60_000, 10 + i % 2, 9, 9.5)) for i in range(3)] == [None] * 3
    up = b.bar("AAPL", bar(180_000, 12, 10, 11.5))
    assert up == {"sym": "AAPL", "side": "up", "close": 11.5, "level": 11.0, "bars": 3, "t": 180_000}
    assert b.bar("AAPL", bar(180_000, 11, 10, 10.5)) is None  # corrected: judged again, inside now
    down = b.bar("AAPL", bar(240_000, 11, 8, 8.5))
    assert down is not None and down["side"] == "down" and down["level"] == 9.0
    assert b.bar("AAPL", bar(0, 1, 1, 1)) is None  # out of order: ignored
    assert b.bar("MSFT", {"t": "x"}) is None and b.bar("MSFT", {}) is None  # malformed: ignored


def test_memory_is_bounded_by_symbols_and_bars():
    b = Breakouts(bars=2, max_symbols=10)
    for i in range(100):
        for k in range(5):
            b.bar(f"S{i}", bar(k * 60_000, 1, 1, 1))
    assert len(b) == 10 and all(len(w) <= 3 for w in b._seen.values())
    with pytest.raises(ValueError, match="2-100"):
        Breakouts(bars=1)


class Market(Stack):
    """The emulator at 60 market seconds per second (a minute bar every second), MDL, MDP, WDS and the
    worker publishing as its own Redis user."""

    def __init__(self) -> None:
        tag = secrets.token_hex(4)
        super().__init__(f"ex{tag}", f"test-ex-{tag}")
        self.password = secrets.token_urlsafe(18)
        self.admin = redis.Redis.from_url(REDIS_URL)
        for name in self.admin.scan_iter(match="mdl:stocks:*"):  # another test's desired subscriptions
            self.admin.delete(name)
        self.admin.execute_command(
            "ACL", "SETUSER", *acl.setuser_args("breakouts", self.password, self.prefix)
        )
        key = "sim-key-" + tag
        sim_port, sim_http = free_port(), free_port()
        self.wds_port = free_port()
        common = {"REDIS_URL": REDIS_URL, "MDC_PREFIX": self.prefix, "MDQ_EXCHANGE": self.exchange}
        try:
            self._start("sim", sim_http, SIM_PORT=str(sim_port), SIM_HTTP_PORT=str(sim_http), SIM_API_KEY=key,
                        SIM_SYMBOLS="50", SIM_RATE="500", SIM_SPEED="60")  # fmt: skip
            mdl_http = free_port()
            self._start("mdl", mdl_http, MASSIVE_API_KEY=key, MASSIVE_FEED=f"127.0.0.1:{sim_port}",
                        MDL_HTTP_PORT=str(mdl_http), **common)  # fmt: skip
            mdp_http = free_port()
            self._start("mdp", mdp_http, MDP_HTTP_PORT=str(mdp_http), MDP_HYDRATE="false", **common)
            self.scp = Scp(SCP_WDS_URL=f"ws://127.0.0.1:{self.wds_port}/ws", **common)
            wds_http = free_port()
            self._start("wds", wds_http, WDS_PORT=str(self.wds_port), WDS_HTTP_PORT=str(wds_http),
                        WDS_TOKEN_SECRET=TOKEN_SECRET, WDS_ALLOWED_ORIGINS=self.scp.base,
                        **common)  # fmt: skip
            signals_url = REDIS_URL.replace("redis://", f"redis://{acl.user('breakouts')}:{self.password}@")
            self.worker_http = free_port()
            worker = Child(
                "signals",
                [sys.executable, str(ROOT / "examples" / "signal_worker.py")],
                child_env(
                    {
                        "SIGNALS_REDIS_URL": signals_url,
                        "REDIS_URL": signals_url,
                        "BREAKOUT_BARS": "2",
                        "SIGNALS_HTTP_PORT": str(self.worker_http),
                        **common,
                    }
                ),
                http_port=self.worker_http,
            )
            self.children.append(worker)
            worker.start().wait_ready(30)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        super().stop()
        self.admin.execute_command("ACL", "DELUSER", acl.user("breakouts"))
        self.admin.close()


@pytest.fixture(scope="module")
def market() -> Iterator[Market]:
    started = Market()
    try:
        yield started
    finally:
        started.stop()


async def breakouts_through_wds(port: int, token: str, want: int) -> tuple[dict, list[dict]]:
    async with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
        await ws.send(orjson.dumps({"action": "auth", "token": token}))
        await ws.send(orjson.dumps({"action": "subscribe", "channels": ["signals.breakouts"]}))
        snapshot, live = None, []
        async with asyncio.timeout(60):
            while len(live) < want:
                for event in orjson.loads(await ws.recv()):
                    assert event["event"] != "error", event
                    if event["event"] == "snapshot":
                        snapshot = event
                    elif event["event"] == "update":
                        live.append(event)
        assert snapshot is not None
        return snapshot, live


def test_breakouts_reach_a_wds_client_published_under_the_workers_own_user(market: Market):
    token = mint(WdsSettings(wds_token_secret=TOKEN_SECRET), "bot", ["signals.breakouts"])
    snapshot, live = asyncio.run(breakouts_through_wds(market.wds_port, token, want=3))
    seqs = [u["seq"] for u in live]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] > snapshot["seq"]
    for update in live:
        data = update["data"]
        assert update["type"] == "breakout" and update["channel"] == "signals.breakouts"
        assert data["side"] in ("up", "down") and data["bars"] == 2
        assert (data["close"] > data["level"]) if data["side"] == "up" else (data["close"] < data["level"])
    metrics = requests.get(f"http://127.0.0.1:{market.worker_http}/metrics", timeout=5).text
    published = re.search(r'^mdpipe_signals_published_total\{signal="breakouts"\} (\S+)$', metrics, re.M)
    assert published is not None and float(published.group(1)) >= 3
    ready = requests.get(f"http://127.0.0.1:{market.worker_http}/readyz", timeout=5).json()
    assert ready["ready"] is True and ready["subscriber"] is True and ready["dropped"] == 0
    names = Names(market.prefix)
    beats = [k.decode() for k in market.admin.scan_iter(match=names.heartbeat("signals.breakouts", "*"))]
    assert beats, "the worker's heartbeat"
    # its credential publishes nothing else: what MDP publishes stays MDP's
    service = redis.Redis.from_url(
        REDIS_URL.replace("redis://", f"redis://{acl.user('breakouts')}:{market.password}@")
    )
    with pytest.raises(redis.exceptions.NoPermissionError):
        service.publish(names.redis_channel("trades.AAPL"), b"{}")
    service.close()


def test_breakouts_show_in_the_dashboards_signals_card(market: Market, browser: Browser):
    assert market.scp is not None
    page = browser.new_page()
    try:
        log_in(page, market.scp.base)
        # the page's script is running and its WebSocket is up before it is asked anything
        expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "connected", timeout=15_000)
        follow_signals(page, {"signals.breakouts"})
        page.wait_for_function(
            "() => window.mdpipe.signals.filter((s) => s.channel === 'signals.breakouts').length >= 2",
            timeout=60_000,
        )
        row = page.get_by_test_id("signals").locator("tbody tr", has_text="signals.breakouts").first
        expect(row.locator(".kind")).to_have_text("breakout")
        expect(row.locator(".sig-data")).to_contain_text("side=")
    finally:
        page.close()


__all__ = ["browser"]  # the browser fixture of test_scp_browser, shared
