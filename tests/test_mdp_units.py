"""The processors' pure parts, without I/O: trading day, folds, planning, plug-ins."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdc import envelope
from mdc.names import Names, is_known_channel
from mdc.tradingday import TradingDay
from mdp import trades as trades_module
from mdp.aggregates import AggregatesFold
from mdp.halts import HaltsFold
from mdp.momentum import Momentum
from mdp.plan import Planner
from mdp.plugins import PluginError, PluginFold, Publish, Store, load
from mdp.quotes import QuotesFold
from mdp.raw import RawFold
from mdp.trades import TradesFold
from mdpipe.settings import ConfigError, MdpSettings
from mdpipe.settings import load as load_settings
from mdq.message import Batch

from .strategies import JSON

T0 = 1_763_649_000_000  # 2025-11-20 09:30:00 New York
NY = TradingDay("America/New_York", "04:00")


def trade(sym="AAPL", p=190.0, s=100, t=T0, q=1, **kw: Any) -> dict[str, Any]:
    return {"ev": "T", "sym": sym, "p": p, "s": s, "t": t, "q": q, "x": 4, "i": str(q), **kw}


def quote(sym="AAPL", bp=189.9, ap=190.0, t=T0, q=1) -> dict[str, Any]:
    return {
        "ev": "Q",
        "sym": sym,
        "bp": bp,
        "bs": 100,
        "ap": ap,
        "as": 200,
        "t": t,
        "q": q,
        "bx": 12,
        "ax": 11,
    }


def bar(ev="AM", sym="AAPL", s=T0, o=190.0, h=191.0, low=189.0, c=190.5, v=1000, **kw: Any) -> dict[str, Any]:
    span = 60_000 if ev == "AM" else 1000
    return {"ev": ev, "sym": sym, "s": s, "e": s + span, "o": o, "h": h, "l": low, "c": c, "v": v, **kw}


def ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp() * 1000)


# -- trading day -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "day"),
    [
        ("2025-11-20T09:30:00-05:00", "2025-11-20"),
        ("2025-11-20T03:59:59.999-05:00", "2025-11-19"),  # before 04:00: still the previous day
        ("2025-11-20T04:00:00-05:00", "2025-11-20"),
        ("2025-11-20T23:59:00-05:00", "2025-11-20"),
        ("2025-03-09T03:30:00-04:00", "2025-03-08"),  # the spring-forward night
        ("2025-03-09T04:00:00-04:00", "2025-03-09"),
        ("2025-11-02T04:00:00-05:00", "2025-11-02"),  # the fall-back day
    ],
)
def test_trading_day_starts_at_the_configured_local_time(when, day):
    assert TradingDay("America/New_York", "04:00")(ms(when)) == day


def test_trading_day_bounds_and_cache_agree():
    day = TradingDay("America/New_York", "04:00")
    lo, hi = day.bounds("2025-11-20")
    assert (day(lo), day(hi - 1), day(hi), day(lo - 1)) == (
        "2025-11-20",
        "2025-11-20",
        "2025-11-21",
        "2025-11-19",
    )
    assert hi - lo == 86_400_000
    short_lo, short_hi = day.bounds("2025-03-08")  # 23 hours: clocks go forward that night
    assert short_hi - short_lo == 23 * 3_600_000


def test_trading_day_other_zone():
    assert TradingDay("Europe/London", "08:00")(ms("2025-11-20T07:59:00+00:00")) == "2025-11-19"


# -- trades ----------------------------------------------------------------------------------------


def fold_trades(events, exclude=frozenset({37})):
    return TradesFold(NY, exclude).fold(events)


def test_trades_fold_per_symbol():
    out = fold_trades([
        trade(p=190.0, s=100, t=T0, q=1),
        trade(p=191.0, s=50, t=T0 + 5, q=3, c=[37]),  # odd lot: volume only
        trade(p=189.5, s=10, t=T0 + 2, q=2),  # older than the previous one: not the last
        trade(sym="MSFT", p=420.0, s=1, t=T0, q=9),
    ])  # fmt: skip
    assert out.invalid == [] and out.events == 4
    aapl, msft = out.records
    assert (aapl.sym, aapl.day, aapl.n, aapl.v) == ("AAPL", "2025-11-20", 3, 160)
    assert (aapl.hi, aapl.hi_t, aapl.lo, aapl.lo_t) == (190.0, T0, 189.5, T0 + 2)
    assert aapl.newest == (T0 + 2, 2, 189.5)  # the newest eligible trade: (t, q, p)
    assert aapl.first == (T0, 1, 190.0)
    assert (aapl.trades[-1]["t"], aapl.trades[-1]["q"], aapl.t_min) == (T0 + 5, 3, T0)  # newest of all
    assert [orjson.loads(m)["q"] for m in aapl.encoded] == [1, 2, 3]  # sorted by time, each encoded once
    assert [tr["t"] for tr in aapl.trades] == [T0, T0 + 2, T0 + 5]
    assert aapl.encoded[-1].startswith(b'{"t":%d,"q":3' % (T0 + 5))  # a takeover reads this prefix
    assert msft.sym == "MSFT" and msft.n == 1


def test_trades_fold_all_excluded_sets_no_price():
    (record,) = fold_trades([trade(c=[37]), trade(q=2, c=[37])]).records
    assert (record.n, record.v, record.hi) == (2, 200, None)  # count, volume, no high
    assert record.newest is None and record.first is None  # no last, no open


def test_trades_fold_keeps_the_newest_trades_per_update(monkeypatch):
    monkeypatch.setattr(trades_module, "TRADES_PER_UPDATE", 10)
    (record,) = fold_trades([trade(q=i, t=T0 + i) for i in range(50)]).records
    assert [orjson.loads(m)["q"] for m in record.encoded] == list(range(40, 50))
    assert (record.n, record.v) == (50, 5000)  # every trade still counts


def test_trades_fold_splits_a_day_boundary():
    late = ms("2025-11-21T03:59:59-05:00")
    out = fold_trades([trade(t=late), trade(t=late + 2000, q=2)])
    assert [(r.sym, r.day) for r in out.records] == [("AAPL", "2025-11-20"), ("AAPL", "2025-11-21")]


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"ev": "T", "p": 1.0, "s": 1, "t": T0}, "symbol"),
        (trade(sym="A B"), "symbol"),
        (trade(sym=5), "symbol"),
        (trade(p="190"), "p must be"),
        (trade(p=-1), "p must be"),
        (trade(p=True), "p must be"),
        (trade(s=None), "s must be"),
        (trade(t=T0 * 1_000_000), "t must be"),  # ns, not ms
        (trade(t=T0 / 1000), "t must be"),
        (trade(q=-1), "q must be"),
        (trade(c="37"), "c must be"),
        (trade(c=[{"a": 1}]), "c must be"),
        (trade(x="NYSE"), "x must be"),
        (trade(i=[1]), "i must be"),
    ],
)
def test_trades_fold_refuses_bad_events_with_a_reason(event, reason):
    out = fold_trades([event, trade(q=7)])
    assert [r for _, r in out.invalid] and reason in out.invalid[0][1]
    assert out.invalid[0][0] is event
    assert out.events == 1 and len(out.records) == 1  # the good one is kept


# -- quotes, aggregates, halts, raw ----------------------------------------------------------------


def test_quotes_fold_keeps_the_newest_per_symbol():
    out = QuotesFold().fold([quote(t=T0 + 5, q=5, bp=10.0, ap=10.2), quote(t=T0, q=9), quote(sym="X", q=1)])
    assert out.events == 3
    by_sym = {r[0]: r for r in out.records}
    doc = orjson.loads(by_sym["AAPL"][3])
    assert (by_sym["AAPL"][1], by_sym["AAPL"][2]) == (T0 + 5, 5)
    assert doc == {"t": T0 + 5, "q": 5, "bp": 10.0, "bs": 100, "bx": 12, "ap": 10.2, "as": 200, "ax": 11,
                   "spread": 0.2, "mid": 10.1}  # fmt: skip
    assert list(doc)[:2] == ["t", "q"]


STAMP = 1_795_185_000_123_456_789  # the emulator's _st (SIM_SEND_TS): ns since the epoch


@pytest.mark.parametrize("stamp", [STAMP, None, str(STAMP), -1, 0, 2**63, 1.5, True])
def test_trades_and_quotes_carry_the_emulators_send_stamp_when_it_is_valid(stamp):
    extra = {} if stamp is None else {"_st": stamp}
    (record,) = fold_trades([trade(q=1), {**trade(t=T0 + 1, q=2), **extra}]).records
    quotes = QuotesFold().fold([quote(q=1), {**quote(t=T0 + 1, q=2), **extra}])
    valid = stamp == STAMP
    newest_trade, quote_doc = orjson.loads(record.encoded[-1]), orjson.loads(quotes.records[0][3])
    assert newest_trade.get("_st") == quote_doc.get("_st") == (stamp if valid else None)
    assert "_st" not in orjson.loads(record.encoded[0])  # only the stamped event carries one
    assert record.encoded[-1].startswith(b'{"t":%d,"q":2' % (T0 + 1))  # the prefix a takeover reads
    assert quotes.records[0][3].startswith(b'{"t":%d,"q":2' % (T0 + 1))
    assert record.n == 2 and quotes.events == 2 and quotes.invalid == []  # a bad stamp refuses nothing


def test_quotes_fold_refuses_bad_prices():
    out = QuotesFold().fold([{**quote(), "bp": "x"}, {**quote(), "as": -5}, quote()])
    assert len(out.invalid) == 2 and out.events == 1


def test_aggregates_fold():
    out = AggregatesFold(NY).fold([
        bar("A", s=T0, h=191.0, c=190.2),
        bar("A", s=T0 + 1000, h=190.5, low=188.0, c=189.0),
        bar("AM", s=T0 - 60_000, op=189.0, av=5000, a=189.9, c=189.1),
        bar("AM", s=T0 - 60_000, op=189.0, av=5000, a=189.9, c=189.2),  # a correction replaces it
    ])  # fmt: skip
    assert out.events == 4 and out.invalid == []
    (bars,) = out.records
    second_t, second = bars.second
    assert orjson.loads(second)["t"] == second_t == T0 + 1000
    assert [(m[0], orjson.loads(m[1])["c"]) for m in bars.minutes] == [(T0 - 60_000, 189.2)]
    assert (bars.end, bars.close) == (T0 + 2000, 189.0)  # the bar with the latest end
    assert (bars.op, bars.av, bars.vwap) == (189.0, 5000, (T0, 189.9))  # from the bars that carry them
    assert (bars.hi, bars.hi_t, bars.lo, bars.lo_t) == (191.0, T0 + 1000, 188.0, T0 + 2000)


@pytest.mark.parametrize(
    "event",
    [
        bar(h=1.0, low=2.0),
        bar(s=T0, e=T0 - 1),
        bar(v="1"),
        bar(op="x"),
        bar(c=200.0),
        {"ev": "AM", "sym": "A"},
    ],
)
def test_aggregates_fold_refuses_inconsistent_bars(event):
    out = AggregatesFold(NY).fold([event])
    assert len(out.invalid) == 1 and out.records == []


def test_halts_fold():
    fold = HaltsFold(frozenset({15}))
    out = fold.fold([
        {"ev": "LULD", "T": "ABC", "h": 11.0, "l": 9.0, "i": [15], "t": T0, "q": 1},
        {"ev": "LULD", "T": "XYZ", "h": 11.0, "l": 9.0, "i": [], "t": T0, "q": 1},
        {"ev": "LULD", "T": "XYZ", "h": 9.0, "l": 11.0, "t": T0, "q": 2},  # bands upside down
    ])  # fmt: skip
    assert len(out.invalid) == 1
    halted = {r[0]: r[4] for r in out.records}
    assert halted == {"ABC": True, "XYZ": False}
    assert orjson.loads(out.records[0][3]) == {
        "t": T0,
        "q": 1,
        "upper": 11.0,
        "lower": 9.0,
        "i": [15],
        "halted": True,
    }


def test_raw_fold_groups_by_type():
    out = RawFold().fold([{"ev": "NOI", "T": "A"}, {"ev": "NOI", "T": "B"}, {"ev": "x y"}, {"no": "ev"}])
    assert {r[0]: len(r[1]) for r in out.records} == {"NOI": 2, "unknown": 2}


# -- planning --------------------------------------------------------------------------------------


def planner(**overrides: Any) -> Planner:
    mdp = load_settings(MdpSettings, **{"mdp_plugins": "", **overrides})
    return Planner(mdp, load(mdp.plugin_names, mdp))


def batch(events: list[Any], seq: int = 1) -> Batch:
    return Batch(events, "trades", time.time_ns(), "src", seq, "mdq.trades")


def test_plan_routes_every_event():
    events = [trade(sym=f"S{i}") for i in range(5)] + [quote(), bar(), {"ev": "NOI", "T": "A"}, [1], "x"]
    plan = planner().plan(batch(events))
    assert plan.events == {"trades": 5, "quotes": 1, "aggregates": 1, "raw": 1}
    assert [(f.kind, len(f.records)) for f in plan.folded] == [
        ("trades", 5), ("quotes", 1), ("aggregates", 1), ("raw", 1),
    ]  # fmt: skip
    assert plan.symbols == {"S0", "S1", "S2", "S3", "S4", "AAPL"}  # whose state the merge needs
    assert [reason for _, reason in plan.invalid] == ["not a JSON object"] * 2


def test_plan_folds_a_group_of_messages_per_symbol():
    first = batch([quote(bp=1.0, ap=1.1, q=1), trade(s=100, q=1)], seq=1)
    second = batch([quote(bp=1.2, ap=1.3, q=2, t=T0 + 1), trade(s=50, q=2, t=T0 + 1)], seq=2)
    plan = planner().plan(first, second)
    assert plan.events == {"quotes": 2, "trades": 2}
    (quotes,) = [f.records for f in plan.folded if f.kind == "quotes"]
    assert [(r[0], orjson.loads(r[3])["bp"]) for r in quotes] == [("AAPL", 1.2)]  # one write, the newest
    (trades,) = [f.records for f in plan.folded if f.kind == "trades"]
    assert [(r.sym, r.n, r.v) for r in trades] == [("AAPL", 2, 150)]


def test_plan_gives_plugins_their_events():
    plan = planner(mdp_plugins="momentum").plan(batch([bar(), trade()]))
    assert {f.kind for f in plan.folded} == {"aggregates", "trades"}  # no signal from one bar
    assert "plugin" not in plan.events


EVENTISH = st.fixed_dictionaries(
    {"ev": st.sampled_from(["T", "Q", "A", "AM", "LULD", "NOI"])},
    optional={
        k: JSON for k in ("sym", "T", "p", "s", "t", "q", "c", "bp", "ap", "o", "h", "l", "e", "i", "v")
    },
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(JSON, EVENTISH), max_size=30))
def test_plan_accounts_for_every_event_whatever_it_is(events):
    """Fuzz: any JSON at all is either applied by exactly one fold or refused with a reason; nothing raises
    and every symbol the merge will need is named."""
    plan = planner().plan(batch(events))
    assert sum(plan.events.values()) + len(plan.invalid) == len(events)
    for folded in plan.folded:
        if folded.kind in ("trades", "aggregates"):
            assert {r.sym for r in folded.records} <= plan.symbols
        elif folded.kind in ("quotes", "halts"):
            assert {r[0] for r in folded.records} <= plan.symbols


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.builds(
            trade,
            sym=st.sampled_from(["A", "B"]),
            p=st.floats(0.01, 1e6),
            s=st.integers(0, 10**6),
            t=st.integers(T0, T0 + 10**8),
            q=st.integers(0, 10**6),
            c=st.lists(st.sampled_from([0, 12, 37]), max_size=2),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_trades_fold_agrees_with_a_plain_recomputation(trades):
    out = fold_trades(trades)
    for record in out.records:
        mine = [tr for tr in trades if tr["sym"] == record.sym and NY(tr["t"]) == record.day]
        eligible = [tr for tr in mine if 37 not in tr["c"]]
        assert record.n == len(mine) and record.v == sum(tr["s"] for tr in mine)
        if eligible:
            assert record.hi == max(tr["p"] for tr in eligible) and record.lo == min(
                tr["p"] for tr in eligible
            )
            newest = max(eligible, key=lambda tr: (tr["t"], tr["q"]))
            assert record.newest == (newest["t"], newest["q"], newest["p"])
        else:
            assert record.hi is None and record.newest is None


# -- plug-ins --------------------------------------------------------------------------------------


class Echo:
    name = "echo"
    events = frozenset({"T"})

    def process(self, events):
        return [
            Publish("signals.echo", "seen", events[0]["t"], {"n": len(events)}),
            Store("last", events[-1]),
        ]


class Rogue(Echo):
    name = "rogue"

    def process(self, events):
        return [Publish("trades.AAPL", "fake", 1, {}), Store("bad key!", 1), "not an output"]


class Broken(Echo):
    name = "broken"

    def process(self, events):
        raise RuntimeError("boom")


def test_plugins_load_by_entry_point_and_dotted_path():
    (momentum,) = load(["momentum"], None)
    assert isinstance(momentum, Momentum)
    (echo,) = load([f"{__name__}:Echo"], None)
    out = PluginFold(echo).fold([trade()])
    assert out.records[0] == ["pub", "signals.echo", "seen", T0, '{"n":1}']
    assert out.records[1][:2] == ["set", "echo:last"]


@pytest.mark.parametrize("name", ["nope", "tests.nothing:Echo", f"{__name__}:Missing"])
def test_plugins_that_cannot_load_are_a_clear_error(name):
    with pytest.raises(PluginError, match="plug-in"):
        load([name], None)


def test_plugin_outputs_outside_its_namespace_are_refused_and_failures_counted():
    rogue = PluginFold(load([f"{__name__}:Rogue"], None)[0])
    assert rogue.fold([trade()]).records == [] and rogue.errors == 3
    broken = PluginFold(load([f"{__name__}:Broken"], None)[0])
    assert broken.fold([trade()]).records == [] and broken.errors == 1


def test_plugins_setting_is_validated():
    with pytest.raises(ConfigError, match="MDP_PLUGINS"):
        load_settings(MdpSettings, mdp_plugins="a b")


def test_momentum_signals_a_cross():
    m = Momentum()
    closes = [100.0] * 25 + [110.0] * 5 + [90.0] * 10
    out = []
    for i, c in enumerate(closes):
        out += m.process([bar(s=T0 + i * 60_000, c=c, h=max(c, 191.0), low=min(c, 89.0), o=c)])
    sides = [o.data["side"] for o in out if isinstance(o, Publish)]
    assert sides[:2] == ["buy", "sell"]
    assert all(o.channel == "signals.momentum" for o in out if isinstance(o, Publish))
    assert m.process([bar(s=T0, c=1.0)]) == []  # an older bar changes nothing


# -- names and envelope ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "known"),
    [("trades.AAPL", True), ("bars.O:SPY251219C00650000", True), ("stats.BRK.B", True),
     ("leaders.gainers", True), ("leaders.nope", False), ("halts", True), ("alerts", True),
     ("alerts.x", False), ("signals.momentum", True), ("trades.", False), ("trades.A B", False),
     ("secret", False), ("trades.*", False)],
)  # fmt: skip
def test_known_channels(channel, known):
    assert is_known_channel(channel) is known


def test_names_refuse_a_bad_prefix():
    with pytest.raises(ValueError, match="prefix"):
        Names("md:x")


@pytest.mark.parametrize(
    ("channel", "redis_name"),
    [("stats.AAPL", "md:stats.{AAPL}"), ("trades.O:SPY251219C00650000", "md:trades.{O:SPY251219C00650000}"),
     ("trades.*", "md:trades.{*}"), ("bars.A?", "md:bars.{A?}"), ("leaders.volume", "md:{md}:leaders.volume"),
     ("halts", "md:{md}:halts"), ("signals.x.AAPL", "md:{md}:signals.x.AAPL"),
     ("signals.*", "md:{md}:signals.*"), ("*", "md:*")],
)  # fmt: skip
def test_a_symbols_channel_carries_it_as_a_hash_tag_as_its_keys_do(channel, redis_name):
    names = Names("md")
    assert names.redis_channel(channel) == redis_name
    assert names.channel_of(redis_name) == names.channel_of(redis_name.encode()) == channel
    sym = channel.partition(".")[2]
    if redis_name.endswith("}") and "*" not in sym and "?" not in sym:  # one slot: the same hash tag
        assert {n.rpartition("{")[2] for n in (redis_name, names.stats(sym), names.trades(sym))} == {
            sym + "}"
        }


def test_envelope_round_trip_and_validation():
    raw = envelope.encode("stats", "stats.A", 3, T0, T0 + 1, "me", {"last": 1.5})
    assert envelope.decode(raw) == envelope.Update("stats", "stats.A", 3, T0, T0 + 1, "me", {"last": 1.5})
    for bad in (b"{", b"[]", b'{"type":"x"}', orjson.dumps({**orjson.loads(raw), "seq": "3"})):
        with pytest.raises(envelope.MalformedUpdate):
            envelope.decode(bad)


def test_plan_routes_an_unhashable_event_type_to_raw():
    """Found by the fuzz test: ``ev`` as a list or an object once raised TypeError in the routing."""
    plan = planner(mdp_plugins="momentum").plan(batch([{"ev": []}, {"ev": {"a": 1}}, trade()]))
    assert sum(plan.events.values()) + len(plan.invalid) == 3 and plan.events["trades"] == 1


@pytest.mark.parametrize(
    ("classes", "shards", "ok"),
    [
        ("trades,aggregates,quotes", 1, True),
        ("trades.0,aggregates.0,quotes", 2, True),
        ("quotes,halts", 2, True),
        ("trades", 1, False),
        ("trades.0,aggregates", 2, False),
        ("aggregates.1", 2, False),
    ],
)
def test_a_replica_takes_trades_and_aggregates_of_the_same_shards(classes, shards, ok):
    """Both feed a symbol's day stats, which one replica owns in memory."""
    from mdp.service import queues_for
    from mdpipe.settings import MdqSettings

    if ok:
        assert queues_for(classes.split(","), MdqSettings(mdq_shards=shards))
    else:
        with pytest.raises(ConfigError, match="trades and aggregates both feed"):
            queues_for(classes.split(","), MdqSettings(mdq_shards=shards))
