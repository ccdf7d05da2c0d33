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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import orjson
import pytest
import redis
from playwright.sync_api import Browser, Page, expect, sync_playwright

from bench.procs import Child, child_env
from mdc.envelope import encode
from mdc.names import Names
from mdc.publisher import BlockingPublisher
from mdc.tradingday import TradingDay
from mdpipe.private_services import free_port
from mdpipe.settings import MdqSettings

from .conftest import REDIS_URL, delete_mdq
from .scp_support import ADMIN, TOKEN_SECRET, Scp

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LIVE_S = 30.0  # how long the page has to show each thing
# Previous closes for a few symbols, so the gappers board has rows (nothing else provides them here).


class Stack:
    """``mdpipe`` processes and SCP on an MDC prefix (and an MDQ exchange) of the test's own; ``stop()``
    stops them and deletes what they left, whatever happened."""

    def __init__(self, prefix: str, exchange: str | None = None) -> None:
        self.prefix, self.exchange = prefix, exchange
        self.children: list[Child] = []
        self.scp: Scp | None = None

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
        if self.exchange is not None:
            asyncio.run(delete_mdq(MdqSettings(mdq_exchange=self.exchange)))
        store = redis.Redis.from_url(REDIS_URL)
        for name in store.scan_iter(match=f"{self.prefix}:*"):
            store.delete(name)
        store.close()


S = TypeVar("S", bound=Stack)


def running(stack: Callable[[], S]) -> Iterator[S]:
    started = stack()
    try:
        yield started
    finally:
        started.stop()


class Pipeline(Stack):
    """The emulator, MDL, MDP, WDS and SCP, each an ``mdpipe`` process."""

    def __init__(self) -> None:
        tag = secrets.token_hex(4)
        super().__init__(f"e2e{tag}", f"test-e2e-{tag}")
        key = "sim-key-" + tag
        sim_port, sim_http, wds_port = free_port(), free_port(), free_port()
        common = {"REDIS_URL": REDIS_URL, "MDC_PREFIX": self.prefix, "MDQ_EXCHANGE": self.exchange}
        store = redis.Redis.from_url(REDIS_URL)
        for name in store.scan_iter(match="mdl:stocks:*"):  # another test's desired subscriptions
            store.delete(name)
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
                # the processors hydrate from the emulator's REST API and serve the chart's history
                MASSIVE_API_KEY=key,
                MASSIVE_REST_URL=f"http://127.0.0.1:{sim_http}",
                **common,
            )
            self.scp = Scp(SCP_WDS_URL=f"ws://127.0.0.1:{wds_port}/ws", **common)
            origin = self.scp.base  # the page's WebSocket comes from SCP's origin
            # WDS asks the processors for the chart's history (it has no vendor key)
            self._start("wds", wds_http, WDS_PORT=str(wds_port), WDS_HTTP_PORT=str(wds_http),
                        WDS_TOKEN_SECRET=TOKEN_SECRET, WDS_ALLOWED_ORIGINS=origin, **common)  # fmt: skip
        except BaseException:
            self.stop()
            raise


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Pipeline]:
    yield from running(Pipeline)


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
    # it opened with the vendor's history: the previous trading day's session at least
    assert int(chart.get_attribute("data-bars") or 0) >= 390
    expect(chart).to_have_attribute("data-stale", "false")
    watch = page.locator('[data-testid="watchlist"] [data-sym="AAPL"]')
    expect(watch).to_contain_text("AAPL")
    # the previous closes came from the processors' hydration (nothing seeded them): changes are against
    # them, and the gappers board above ranked by them
    expect(watch.locator('[title^="vs prev close"]').first).to_be_visible(timeout=LIVE_S * 1000)
    before = updates(page)
    page.wait_for_function("n => window.mdpipe.updates > n + 20", arg=before, timeout=LIVE_S * 1000)
    assert page.evaluate("window.mdpipe.gaps") == 0  # every update in seq order, none lost
    # the status panel lists the running components from their heartbeats
    status = page.get_by_test_id("status")
    for component in ("mdl", "mdp", "wds"):
        expect(status.locator(".status-components tbody")).to_contain_text(component, timeout=LIVE_S * 1000)
    # WDS's REST side (the chart history the processors serve it) by its status
    wds_row = status.locator(".status-components tbody tr", has_text="wds")
    expect(wds_row.locator("td.figures")).to_contain_text("rest ok")
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


# -- a dashboard on seeded state: what it shows is known to the digit ------------------------------------

DAY, PREV_DAY = "2026-11-20", "2026-11-19"
MIN = 60_000


def _ny(day: str, hh: int, mm: int) -> int:
    return TradingDay().bounds(day)[0] + ((hh - 4) * 60 + mm) * MIN


def _bar(t: int, c: float) -> bytes:
    return orjson.dumps(
        {"t": t, "e": t + MIN, "o": c, "h": c + 0.2, "l": c - 0.2, "c": c, "v": 1000, "vw": c}
    )


STATS = {
    # a previous close: the change is against it (190 - 185), not against the open (190 - 188)
    "AAPL": {"sym": "AAPL", "day": DAY, "t": _ny(DAY, 10, 30), "last": 190.0, "open": 188.0, "high": 191.0,
             "low": 187.5, "volume": 1_200_000, "trades": 9000, "vwap": 189.4, "prev_close": 185.0,
             "change": 5.0, "change_pct": 2.7027, "gap_pct": 1.6216, "change_from": "prev_close"},
    # none known: against the open, and the page says so
    "NEWCO": {"sym": "NEWCO", "day": DAY, "t": _ny(DAY, 10, 30), "last": 11.0, "open": 10.0, "high": 11.2,
              "low": 9.9, "volume": 50_000, "trades": 300, "vwap": 10.6, "prev_close": None, "change": 1.0,
              "change_pct": 10.0, "change_from": "open"},
}  # fmt: skip
GAPPERS = {"board": "gappers", "day": DAY, "rows": [
    {"rank": 1, "sym": "GAPUP", "last": 12.4, "change": 2.4, "change_pct": 24.0, "volume": 900_000,
     "gap_pct": 15.0, "open": 11.5, "prev_close": 10.0},
    {"rank": 2, "sym": "AAPL", "last": 190.0, "change": 5.0, "change_pct": 2.7027, "volume": 1_200_000,
     "gap_pct": 1.6216, "open": 188.0, "prev_close": 185.0},
]}  # fmt: skip
# the chart history: the previous day's regular session and today's first hour; the live bars overlap
# its last five minutes and go five minutes further
HISTORY = [(_ny(PREV_DAY, 9, 30) + i * MIN, 180.0) for i in range(390)]
HISTORY += [(_ny(DAY, 9, 30) + i * MIN, 188.0) for i in range(60)]
LIVE = [(_ny(DAY, 9, 30) + i * MIN, 189.0) for i in range(55, 65)]
MERGED = 390 + 65


class Dashboard(Stack):
    """WDS and SCP alone, over market state seeded into Redis."""

    def __init__(self) -> None:
        super().__init__(f"dash{secrets.token_hex(4)}")
        self.names = Names(self.prefix)
        store = redis.Redis.from_url(REDIS_URL)
        n = self.names
        for sym, doc in STATS.items():
            store.set(n.stats(sym), orjson.dumps(doc))
        store.hset(n.prev_close(), mapping={"AAPL": 185.0, "GAPUP": 10.0})
        store.set(n.board("gappers"), orjson.dumps(GAPPERS))
        store.zadd(n.history("AAPL"), {_bar(t, c): t for t, c in HISTORY})
        store.zadd(n.bars_minute("AAPL"), {_bar(t, c): t for t, c in LIVE})
        for channel, seq in (("bars.AAPL", 10), ("leaders.gappers", 3), ("stats.AAPL", 5)):
            store.hset(n.seq_key(channel), channel, seq)
        store.close()
        wds_port, wds_http = free_port(), free_port()
        try:
            self.scp = Scp(SCP_WDS_URL=f"ws://127.0.0.1:{wds_port}/ws", MDC_PREFIX=n.prefix,
                           SCP_WATCHLIST="AAPL,NEWCO")  # fmt: skip
            self._start("wds", wds_http, REDIS_URL=REDIS_URL, MDC_PREFIX=n.prefix, WDS_PORT=str(wds_port),
                        WDS_HTTP_PORT=str(wds_http), WDS_TOKEN_SECRET=TOKEN_SECRET,
                        WDS_ALLOWED_ORIGINS=self.scp.base)  # fmt: skip
        except BaseException:
            self.stop()
            raise

    def publish_bar(self, t: int, c: float) -> None:
        """A new minute bar of AAPL, as the processors write and publish one."""
        store = redis.Redis.from_url(REDIS_URL)
        n = self.names
        seq = store.hincrby(n.seq_key("bars.AAPL"), "bars.AAPL", 1)
        store.zadd(n.bars_minute("AAPL"), {_bar(t, c): t})
        update = encode(
            "bar.1m", "bars.AAPL", seq, t, int(time.time() * 1000), "test", orjson.loads(_bar(t, c))
        )
        store.publish(n.redis_channel("bars.AAPL"), update)
        store.close()


@pytest.fixture(scope="module")
def dashboard() -> Iterator[Dashboard]:
    yield from running(Dashboard)


def test_change_against_the_previous_close_the_gappers_and_a_chart_that_opens_with_its_history(
    dashboard: Dashboard, browser: Browser
):
    assert dashboard.scp is not None
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    log_in(page, dashboard.scp.base)
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "connected", timeout=15_000)

    # the watchlist: change and change % against the previous close, or starred against the open
    aapl = page.locator('[data-testid="watchlist"] tr[data-sym="AAPL"]')
    expect(aapl.locator("td.chg")).to_have_text("+5.00", timeout=LIVE_S * 1000)
    expect(aapl.locator("td.pct")).to_have_text("+2.70%")
    expect(aapl.locator("td.pct")).to_have_attribute("title", "vs prev close 185.00")
    newco = page.locator('[data-testid="watchlist"] tr[data-sym="NEWCO"]')
    expect(newco.locator("td.pct")).to_have_text("+10.00%*")
    expect(newco.locator("td.pct")).to_have_attribute("title", "vs open 10.00")
    # the chart's header says what its change is against
    chart = page.get_by_test_id("chart")
    expect(chart.locator(".chart-chg")).to_have_text("+5.00 (+2.70%)")
    expect(chart.locator(".chart-basis")).to_have_text("vs prev close")

    # the gappers board, in the processors' order, with the gap from the previous close
    rows = page.locator('[data-testid="leaders-gappers"] tbody tr')
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_have_attribute("data-sym", "GAPUP")
    expect(rows.nth(0).locator("td.extra")).to_have_text("+15.00%")
    expect(rows.nth(1).locator("td.extra")).to_have_text("+1.62%")
    expect(rows.nth(1).locator("td.pct")).to_have_attribute("title", "vs prev close 185.00")

    # the chart opens with the previous day and today (history and live bars merged), then goes on live
    expect(chart).to_have_attribute("data-bars", str(MERGED))
    newest = LIVE[-1][0]
    assert (chart.get_attribute("data-last") or "").startswith(f"{newest} 189 ")
    dashboard.publish_bar(newest + MIN, 189.5)
    expect(chart).to_have_attribute("data-bars", str(MERGED + 1))
    assert (chart.get_attribute("data-last") or "").startswith(f"{newest + MIN} 189.5 ")
    assert page.evaluate("window.mdpipe.gaps") == 0
    page.screenshot(path=str(ARTIFACTS / "dashboard-history.png"))
    context.close()
    assert not problems, problems


XSS = "<img src=x onerror=window.pwned=1>"


def follow_signals(page: Page, channels: set[str]) -> None:
    """Ask the page to read GET /api/signals again until it follows ``channels`` (SCP caches the list of
    channels for 5 s, and the page itself reads it every 30 s)."""
    deadline = time.monotonic() + 15
    while True:
        got = page.evaluate(
            "async () => { await window.mdpipe.refreshSignals(); return window.mdpipe.signalChannels }"
        )
        if channels <= set(got):
            return
        assert time.monotonic() < deadline, got
        time.sleep(0.5)


def shown_signals(page: Page, name: str) -> list[dict]:
    return page.evaluate("n => window.mdpipe.signals.filter((s) => s.channel.split('.')[1] === n)", name)


def test_signals_from_the_snapshot_then_live_as_text_only(pipeline: Pipeline, browser: Browser):
    assert pipeline.scp is not None
    base = pipeline.scp.base
    name, t0 = "e2esig", int(time.time() * 1000) - 60_000
    mine = {f"signals.{name}", f"signals.{name}.AAPL", f"signals.{name}.GONE"}
    with BlockingPublisher(REDIS_URL, name, prefix=pipeline.prefix, heartbeat=False) as pub:
        # before the page opens: they come in the channels' snapshots
        cross = {"sym": "AAPL", "side": "up", "close": 190.5, "fast": 1, "slow": 2, "t": 3}
        pub.publish(cross, suffix="AAPL", type="cross", ts=t0)
        pub.publish({"sym": "XSS", "html": XSS}, ts=t0 + 1000)
        pub.publish({"html": XSS, "long": "x" * 300}, type="note", ts=t0 + 2000)
        pub.publish({"sym": "GONE"}, suffix="GONE", ts=t0 + 3000)
        pub.flush(5)

        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        log_in(page, base)
        expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "connected", timeout=15_000)
        follow_signals(page, mine)
        card = page.get_by_test_id("signals")
        page.wait_for_function("n => window.mdpipe.signals.filter((s) => s.channel.includes(n)).length === 4",
                               arg=name, timeout=LIVE_S * 1000)  # fmt: skip
        shown = shown_signals(page, name)
        assert [(s["channel"], s["seq"], s["type"], s["ts"]) for s in shown] == [
            (f"signals.{name}.GONE", 1, "signal", t0 + 3000),
            (f"signals.{name}", 2, "note", t0 + 2000),
            (f"signals.{name}", 1, "signal", t0 + 1000),
            (f"signals.{name}.AAPL", 1, "cross", t0),
        ]
        assert shown[1]["data"] == {"html": XSS, "long": "x" * 300}
        # the summary: the symbol and four other fields; else the JSON cut at 120 characters
        aapl = card.locator("tbody tr", has_text=f"signals.{name}.AAPL")
        expect(aapl.locator(".sig-data")).to_have_text("AAPL side=up close=190.5 fast=1 slow=2")
        expect(aapl.locator(".kind")).to_have_text("cross")
        expect(card.locator("tbody tr", has_text="XSS").locator(".sig-data")).to_have_text(f"XSS html={XSS}")
        note = card.locator("tbody tr", has_text="note").locator(".sig-data").text_content() or ""
        assert note.startswith('{"html":"<img src=x') and note.endswith("…") and len(note) == 120
        expect(card).to_have_attribute("data-stale", "false")

        # live: newer signals go on top, each once
        pub.publish(
            {"sym": "AAPL", "side": "down", "close": 189.0}, suffix="AAPL", type="cross", ts=t0 + 5000
        )
        pub.publish({"sym": "XSS", "again": XSS}, ts=t0 + 6000)
        pub.flush(5)
        page.wait_for_function("n => window.mdpipe.signals.filter((s) => s.channel.includes(n)).length === 6",
                               arg=name, timeout=LIVE_S * 1000)  # fmt: skip
        shown = shown_signals(page, name)
        assert [(s["channel"], s["seq"]) for s in shown[:2]] == [
            (f"signals.{name}", 3),
            (f"signals.{name}.AAPL", 2),
        ]
        assert len({(s["channel"], s["seq"]) for s in shown}) == 6
        first = card.locator("tbody tr").first
        expect(first.locator(".sig-data")).to_have_text(f"XSS again={XSS}")
        # shown as text, never as HTML: no image, no handler ran
        assert card.locator("img").count() == 0
        assert page.evaluate("typeof window.pwned") == "undefined"

        # a channel that is gone from the list is unsubscribed and its signals leave the card
        store = redis.Redis.from_url(REDIS_URL)
        store.delete(Names(pipeline.prefix).signal_seq(f"signals.{name}.GONE"))
        store.close()
        page.evaluate("() => window.mdpipe.refreshSignals()")
        assert f"signals.{name}.GONE" not in page.evaluate("window.mdpipe.channels")
        expect(card.locator("tbody tr", has_text="GONE")).to_have_count(0)
        page.screenshot(path=str(ARTIFACTS / "dashboard-signals.png"), full_page=True)

        # a phone: the card in one column, nothing wider than the screen
        phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                    storage_state=context.storage_state())  # fmt: skip
        small = phone.new_page()
        small.on("pageerror", lambda exc: problems.append(f"page error (phone): {exc}"))
        small.goto(base + "/")
        expect(small.get_by_test_id("connection")).to_have_attribute(
            "data-state", "connected", timeout=15_000
        )
        follow_signals(small, mine - {f"signals.{name}.GONE"})
        expect(small.get_by_test_id("signals").locator("tbody tr", has_text="XSS").first).to_be_attached()
        assert small.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        small.get_by_test_id("signals").scroll_into_view_if_needed()
        small.screenshot(path=str(ARTIFACTS / "dashboard-signals-phone.png"), full_page=True)
        assert small.evaluate("typeof window.pwned") == "undefined"
        phone.close()
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
