"""Every asset class end to end: for crypto, forex, indices and options, the emulator serving that market
(``SIM_MARKET``), ``mdpipe mdl`` reading it through the real massive client into RabbitMQ, ``mdpipe mdp``
folding it into Redis and ``mdpipe wds`` serving it, each a process of its own, on an MDQ exchange and an
MDC prefix of the market's own; a real WebSocket client checks each channel's snapshot, then live
updates in ``seq`` order, and the market's documents (docs/mdp.md, Markets)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from mdc.names import Names, mdl_desired
from mdpipe.private_services import free_port
from mdpipe.settings import SimSettings, WdsSettings, parse_start
from sim.markets import AssetMarket
from wds.tokens import mint

from .conftest import REDIS_URL, eventually
from .scp_support import TOKEN_SECRET
from .test_scp_browser import Stack, running
from .wds_support import Peer, peer

# Friday 2026-11-20 10:00 New York: forex is open (Sunday 17:00 to Friday 17:00) and the indices are in
# their regular session (09:30-16:00); crypto and options trade at all hours.
START = "2026-11-20T15:00:00Z"
SPEED = "30"  # market seconds per wall second: a new second bar every ~33 ms
SYMBOLS = "3"  # few symbols, so the busiest one gets many updates


@dataclass(frozen=True)
class Case:
    subscriptions: str
    quotes: bool  # the market has quotes (indices have none)


CASES = {
    "crypto": Case("XT.*,XQ.*,XA.*,XAS.*", quotes=True),
    "forex": Case("C.*,CA.*,CAS.*", quotes=True),
    "indices": Case("V.*,A.*,AM.*", quotes=False),
    "options": Case("T.*,Q.*,A.*,AM.*", quotes=True),
}


def busiest(market: str) -> str:
    """The market's busiest symbol as the emulator builds its universe (``X:BTC-USD``, ``I:SPX``, ...)."""
    settings = SimSettings(sim_market=market, sim_symbols=int(SYMBOLS), sim_start=START)
    generated = AssetMarket(market, seed=settings.sim_seed, symbols=settings.sim_symbols,
                            rate=settings.sim_rate, tick_ms=settings.sim_tick_ms,
                            start_ms=parse_start(START))  # fmt: skip
    return generated.instruments[0].sym


class MarketStack(Stack):
    """The emulator of one market, MDL, MDP and WDS, each an ``mdpipe`` process, on the market's own
    exchange and prefix."""

    def __init__(self, market: str) -> None:
        tag = secrets.token_hex(4)
        super().__init__(f"mk{market[:3]}{tag}", f"test-mk-{market}-{tag}")
        self.market, self.sym = market, busiest(market)
        self.names = Names(self.prefix)
        key = "sim-key-" + tag
        sim_port, sim_http, self.wds_port = free_port(), free_port(), free_port()
        common = {"REDIS_URL": REDIS_URL, "MDC_PREFIX": self.prefix, "MDQ_EXCHANGE": self.exchange or "",
                  "MASSIVE_MARKET": market}  # fmt: skip
        store = redis.Redis.from_url(REDIS_URL)
        store.delete(mdl_desired(market))  # another test's desired subscriptions would win
        try:
            self._start("sim", sim_http, SIM_PORT=str(sim_port), SIM_HTTP_PORT=str(sim_http), SIM_API_KEY=key,
                        SIM_MARKET=market, SIM_START=START, SIM_SPEED=SPEED, SIM_SYMBOLS=SYMBOLS,
                        SIM_RATE="100")  # fmt: skip
            mdl_http, mdp_http, wds_http = free_port(), free_port(), free_port()
            self._start("mdl", mdl_http, MASSIVE_API_KEY=key, MASSIVE_FEED=f"127.0.0.1:{sim_port}",
                        MASSIVE_SUBSCRIPTIONS=CASES[market].subscriptions, MDL_HTTP_PORT=str(mdl_http),
                        MDL_LEASE="false", **common)  # fmt: skip
            self._start("mdp", mdp_http, MDP_HTTP_PORT=str(mdp_http), **common)
            self._start("wds", wds_http, WDS_PORT=str(self.wds_port), WDS_HTTP_PORT=str(wds_http),
                        WDS_TOKEN_SECRET=TOKEN_SECRET, **common)  # fmt: skip
            # the first stats are in Redis, so the client's snapshot has a document
            asyncio.run(self._stats_written())
        except BaseException:
            self.stop()
            raise
        finally:
            store.close()

    async def _stats_written(self) -> None:
        client = AsyncRedis.from_url(REDIS_URL)
        try:
            await eventually(lambda: client.exists(self.names.stats(self.sym)), within=30)
        finally:
            await client.aclose()


@pytest.fixture(scope="module", params=sorted(CASES))
def stack(request: pytest.FixtureRequest) -> Iterator[MarketStack]:
    """One market's stack at a time (threads cannot start them side by side: a child dies with the
    thread that started it)."""
    yield from running(lambda: MarketStack(request.param))


def channels(stack: MarketStack) -> list[str]:
    return [f"{kind}.{stack.sym}" for kind in ("stats", "quotes", "bars")]


async def watch(stack: MarketStack, live: dict[str, int]) -> Peer:
    """A real WebSocket client subscribed to the symbol's channels, once each has ``live[channel]``
    updates."""
    token = mint(WdsSettings(wds_token_secret=TOKEN_SECRET), "markets", ["*"], ttl_s=600)
    client = await peer(f"ws://127.0.0.1:{stack.wds_port}/ws?token={token}")
    await client.send(action="subscribe", channels=channels(stack))
    try:
        await eventually(lambda: all(len(client.of("update", c)) >= n for c, n in live.items()), within=20)
    finally:
        await client.close()
    assert not client.of("error"), client.of("error")
    return client


def snapshot_then_updates(client: Peer, channel: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The channel's one snapshot and its updates after it, their ``seq`` increasing from the snapshot's."""
    events = [e for e in client.events if e.get("channel") == channel]
    assert events and events[0]["event"] == "snapshot", events[:3]
    snapshot, updates = events[0], events[1:]
    assert all(e["event"] == "update" for e in updates)
    seqs = [snapshot["seq"]] + [u["seq"] for u in updates]
    assert seqs == sorted(set(seqs)), seqs
    return snapshot, updates


def check_stats(market: str, sym: str, doc: dict[str, Any]) -> None:
    # the day is named by the date it starts on: forex's began at 17:00 New York the day before
    assert doc["sym"] == sym and doc["day"] == ("2026-11-19" if market == "forex" else "2026-11-20")
    # forex has no trades and its bars no day open: its stats have no open (nor a change, before a
    # previous close is known) although docs/mdp.md lists them
    prices = ("last", "high", "low") if market == "forex" else ("last", "open", "high", "low", "change")
    assert all(isinstance(doc[f], int | float) for f in prices), doc
    assert doc["low"] <= doc["last"] <= doc["high"]
    if market in ("indices", "forex"):  # values or quotes, no trades; forex bars carry no day volume
        assert doc["volume"] == 0 and doc["trades"] == 0
    else:
        assert doc["volume"] > 0


def check_quote(market: str, doc: dict[str, Any]) -> None:
    assert 0 < doc["bp"] <= doc["ap"] and doc["mid"] == pytest.approx((doc["bp"] + doc["ap"]) / 2)
    if market == "forex":
        assert (
            doc["bs"] is None and doc["as"] is None and doc["bx"] == doc["ax"] is not None and doc["q"] == 0
        )
    elif market == "crypto":
        assert doc["bs"] > 0 and doc["as"] > 0 and doc["bx"] is None and doc["ax"] is None and doc["q"] == 0
    else:
        assert isinstance(doc["bs"], int) and isinstance(doc["as"], int) and doc["bx"] and doc["ax"]


def check_bar(bar: dict[str, Any]) -> None:
    assert bar["l"] <= min(bar["o"], bar["c"]) <= max(bar["o"], bar["c"]) <= bar["h"] and bar["e"] > bar["t"]


def test_each_market_end_to_end(stack: MarketStack):
    market, sym = stack.market, stack.sym
    stats, quotes, bars = channels(stack)
    live = {stats: 3, bars: 3} | ({quotes: 3} if CASES[market].quotes else {})
    client = asyncio.run(watch(stack, live))

    snapshot, updates = snapshot_then_updates(client, stats)
    for doc in [snapshot["data"], *(u["data"] for u in updates)]:
        check_stats(market, sym, doc)
    assert {u["type"] for u in updates} == {"stats"}
    if market == "crypto":  # fractional sizes: the day's volume has decimals
        assert any(u["data"]["volume"] != int(u["data"]["volume"]) for u in updates)
    if market in ("crypto", "options"):
        assert all(isinstance(u["data"]["trades"], int) and u["data"]["trades"] > 0 for u in updates)

    snapshot, updates = snapshot_then_updates(client, quotes)
    if CASES[market].quotes:
        for doc in [d for d in [snapshot["data"]] if d is not None] + [u["data"] for u in updates]:
            check_quote(market, doc)
        assert {u["type"] for u in updates} == {"quote"}
    else:  # indices have values, no quotes
        assert snapshot["data"] is None and updates == []

    snapshot, updates = snapshot_then_updates(client, bars)
    assert snapshot["data"] is None or set(snapshot["data"]) >= {"second", "minute"}
    assert {u["type"] for u in updates} <= {"bar.1s", "bar.1m"}
    for update in updates:
        check_bar(update["data"])
    if market == "indices":  # the vendor's index bars have no volume: 0
        assert all(u["data"]["v"] == 0 for u in updates)
