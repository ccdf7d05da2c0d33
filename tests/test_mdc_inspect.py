"""``mdpipe inspect`` against real Redis and RabbitMQ: state written by a running processor read back
through the inspect commands and the command line, tails of live updates (type filter, malformed
messages, stop conditions), bad arguments, and Redis unreachable. Each test has a prefix of its own."""

from __future__ import annotations

import asyncio
import functools
import io
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from mdc import envelope
from mdc import inspect as mdc_inspect
from mdc.connect import Target
from mdc.names import Names
from mdc.publisher import Publisher
from mdc.reader import UnknownChannel
from tests.conftest import REDIS_URL, eventually
from tests.mdp_support import T0, mdc_settings, mdp_settings, running, send
from tests.test_mdl_cluster import local_cluster

TRADE = {"ev": "T", "sym": "AAPL", "p": 190.0, "s": 100, "t": T0, "q": 1}
QUOTE = {"ev": "Q", "sym": "AAPL", "bp": 189.9, "bs": 100, "ap": 190.0, "as": 200, "t": T0, "q": 2}
MINUTE = {"ev": "AM", "sym": "AAPL", "v": 5000, "o": 189.5, "h": 190.5, "l": 189.0, "c": 190.0,
          "s": T0, "e": T0 + 60_000}  # fmt: skip
IMBALANCE = {"ev": "NOI", "T": "AAPL", "t": T0, "i": 1, "x": 4, "o": 100, "p": 190.0, "b": 189.5}
UNREACHABLE = "redis://:s3cret-pw@127.0.0.1:1/0"
ROOT = Path(__file__).resolve().parent.parent


class Captured:
    """An ``Output`` writing to memory; ``docs()`` parses what it printed, one document per line."""

    def __init__(self, *, pretty: bool = False) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        self.output = mdc_inspect.Output(self.out, self.err, pretty=pretty)

    def docs(self) -> list[Any]:
        return [orjson.loads(line) for line in self.out.getvalue().splitlines()]

    def notes(self) -> list[str]:
        return self.err.getvalue().splitlines()


async def call(command: Any, redis: Redis, names: Names, *args: Any, **kw: Any) -> Captured:
    """``command(redis, names, output, *args, **kw)`` with its output captured."""
    captured = Captured()
    await command(redis, names, captured.output, *args, **kw)
    return captured


@pytest.fixture
async def r() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


async def mdpipe(
    *args: str, redis_url: str = REDIS_URL, prefix: str = "md", stdout: Any = None, **env_vars: str
):
    """``python -m mdpipe inspect ARGS`` in a subprocess, ``env_vars`` added to its environment; returns
    (exit code, stdout, stderr)."""
    env = {**os.environ, "REDIS_URL": redis_url, "MDC_PREFIX": prefix, "LOG_FORMAT": "text", **env_vars}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mdpipe", "inspect", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE if stdout is None else stdout, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 20)
    return process.returncode, (out or b"").decode(), err.decode()


async def test_reads_what_the_processor_wrote(mdq, r):
    mdc = mdc_settings()
    names = Names(mdc.mdc_prefix)
    async with running(mdq, mdc, mdp_settings()) as service:
        await send(mdq, "trades", [TRADE])
        await send(mdq, "quotes", [QUOTE])
        await send(mdq, "aggregates", [MINUTE])
        await send(mdq, "imbalances", [IMBALANCE])
        await eventually(lambda: service.events >= 4)

        stats = orjson.loads(await r.get(names.stats("AAPL")))
        assert stats["last"] == 190.0
        assert (await call(mdc_inspect.stats, r, names, "AAPL")).docs() == [stats]
        quote = (await call(mdc_inspect.quote, r, names, "AAPL")).docs()
        assert quote == [orjson.loads(await r.get(names.quote("AAPL")))]
        assert (quote[0]["bp"], quote[0]["ap"]) == (189.9, 190.0)

        channels = ["stats.AAPL", "quotes.AAPL", "trades.AAPL", "bars.AAPL"]
        snaps = (await call(mdc_inspect.snapshot, r, names, channels)).docs()
        assert [s["channel"] for s in snaps] == channels
        assert [s["seq"] for s in snaps] == [int(await r.hget(names.seq_key(c), c)) for c in channels]
        assert all(s["seq"] >= 1 for s in snaps)
        assert snaps[0]["data"] == stats
        assert snaps[1]["data"]["bp"] == 189.9
        assert snaps[2]["data"]["last"]["p"] == 190.0
        assert [b["c"] for b in snaps[3]["data"]["minute"]] == [190.0]

        bars = (await call(mdc_inspect.bars, r, names, "AAPL", 0)).docs()
        assert bars == [orjson.loads(b) for b in await r.zrange(names.bars_minute("AAPL"), 0, -1)]
        assert [(b["o"], b["c"]) for b in bars] == [(189.5, 190.0)]
        raw = (await call(mdc_inspect.raw, r, names, "NOI")).docs()
        assert raw == [IMBALANCE]
        assert (await call(mdc_inspect.day, r, names)).docs() == [(await r.get(names.day())).decode()]
        beats = (await call(mdc_inspect.heartbeats, r, names)).docs()
        assert [(b["component"], b["instance"]) for b in beats] == [("mdp", service.instance)]

        listed = (await call(mdc_inspect.keys, r, names)).docs()
        assert [k["key"] for k in listed] == sorted(k["key"] for k in listed)
        by_key = {k["key"]: k for k in listed}
        assert by_key[names.stats("AAPL")]["type"] == "string"
        assert 0 < by_key[names.stats("AAPL")]["ttl"] <= mdc.mdc_state_ttl_s
        assert by_key[names.bars_minute("AAPL")]["type"] == "zset"
        assert by_key[names.seq()] == {"key": names.seq(), "type": "hash", "ttl": None}
        assert [k["key"] for k in (await call(mdc_inspect.keys, r, names, "quote:*")).docs()] == [
            names.quote("AAPL")
        ]

        pretty = Captured(pretty=True)
        await mdc_inspect.quote(r, names, pretty.output, "AAPL")
        assert "\n  " in pretty.out.getvalue()
        assert orjson.loads(pretty.out.getvalue()) == quote[0]

        # The command line, end to end: the same state, read by another process.
        code, out, err = await mdpipe("snapshot", "stats.AAPL", "quotes.AAPL", prefix=mdc.mdc_prefix)
        assert (code, err) == (0, "")
        assert [orjson.loads(line) for line in out.splitlines()] == snaps[:2]
        # A reader that went away (`| head`) ends the command quietly.
        read, write = os.pipe()
        os.close(read)
        try:
            code, _, err = await mdpipe("keys", prefix=mdc.mdc_prefix, stdout=write)
        finally:
            os.close(write)
        assert (code, err) == (0, "")


async def test_reports_absent_state_on_stderr(r):
    names = Names(mdc_settings().mdc_prefix)
    stats = await call(mdc_inspect.stats, r, names, "AAPL")
    assert stats.docs() == [None]
    assert stats.notes() == [
        f"mdpipe inspect: no stats of AAPL under prefix {names.prefix} "
        "(is MDC_PREFIX right, and REDIS_URL's database?)"
    ]
    snap = await call(mdc_inspect.snapshot, r, names, ["leaders.gainers"])
    assert snap.docs() == [{"channel": "leaders.gainers", "seq": 0, "data": None}]
    assert len(snap.notes()) == 1
    keys = await call(mdc_inspect.keys, r, names)
    assert keys.docs() == []
    assert "no key matches" in keys.err.getvalue()


async def test_tail_prints_updates_as_published_and_honours_type(mdq, r):
    mdc = mdc_settings()
    names = Names(mdc.mdc_prefix)
    both, quotes_only = Captured(), Captured()
    ready = [asyncio.Event(), asyncio.Event()]
    async with running(mdq, mdc, mdp_settings()) as service:
        tails = [
            asyncio.create_task(mdc_inspect.tail(
                r, names, both.output, ["trades.AAPL", "quotes.*"], count=2, ready=ready[0]
            )),
            asyncio.create_task(mdc_inspect.tail(
                r, names, quotes_only.output, ["*"], types=["quote"], count=1, ready=ready[1]
            )),
        ]  # fmt: skip
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), 5)
        await send(mdq, "trades", [TRADE])
        await eventually(lambda: service.events >= 1)  # its updates go out before the quote's
        await send(mdq, "quotes", [QUOTE])
        assert await asyncio.wait_for(asyncio.gather(*tails), 5) == [2, 1]
        seqs = {c: int(await r.hget(names.seq_key(c), c)) for c in ("trades.AAPL", "quotes.AAPL")}

    got = both.docs()
    assert [(u["type"], u["channel"]) for u in got] == [("trades", "trades.AAPL"), ("quote", "quotes.AAPL")]
    assert [u["seq"] for u in got] == [seqs["trades.AAPL"], seqs["quotes.AAPL"]]
    assert [t["p"] for t in got[0]["data"]] == [190.0]
    assert set(got[1]) == set(envelope.FIELDS)
    # The pattern saw trades, stats and bar updates first: only the quote passed the filter.
    quotes = quotes_only.docs()
    assert [(u["type"], u["channel"], u["data"]["bp"]) for u in quotes] == [("quote", "quotes.AAPL", 189.9)]
    assert both.notes() == quotes_only.notes() == []


async def test_tail_notes_malformed_updates_and_stops_after_seconds(r):
    names = Names(mdc_settings().mdc_prefix)
    captured, ready = Captured(), asyncio.Event()
    loop = asyncio.get_running_loop()
    began = loop.time()
    task = asyncio.create_task(
        mdc_inspect.tail(r, names, captured.output, ["alerts"], seconds=0.6, ready=ready)
    )
    await asyncio.wait_for(ready.wait(), 3)
    channel = names.redis_channel("alerts")
    await r.publish(channel, b"not json")
    await r.publish(channel, b'{"type": "alert"}')
    await r.publish(channel, envelope.encode("alert", "alerts", 7, T0, T0 + 5, "test:1", {"kind": "x"}))
    assert await asyncio.wait_for(task, 3) == 1
    assert 0.6 <= loop.time() - began < 1.5
    assert captured.docs() == [
        {"type": "alert", "channel": "alerts", "seq": 7, "ts": T0, "sent": T0 + 5, "src": "test:1",
         "data": {"kind": "x"}}
    ]  # fmt: skip
    notes = captured.notes()
    assert len(notes) == 2
    assert notes[0].startswith("mdpipe inspect: malformed update on alerts: not JSON")
    assert notes[1] == "mdpipe inspect: malformed update on alerts: missing channel, seq, ts, sent, src, data"


async def test_tail_stops_when_asked(r):
    names = Names(mdc_settings().mdc_prefix)
    captured, ready, stop = Captured(), asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        mdc_inspect.tail(r, names, captured.output, ["stats.*", "halts"], stop=stop, ready=ready)
    )
    await asyncio.wait_for(ready.wait(), 3)
    await asyncio.sleep(0.3)
    assert not task.done()  # no count, no seconds: it runs until stopped
    stop.set()
    assert await asyncio.wait_for(task, 1) == 0

    # ...and leaves no subscription behind
    async def unsubscribed() -> bool:
        return (await r.pubsub_numsub(names.redis_channel("halts")))[0][1] == 0

    await eventually(unsubscribed, within=2)


@pytest.mark.parametrize(
    ("what", "options", "message"),
    [
        ("snapshot", {"channels": ["stats.AAPL", "trade.AAPL"]}, "unknown channel 'trade.AAPL'; channels: "),
        ("snapshot", {"channels": ["leaders.winners"]}, "unknown channel 'leaders.winners'"),
        ("tail", {"targets": ["quote.AAPL"]}, "unknown channel 'quote.AAPL'"),
        ("tail", {"targets": ["trades.*"], "count": 0}, "count must be at least 1"),
        ("stats", {"sym": "AA PL"}, "invalid symbol 'AA PL'"),
        ("leaders", {"board": "winners"}, "unknown leaderboard 'winners'"),
        ("raw", {"ev": "N O I"}, "invalid event type 'N O I'"),
    ],
)
async def test_bad_arguments_exit_2_before_redis_is_touched(what, options, message):
    # Redis is unreachable here: an exit code of 2 (not 1) shows the argument was refused first.
    captured = Captured()
    code = await mdc_inspect.run(what, options, redis_url=UNREACHABLE, prefix="md", out=captured.output)
    assert code == mdc_inspect.EXIT_USAGE
    assert captured.docs() == []
    [note] = captured.notes()
    assert note.startswith(f"mdpipe inspect: {message}")


async def test_unknown_channel_raises_from_the_function(r):
    with pytest.raises(UnknownChannel, match="unknown channel 'trades'"):
        await mdc_inspect.snapshot(r, Names("md"), Captured().output, ["trades"])


async def test_cli_redis_unreachable_is_one_line_without_the_password():
    code, out, err = await mdpipe("stats", "AAPL", redis_url=UNREACHABLE)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("mdpipe inspect: redis at redis://:***@127.0.0.1:1/0: ")
    assert "s3cret-pw" not in out + err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (UNREACHABLE, "redis://:***@127.0.0.1:1/0"),
        ("redis://127.0.0.1:1/0?password=s3cret-pw", "redis://127.0.0.1:1/0"),
    ],
)
async def test_run_maps_redis_failure_to_exit_1_with_the_masked_url(url, shown):
    captured = Captured()
    code = await mdc_inspect.run(
        "tail", {"targets": ["trades.*"], "seconds": 1.0}, redis_url=url, prefix="md", out=captured.output
    )
    assert code == mdc_inspect.EXIT_REDIS
    [note] = captured.notes()
    assert note.startswith(f"mdpipe inspect: redis at {shown}: ")
    assert "s3cret-pw" not in note


# -- on a Redis Cluster (REDIS_CLUSTER_NODES) ------------------------------------------------------------


_cluster = pytest.fixture(scope="module", name="redis_cluster")(local_cluster)


async def test_cli_on_a_cluster_reads_a_snapshot_and_keys_tails_a_channel_and_refuses_a_pattern(
    redis_cluster,
):
    """``mdpipe inspect`` with REDIS_CLUSTER_NODES: what ``mdc.publisher`` wrote on the cluster read back,
    a live update heard with SSUBSCRIBE, and a pattern refused with the reason (exit 2)."""
    target = Target(redis_cluster.url, tuple(redis_cluster.startup_nodes))
    seeds = ",".join(f"{h}:{p}" for h, p in redis_cluster.startup_nodes)
    cli = functools.partial(mdpipe, redis_url=redis_cluster.url, prefix="insp", REDIS_CLUSTER_NODES=seeds)
    async with Publisher(target, "inspected", prefix="insp", instance="t1") as pub:
        pub.publish({"n": 1})
        await pub.flush()

        code, out, err = await cli("snapshot", "signals.inspected")
        assert code == 0, err
        [doc] = [orjson.loads(line) for line in out.splitlines()]
        assert doc["channel"] == "signals.inspected" and doc["seq"] == 1
        assert [u["data"] for u in doc["data"]["recent"]] == [{"n": 1}]

        code, out, err = await cli("keys", "*")  # SCAN of every master: the signal's keys and heartbeat
        assert code == 0, err
        keys = {orjson.loads(line)["key"] for line in out.splitlines()}
        names = Names("insp")
        assert {names.signal_seq("signals.inspected"), names.signal_recent("signals.inspected")} <= keys
        assert names.heartbeat("signals.inspected", "t1") in keys

        tail = asyncio.create_task(cli("tail", "signals.inspected", "--count", "1", "--seconds", "15"))
        n = 1
        while not tail.done():  # until the tail is subscribed and has printed one
            n += 1
            pub.publish({"n": n})
            await asyncio.wait([tail], timeout=0.2)
        code, out, err = tail.result()
        assert code == 0, err
        [update] = [orjson.loads(line) for line in out.splitlines()]
        assert update["channel"] == "signals.inspected" and update["data"]["n"] > 1

    code, out, err = await cli("tail", "signals.*", "--seconds", "1")
    assert code == mdc_inspect.EXIT_USAGE and out == ""
    assert "a Redis Cluster has no pattern subscriptions" in err and "'signals.*'" in err, err
