"""The processors' state in memory and the writes it makes, without I/O: merge, book, transaction; and
the one place where Python and Lua must agree (the envelope), against a real Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import hiredis
import orjson

from mdc import envelope, migrate
from mdc.names import Names
from mdp.book import LOAD_REPLIES, Book, SymbolState, load_commands
from mdp.merge import Merger
from mdp.plan import Planner
from mdp.writes import SHARED_SCRIPT, Context, Writes
from mdpipe.settings import MdpSettings
from mdpipe.settings import load as load_settings
from mdq.message import Batch

from .test_mdp_units import T0, bar, quote, trade

NAMES = Names("md")


def merger(**overrides: Any) -> Merger:
    values: dict[str, Any] = {
        "recent_trades": 100, "minute_bars": 960, "raw_events": 100, "raw_ttl_s": 300, "state_ttl_s": 3600,
        "warmup_ms": 0, "cooldown_ms": 60_000, "spike_ratio": 5.0, "spike_min_volume": 100,
    }  # fmt: skip
    values.update(overrides)
    return Merger(NAMES, **values)


def commands(payload: bytes) -> list[list[bytes]]:
    reader = hiredis.Reader()
    reader.feed(payload)
    out = []
    while (command := reader.gets()) is not False:
        out.append(command)
    return out


class Processor:
    """Planner + Book + Merger, as the service drives them, minus the I/O (missing symbols start empty)."""

    def __init__(self) -> None:
        mdp = load_settings(MdpSettings, mdp_plugins="")
        self.planner, self.book, self.merger = Planner(mdp), Book(1_000), merger()
        self.context = Context(NAMES, "mdp-1", ttl_s=3600, feed=200, done_ms=11_000)
        self.seq = 0

    def group(self, *messages: list[dict[str, Any]]) -> tuple[Writes, list[list[bytes]]]:
        batches = []
        for events in messages:
            self.seq += 1
            batches.append(Batch(events, "trades", time.time_ns(), "mdl-1", self.seq, "mdq.trades"))
        plan = self.planner.plan(*batches)
        self.book.install([SymbolState(sym) for sym in self.book.missing(plan.symbols)])
        writes = Writes(self.context, 1_763_649_000_500)
        self.merger.apply(plan, self.book, writes)
        for batch in batches:
            writes.done(batch.message_id)
        payload, n = writes.transaction()
        cmds = commands(payload)
        assert len(cmds) == n  # one reply per command: MULTI, each queued one, EXEC
        return writes, cmds


def published(cmds: list[list[bytes]]) -> list[envelope.Update]:
    return [envelope.decode(c[2]) for c in cmds if c[0] == b"PUBLISH"]


def test_a_group_is_one_transaction_with_one_update_per_changed_channel():
    p = Processor()
    _, cmds = p.group(
        [trade(p=100.0, s=100, t=T0, q=1), trade(p=101.0, s=10, t=T0 + 5, q=2), quote(t=T0 + 1, q=3)],
        [trade(p=102.0, s=5, t=T0 + 9, q=4), quote(bp=1.0, ap=2.0, t=T0, q=0)],  # an older quote: no write
    )
    assert cmds[0] == [b"MULTI"] and cmds[-1] == [b"EXEC"]
    updates = published(cmds)
    assert sorted(u.channel for u in updates) == ["quotes.AAPL", "stats.AAPL", "trades.AAPL"]
    (trades,) = [u for u in updates if u.type == "trades"]
    assert [t["q"] for t in trades.data] == [1, 2, 4] and trades.seq == 1 and trades.src == "mdp-1"
    (stats,) = [u for u in updates if u.type == "stats"]
    assert (stats.data["trades"], stats.data["volume"], stats.data["last"], stats.data["open"]) == (
        3,
        115,
        102.0,
        100.0,
    )
    (hset,) = [c for c in cmds if c[:2] == [b"HSET", b"md:seq:{AAPL}"]]  # in the symbol's slot
    assert dict(zip(hset[2::2], hset[3::2], strict=True)) == {
        b"trades.AAPL": b"1",
        b"quotes.AAPL": b"1",
        b"stats.AAPL": b"1",
    }
    assert sum(c[0] == b"SET" and c[1].startswith(b"md:done:") for c in cmds) == 2  # a marker per message


def test_seq_goes_on_per_channel_and_older_events_change_nothing():
    p = Processor()
    p.group([quote(t=T0 + 10, q=5)])
    _, cmds = p.group([quote(t=T0 + 11, q=6)])
    assert [u.seq for u in published(cmds)] == [2]
    writes, cmds = p.group([quote(t=T0 + 3, q=9)])  # older than the held one
    assert published(cmds) == [] and writes.publishes == 0
    assert not any(c[0] == b"SET" and c[1] == b"md:quote:{AAPL}" for c in cmds)


def test_a_takeover_continues_from_the_loaded_state():
    """The replies of load_commands rebuild what a merge decides with."""
    stats = {"sym": "AAPL", "day": "2025-11-20", "t": T0, "volume": 100, "trade_volume": 100, "agg_volume": 0,
             "trades": 1, "last": 100.0, "lt": T0, "lq": 1, "first": 100.0, "ot": T0, "t0": T0}  # fmt: skip
    replies = [
        b'{"t":%d,"q":1,"p":100.0}' % T0,  # trade
        b'{"t":%d,"q":7,"bp":1}' % (T0 + 50),  # quote
        orjson.dumps(stats),
        None,  # no second bar yet
        b'{"t":%d,"q":2,"upper":1,"lower":0,"i":[15],"halted":true}' % T0,  # LULD
        [b"4", b"9", None, b"3", b"1"],  # seq of trades, quotes, bars, stats, luld
        b"250.500,7",  # volume mean, minutes
        [b"%d" % T0, None, None, None, None],  # alert times
        b"99.5",  # previous close
    ]
    assert len(replies) == LOAD_REPLIES
    assert len(commands(load_commands(NAMES, "AAPL"))) == LOAD_REPLIES
    st = SymbolState.from_replies("AAPL", replies)
    assert (st.trade_tq, st.quote_tq, st.luld_tq, st.halted) == ((T0, 1), (T0 + 50, 7), (T0, 2), True)
    assert (st.seq, st.vavg, st.alerted, st.prev_close) == (
        [4, 9, 0, 3, 1],
        (250.5, 7),
        {"new_high": T0},
        99.5,
    )
    p = Processor()
    p.book.install([st])
    _, cmds = p.group([trade(p=101.0, s=10, t=T0 + 60, q=8), quote(t=T0 + 49, q=1)])
    updates = {u.channel: u for u in published(cmds)}
    assert set(updates) == {"trades.AAPL", "stats.AAPL"}  # the quote is older than the loaded one
    assert (updates["trades.AAPL"].seq, updates["stats.AAPL"].seq) == (5, 4)
    assert (updates["stats.AAPL"].data["trade_volume"], updates["stats.AAPL"].data["trades"]) == (110, 2)


def test_alerts_keep_their_cooldown_and_go_through_the_shared_script():
    p = Processor()
    p.group([trade("XYZ", p=10.0, t=T0, q=1)])
    writes, cmds = p.group([trade("XYZ", p=11.0, t=T0 + 1000, q=2)])
    assert [(f[0], f[1]) for f in writes.feeds] == [("alerts", "alert")]
    alert = {"kind": "new_high", "sym": "XYZ", "t": T0 + 1000, "price": 11.0, "prev": 10.0}
    assert orjson.loads(writes.feeds[0][3]) == alert
    assert cmds[-2][:2] == [b"EVAL", SHARED_SCRIPT]
    writes, _ = p.group([trade("XYZ", p=12.0, t=T0 + 2000, q=3)])  # within the cooldown
    assert writes.feeds == []


def test_minute_bars_and_volume_spikes():
    p = Processor()
    minutes = [bar("AM", "XYZ", s=T0 + i * 60_000, o=10.0, h=10.0, low=10.0, c=10.0, v=v)
               for i, v in enumerate([100, 100, 100, 100, 100, 5000])]  # fmt: skip
    writes, cmds = p.group(minutes)
    assert [u.type for u in published(cmds)] == ["bar.1m"] * 6 + ["stats"]
    assert [orjson.loads(f[3])["kind"] for f in writes.feeds] == ["volume_spike"]
    assert p.book.symbols["XYZ"].vavg == (916.667, 6)  # the mean of the six minutes


def test_the_book_is_bounded():
    book = Book(1_000)
    book.install([SymbolState(f"S{i}") for i in range(1_050)])
    book.install([SymbolState("S0")])  # held: not replaced
    book.trim()
    assert len(book) == 950  # a tenth of the bound goes at once, the first loaded
    assert "S99" not in book.symbols and "S100" in book.symbols and "S1049" in book.symbols


async def test_the_shared_scripts_envelope_is_the_python_one(redis):
    """The feeds' updates are built in Lua (their seq is shared by every replica): byte for byte what
    ``mdc.envelope.encode_raw`` builds, on the names ``mdc.names`` gives."""
    names = Names(f"t{time.time_ns()}")
    ctx = Context(names, "mdp-1", ttl_s=3600, feed=5, done_ms=11_000)
    pubsub = redis.pubsub()
    await pubsub.subscribe(names.redis_channel("alerts"))
    await pubsub.get_message(timeout=1)
    member = '{"kind":"halt","sym":"ABC","t":1763649000000}'
    args = {"feeds": [["alerts", "alert", 1763649000000, member]], "day": "2025-11-20", "feed_length": 5}
    try:
        await redis.eval(SHARED_SCRIPT, 1, names.day(), ctx.script_context(1763649000500), orjson.dumps(args))
        message = None
        for _ in range(50):
            message = await pubsub.get_message(timeout=0.1)
            if message and message["type"] == "message":
                break
            await asyncio.sleep(0.01)
        assert message is not None and message["type"] == "message"
        expected = envelope.encode_raw(b"alert", b"alerts", 1, 1763649000000, b"1763649000500", b'"mdp-1"',
                                       member.encode())  # fmt: skip
        assert message["data"] == expected
        assert await redis.get(names.day()) == b"2025-11-20"
        assert await redis.zcard(names.feed("alerts")) == 1
        assert await redis.hget(names.seq(), "alerts") == b"1"
    finally:
        await pubsub.aclose()
        await redis.delete(names.seq(), names.feed("alerts"), names.day())


def test_rankings_wait_for_their_flush_with_each_symbols_newest_score():
    p = Processor()
    p.group([trade(p=100.0, s=100, t=T0, q=1)])
    _, cmds = p.group([trade(p=101.0, s=50, t=T0 + 1, q=2)])
    assert not any(c[0] == b"ZADD" and c[1].startswith(b"md:{md}:rank:") for c in cmds)
    volume = p.book.ranks["md:{md}:rank:2025-11-20:volume"]
    assert volume == {b"$4\r\nAAPL\r\n": 150}  # one score per symbol: the newest
    writes = Writes(p.context, 0)
    writes.rankings(p.book.ranks)
    (zadd,) = [
        c for c in commands(writes.transaction()[0]) if c[:2] == [b"ZADD", b"md:{md}:rank:2025-11-20:volume"]
    ]
    assert zadd[2:] == [b"150", b"AAPL"]


async def test_an_older_versions_names_are_moved_once_and_no_seq_goes_back(redis):
    """``mdc.migrate.upgrade``: the seqs an older version kept in one hash move to the channel's own place
    as the larger of the two; market-wide keys are renamed unless the new name exists; once only."""
    names = Names(f"t{time.time_ns()}")
    p = names.prefix
    try:
        await redis.hset(f"{p}:seq", mapping={"stats.AAPL": 7, "halts": 3, "signals.x": 5, "quotes.MSFT": 2})
        await redis.hset(names.symbol_seq("MSFT"), "quotes.MSFT", 9)  # the new version already went further
        await redis.set(f"{p}:sigseq:signals.y", 4)
        await redis.set(f"{p}:day", "2025-11-20")
        await redis.zadd(f"{p}:feed:halts", {"h": 1})
        await redis.set(names.board("volume"), "new")  # written by the new version first: kept
        await redis.set(f"{p}:board:volume", "old")
        assert await migrate.upgrade(redis, names) == {"seq": 5, "keys": 2}
        assert await redis.hget(names.symbol_seq("AAPL"), "stats.AAPL") == b"7"
        assert await redis.hget(names.symbol_seq("MSFT"), "quotes.MSFT") == b"9"
        assert await redis.hget(names.seq(), "halts") == b"3"
        assert await redis.get(names.signal_seq("signals.x")) == b"5"
        assert await redis.get(names.signal_seq("signals.y")) == b"4"
        assert await redis.get(names.day()) == b"2025-11-20" and await redis.zcard(names.feed("halts")) == 1
        assert await redis.get(names.board("volume")) == b"new"
        assert not await redis.exists(f"{p}:seq", f"{p}:day", f"{p}:sigseq:signals.y", f"{p}:feed:halts")
        await redis.set(f"{p}:day", "2025-11-21")
        assert await migrate.upgrade(redis, names) == {}  # done: the marker says so
    finally:
        await redis.delete(*[k async for k in redis.scan_iter(match=f"{p}:*")])
