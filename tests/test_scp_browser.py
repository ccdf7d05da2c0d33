"""End to end in a real browser: Debian's Chromium, driven by Playwright, on the dashboard SCP serves,
fed live through the whole pipeline (emulator -> MDL -> MDQ -> MDP -> MDC -> WDS -> the page).

Every component is its own ``mdpipe`` process on ports, an MDQ exchange and an MDC prefix of this
test's own. The dashboard's screenshots (laptop and phone) are kept in ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Browser, Page, expect, sync_playwright

from bench.procs import Child, child_env
from mdc.names import Names
from mdpipe.private_services import free_port
from mdpipe.settings import MdqSettings

from .conftest import REDIS_URL, delete_mdq
from .scp_support import ADMIN, TOKEN_SECRET, Scp

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LIVE_S = 30.0  # how long the page has to show each thing
# Previous closes for a few symbols, so the gappers board has rows (nothing else provides them here).
PREV_CLOSE = {"SPY": 550.0, "QQQ": 470.0, "NVDA": 125.0, "TSLA": 250.0, "AAPL": 185.0, "MSFT": 425.0}


class Pipeline:
    """The emulator, MDL, MDP, WDS and SCP, each an ``mdpipe`` process; stopped whatever happens."""

    def __init__(self) -> None:
        tag = secrets.token_hex(4)
        self.prefix, self.exchange = f"e2e{tag}", f"test-e2e-{tag}"
        self.children: list[Child] = []
        self.scp: Scp | None = None
        key = "sim-key-" + tag
        sim_port, sim_http, wds_port = free_port(), free_port(), free_port()
        common = {"REDIS_URL": REDIS_URL, "MDC_PREFIX": self.prefix, "MDQ_EXCHANGE": self.exchange}
        store = redis.Redis.from_url(REDIS_URL)
        for name in store.scan_iter(match="mdl:stocks:*"):  # another test's desired subscriptions
            store.delete(name)
        store.hset(Names(self.prefix).prev_close(), mapping=PREV_CLOSE)
        store.close()
        try:
            self._start("sim", sim_http, SIM_PORT=str(sim_port), SIM_HTTP_PORT=str(sim_http), SIM_API_KEY=key,
                        SIM_SYMBOLS="300", SIM_RATE="2000")  # fmt: skip
            mdl_http, mdp_http, wds_http = free_port(), free_port(), free_port()
            self._start("mdl", mdl_http, MASSIVE_API_KEY=key, MASSIVE_FEED=f"127.0.0.1:{sim_port}",
                        MDL_HTTP_PORT=str(mdl_http), **common)  # fmt: skip
            self._start(
                "mdp",
                mdp_http,
                MDP_HTTP_PORT=str(mdp_http),
                MDP_LEADERS_N="10",
                MDP_ALERT_WARMUP_S="3",
                **common,
            )
            self.scp = Scp(SCP_WDS_URL=f"ws://127.0.0.1:{wds_port}/ws", **common)
            origin = self.scp.base  # the page's WebSocket comes from SCP's origin
            self._start("wds", wds_http, WDS_PORT=str(wds_port), WDS_HTTP_PORT=str(wds_http),
                        WDS_TOKEN_SECRET=TOKEN_SECRET, WDS_ALLOWED_ORIGINS=origin, **common)  # fmt: skip
        except BaseException:
            self.stop()
            raise

    def _start(self, component: str, http_port: int, **env: str) -> None:
        child = Child(
            component, [sys.executable, "-m", "mdpipe", component], child_env(env), http_port=http_port
        )
        self.children.append(child)
        child.start().wait_ready(30)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.close()
        if self.scp is not None:
            self.scp.stop()
        asyncio.run(delete_mdq(MdqSettings(mdq_exchange=self.exchange)))
        store = redis.Redis.from_url(REDIS_URL)
        for name in store.scan_iter(match=f"{self.prefix}:*"):
            store.delete(name)
        store.close()


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Pipeline]:
    running = Pipeline()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Chromium is missing: `make test` installs it (scripts/ensure-browser)"
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


def log_in(page: Page, base: str) -> None:
    page.goto(base + "/")
    expect(page).to_have_url(base + "/auth/login")  # logged out: the dashboard sends you to log in
    page.fill("#email", ADMIN[0])
    page.fill("#password", ADMIN[1])
    page.click("button[type=submit]")
    expect(page).to_have_url(base + "/")


def updates(page: Page) -> int:
    return page.evaluate("window.mdpipe.updates")


def changes(page: Page, read: str, within: float = LIVE_S) -> None:
    """Wait until the page value ``read`` (a JavaScript expression) is set and then changes."""
    first = page.wait_for_function(f"() => {read} || null", timeout=within * 1000).json_value()
    page.wait_for_function(f"v => ({read} || null) !== v", arg=first, timeout=within * 1000)


def test_dashboard_live_through_the_whole_pipeline_then_logout(pipeline: Pipeline, browser: Browser):
    assert pipeline.scp is not None
    base = pipeline.scp.base
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    log_in(page, base)

    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "connected", timeout=15_000)
    for board in ("leaders-gainers", "leaders-losers", "leaders-volume", "leaders-gappers", "alerts"):
        rows = page.locator(f'[data-testid="{board}"] [data-sym]')  # alerts: new highs and lows
        expect(rows.first).to_be_visible(timeout=LIVE_S * 1000)
    # live: the boards are republished every second as prices move, the chart's forming bar moves
    changes(page, """document.querySelector('[data-testid="leaders-volume"] tbody')?.innerText""")
    changes(page, """document.querySelector('[data-testid="chart"]')?.dataset.last""")
    chart = page.get_by_test_id("chart")
    assert int(chart.get_attribute("data-bars") or 0) > 0
    expect(chart).to_have_attribute("data-stale", "false")
    watch = page.locator('[data-testid="watchlist"] [data-sym="AAPL"]')
    expect(watch).to_contain_text("AAPL")
    before = updates(page)
    page.wait_for_function("n => window.mdpipe.updates > n + 20", arg=before, timeout=LIVE_S * 1000)
    assert page.evaluate("window.mdpipe.gaps") == 0  # every update in seq order, none lost
    # the status panel lists the running components from their heartbeats
    status = page.get_by_test_id("status")
    for component in ("mdl", "mdp", "wds"):
        expect(status.locator(".status-components tbody")).to_contain_text(component, timeout=LIVE_S * 1000)
    html = page.content()
    assert pipeline.scp.env["MASSIVE_API_KEY"] not in html and TOKEN_SECRET not in html
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    # a phone: the same page in one column, nothing wider than the screen
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                storage_state=context.storage_state())  # fmt: skip
    small = phone.new_page()
    small.goto(base + "/")
    expect(small.get_by_test_id("connection")).to_have_attribute("data-state", "connected", timeout=15_000)
    expect(small.locator('[data-testid="leaders-volume"] [data-sym]').first).to_be_attached(
        timeout=LIVE_S * 1000
    )
    expect(small.get_by_test_id("leaders-volume")).to_have_attribute("data-stale", "false")
    assert small.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    small.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    phone.close()

    # log out: the dashboard and the API are gone for this browser
    page.click("button.logout")  # a form POST with the page's CSRF token
    expect(page).to_have_url(base + "/auth/login")
    page.goto(base + "/")
    expect(page).to_have_url(base + "/auth/login")
    assert page.request.get(base + "/api/me").status == 401
    assert page.request.get(base + "/api/status").status == 401
    context.close()
    assert not problems, problems


def test_wrong_password_shows_an_error_and_no_dashboard(pipeline: Pipeline, browser: Browser):
    assert pipeline.scp is not None
    base = pipeline.scp.base
    context = browser.new_context()
    page = context.new_page()
    page.goto(base + "/auth/login")
    page.fill("#email", ADMIN[0])
    page.fill("#password", "not-the-password")
    started = time.monotonic()
    page.click("button[type=submit]")
    expect(page.locator("form[data-testid=login-form]")).to_be_visible()
    expect(page.get_by_role("alert")).to_be_visible()
    assert time.monotonic() - started < 10
    page.goto(base + "/")
    expect(page).to_have_url(base + "/auth/login")
    context.close()
