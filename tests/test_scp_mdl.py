"""The control plane drives a running listener: a subscription change, a pause and a resume made through
``mdpipe scp``'s REST API reach an in-process MDL listener (through Redis, as in production) and change
what flows into the MDQ queues; a bad request and a viewer's request change nothing.

Everything is real: the emulator, the massive client, RabbitMQ, Redis db 15 (where SCP also keeps its
sessions, so it is flushed before SCP starts) and ``mdpipe scp`` under gunicorn. The HTTP calls block, so
they run in threads: the emulator and the listener share the test's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import requests

from mdc import names
from tests import test_mdl_listener

from .conftest import REDIS_URL, drain, eventually
from .scp_support import ADMIN, Scp

VIEWER = ("viewer@example.com", "viewer-password-123")
MARKET = "stocks"

# the listener's fixtures: `redis_client` flushes Redis db 15, `run_listener` runs a Listener in-process
redis_client = test_mdl_listener.redis_client
run_listener = test_mdl_listener.run_listener


class Caller:
    """A logged-in user of SCP: API calls in a thread, with the session's CSRF token."""

    def __init__(self, scp: Scp, session: requests.Session) -> None:
        self.scp, self.session = scp, session
        self.csrf = scp.api(session, "GET", "/api/me").json()["csrf"]

    @classmethod
    async def login(cls, scp: Scp, email: str, password: str) -> Caller:
        return await asyncio.to_thread(lambda: cls(scp, scp.login(email, password)))

    async def __call__(self, method: str, path: str, body: Any = None) -> requests.Response:
        kw = {} if body is None else {"json": body}
        return await asyncio.to_thread(self.scp.api, self.session, method, path, self.csrf, **kw)


@pytest.fixture
async def scp(redis_client) -> AsyncIterator[Scp]:
    """``mdpipe scp`` with a viewer; started after Redis db 15 was flushed, stopped before it is again."""
    server = await asyncio.to_thread(Scp)
    try:
        admin = await Caller.login(server, *ADMIN)
        r = await admin("POST", "/api/users", {"email": VIEWER[0], "password": VIEWER[1]})
        assert r.status_code == 201, r.text
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def test_subscriptions_pause_and_resume_through_the_api_change_the_flow(
    redis_client, scp, make_emulator, mdq, run_listener
):
    admin = await Caller.login(scp, *ADMIN)
    viewer = await Caller.login(scp, *VIEWER)
    quotes, trades = f"{mdq.mdq_exchange}.quotes", f"{mdq.mdq_exchange}.trades"
    emulator = await make_emulator(sim_rate=2000, sim_symbols=200)
    listener = await run_listener(emulator, mdq, subscriptions="T.*", redis_url=REDIS_URL)
    await eventually(lambda: listener.control.connected)

    async def flowing(queue: str) -> bool:
        return bool(await drain(queue, settle=0.05, within=0.3))

    async def stopped(queue: str) -> bool:
        await asyncio.sleep(0.3)
        await drain(queue, settle=0.1)  # what was in flight
        await asyncio.sleep(0.5)
        return not await drain(queue, settle=0.1)

    async def subscriptions() -> dict[str, Any]:
        r = await viewer("GET", "/api/mdl/subscriptions")
        assert r.status_code == 200, r.text
        return r.json()

    # Before: trades only, and SCP reports the listener's start-up subscriptions and no desired state.
    await eventually(lambda: flowing(trades))
    assert await stopped(quotes)
    doc = await subscriptions()
    assert doc["desired"] is None and doc["listener"]["subscriptions"] == ["T.*"], doc

    # 1. The admin switches to quotes: the listener follows, quotes flow and trades stop.
    r = await admin("PUT", "/api/mdl/subscriptions", {"subscriptions": "Q.*"})
    assert r.status_code == 200, r.text
    assert r.json() == {"market": MARKET, "subscriptions": ["Q.*"], "paused": False}
    await eventually(lambda: listener.client.subs == {"Q.*"})
    assert await stopped(trades)
    got = await drain(quotes, settle=0.05, within=0.5)
    assert got and {e["ev"] for m in got for e in orjson.loads(m.body)} == {"Q"}

    # 2. Anyone logged in reads the desired state (SCP's) and what the listener applied (its status key).
    async def reported(**expected: Any) -> bool:
        listener_ = (await subscriptions())["listener"]
        return all(listener_[k] == v for k, v in expected.items())

    await eventually(lambda: reported(subscriptions=["Q.*"]))
    doc = await subscriptions()
    assert doc["market"] == MARKET
    assert doc["desired"] == {"subscriptions": "Q.*", "paused": False}
    status = doc["listener"]
    assert (status["instance"], status["market"]) == (listener.instance, MARKET)
    assert status["paused"] is False and status["ready"] is True and status["vendor"] == "connected"
    assert status["control"] == "connected" and status["rejected"] is None

    # 3. Pause stops the flow; resume brings it back.
    r = await admin("POST", "/api/mdl/pause")
    assert r.status_code == 200, r.text
    assert r.json() == {"market": MARKET, "subscriptions": ["Q.*"], "paused": True}
    await eventually(lambda: listener.client.subs == set())
    assert await stopped(quotes)
    await eventually(lambda: reported(paused=True, subscriptions=["Q.*"]))
    r = await admin("POST", "/api/mdl/resume")
    assert r.status_code == 200, r.text
    assert r.json() == {"market": MARKET, "subscriptions": ["Q.*"], "paused": False}
    await eventually(lambda: listener.client.subs == {"Q.*"})
    await eventually(lambda: flowing(quotes))
    await eventually(lambda: reported(paused=False))

    async def unchanged() -> None:
        """Nothing reached Redis or the listener: it keeps Q.*, running."""
        raw = await redis_client.get(names.mdl_desired(MARKET))
        assert orjson.loads(raw) == {"subscriptions": "Q.*", "paused": False}
        await asyncio.sleep(0.3)  # time for a reload, had one been sent
        assert listener.desired.subscriptions == ("Q.*",) and not listener.desired.paused
        assert listener.client.subs == {"Q.*"} and listener.control.rejected is None

    # 4. An invalid subscription is a JSON 4xx naming it; nothing changes.
    for bad in ("NOPE.AAPL", ["Q.*", "NOPE.AAPL"]):
        r = await admin("PUT", "/api/mdl/subscriptions", {"subscriptions": bad})
        assert r.status_code == 422 and r.headers["Content-Type"] == "application/json", r.text
        assert r.json()["error"]["code"] == "invalid_subscriptions"
        assert "NOPE.AAPL" in r.json()["error"]["message"]
    await unchanged()

    # 5. A viewer may read but not change: 403, and nothing changes.
    for method, path, body in [("PUT", "/api/mdl/subscriptions", {"subscriptions": "T.*"}),
                               ("POST", "/api/mdl/pause", None)]:  # fmt: skip
        r = await viewer(method, path, body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (path, r.text)
    await unchanged()
    assert await flowing(quotes)
    assert (await subscriptions())["desired"] == {"subscriptions": "Q.*", "paused": False}
