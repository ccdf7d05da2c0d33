"""Fast unit and fuzz tests of MDL's sans-I/O parts: router, hand-off, backoff, control parsing,
settings. No sockets."""

from __future__ import annotations

import itertools
import random
from collections import Counter, deque

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdl.control import (
    MAX_CONTROL_BYTES,
    ControlError,
    Desired,
    parse_action,
    parse_desired,
    parse_subscriptions,
)
from mdl.handoff import Handoff, Received
from mdl.router import UNKNOWN, FrameError, Routed, Router, _cut
from mdpipe import massive
from mdpipe.backoff import Backoff
from mdpipe.settings import ConfigError, MdlSettings, load
from mdq import topology
from mdq.batching import Batcher
from mdq.message import MalformedMessage, decode
from tests.strategies import JSON, JSON_SCALARS, result_or_reason

FUZZ = settings(max_examples=75, deadline=None)


# -- router --------------------------------------------------------------------------------------------


def _frame(*events) -> bytes:
    return orjson.dumps(list(events))


def _text(event) -> str:
    """An event as the router hands it on: its compact JSON text without the outer braces."""
    return orjson.dumps(event).decode()[1:-1]


def _route(router: Router, frame: str | bytes) -> Routed:
    """``router.route(frame)``, checked against the full parse: one result whichever path it took.

    Only for compact frames (what orjson writes), where the two paths must agree exactly.
    """
    routed = router.route(frame)
    parsed = router._route_parsed(frame.decode() if isinstance(frame, bytes) else frame)
    assert routed == parsed
    assert list(routed.groups) == list(parsed.groups)  # same order of first appearance
    return routed


def _queues(routed: Routed) -> dict[str, list[str]]:
    return {queue: events for queue, (_, events) in routed.groups.items()}


def _event(text: str):
    return orjson.loads("{" + text + "}")


STOCK_EVENTS = [
    {"ev": "T", "sym": "AAPL", "p": 1.5, "s": 100},
    {"ev": "Q", "sym": "AAPL", "bp": 1.4, "ap": 1.6},
    {"ev": "A", "sym": "MSFT", "o": 1},
    {"ev": "AM", "sym": "MSFT", "o": 2},
    {"ev": "LULD", "T": "TSLA", "h": 10.0, "l": 9.0},
    {"ev": "NOI", "T": "NVDA", "o": 5, "p": 7},
    {"ev": "FMV", "sym": "AAPL", "fmv": 1.5},
]


def test_route_stocks_by_class():
    frame = _frame(*STOCK_EVENTS)
    assert _cut(frame.decode()) is not None  # the vendor's form: the fast path
    routed = _route(Router("stocks", "mdq"), frame)
    t = [_text(e) for e in STOCK_EVENTS]
    assert _queues(routed) == {
        "mdq.trades": [t[0]],
        "mdq.quotes": [t[1]],
        "mdq.aggregates": [t[2], t[3]],
        "mdq.halts": [t[4]],
        "mdq.imbalances": [t[5]],
        "mdq.values": [t[6]],
    }
    assert {q: cls for q, (cls, _) in routed.groups.items()} == {
        "mdq.trades": "trades",
        "mdq.quotes": "quotes",
        "mdq.aggregates": "aggregates",
        "mdq.halts": "halts",
        "mdq.imbalances": "imbalances",
        "mdq.values": "values",
    }
    assert routed.counts == {"T": 1, "Q": 1, "A": 1, "AM": 1, "LULD": 1, "NOI": 1, "FMV": 1}
    assert routed.statuses == []
    assert routed.invalid == 0


@pytest.mark.parametrize("fast", [True, False])
def test_route_keeps_each_event_text_and_order(fast):
    trades = [{"ev": "T", "sym": s, "i": str(n), "x": n} for n, s in enumerate(["B", "A", "C", "A", "B"])]
    quotes = [{"ev": "Q", "sym": "Z", "n": n} for n in range(3)]
    if not fast:  # a nested value sends the frame down the full path
        quotes[1]["c"] = {"nested": [1, {"x": None}]}
    mixed = [trades[0], quotes[0], trades[1], trades[2], quotes[1], trades[3], quotes[2], trades[4]]
    frame = orjson.dumps(mixed)
    assert (_cut(frame.decode()) is not None) is fast
    routed = _route(Router("stocks", "ex"), frame)
    assert _queues(routed) == {
        "ex.trades": [_text(e) for e in trades],
        "ex.quotes": [_text(e) for e in quotes],
    }
    assert list(routed.groups) == ["ex.trades", "ex.quotes"]  # in order of first appearance
    assert routed.counts == {"T": 5, "Q": 3}


def test_route_unknown_objects_go_to_other_and_non_objects_are_invalid():
    unknown = [
        {"ev": "ZZ", "sym": "AAPL"},  # unknown type
        {"ev": "XT", "pair": "BTC-USD"},  # a crypto type on the stocks feed
        {"ev": 5},  # ev not a string
        {"ev": None},
        {"sym": "AAPL"},  # no ev
        {},
    ]
    not_objects = [[{"ev": "T"}], "T", 7, None, True, 1.5, []]
    elements = [x for pair in itertools.zip_longest(unknown, not_objects, fillvalue=7) for x in pair]
    router = Router("stocks", "mdq")
    routed = _route(router, orjson.dumps(elements))
    assert _queues(routed) == {"mdq.other": [_text(e) for e in unknown]}
    assert routed.groups["mdq.other"][0] == "other"
    assert routed.counts == {UNKNOWN: len(unknown)}
    assert routed.invalid == len(elements) - len(unknown) == 8
    assert routed.statuses == []
    # unknown types on the fast path go to other as well
    fast = _frame(*unknown[:2], {"ev": "", "sym": "X"})
    assert _cut(fast.decode()) is not None
    routed = _route(router, fast)
    assert _queues(routed) == {"mdq.other": [_text(e) for e in orjson.loads(fast)]}
    assert (routed.counts, routed.invalid) == ({UNKNOWN: 3}, 0)
    # nothing but non-objects: nothing routed, everything counted invalid
    routed = _route(router, b'[1,"x",[{"ev":"T"}],null]')
    assert (routed.groups, routed.counts, routed.statuses, routed.invalid) == ({}, {}, [], 4)


def test_route_statuses_are_extracted_not_routed():
    status = massive.status_event("auth_success", "authenticated")
    odd_status = {"ev": "status", "status": 3}
    trade = {"ev": "T", "sym": "AAPL"}
    routed = _route(Router("stocks", "mdq"), _frame(status, trade, odd_status))
    assert routed.statuses == [status, odd_status]
    assert _queues(routed) == {"mdq.trades": [_text(trade)]}
    assert routed.counts == {"T": 1}
    only = _route(Router("stocks", "mdq"), _frame(status))
    assert (only.groups, only.counts, only.statuses, only.invalid) == ({}, {}, [status], 0)


def test_route_empty_frame():
    routed = _route(Router("stocks", "mdq"), b"[]")
    assert (routed.groups, routed.statuses, routed.counts, routed.invalid) == ({}, [], {}, 0)


@pytest.mark.parametrize("kind", [bytes, str])
def test_route_accepts_str_and_bytes(kind):
    frame = _frame({"ev": "T", "sym": "É"})
    payload = frame if kind is bytes else frame.decode()
    assert _queues(_route(Router("stocks", "mdq"), payload)) == {"mdq.trades": ['"ev":"T","sym":"É"']}


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        "",
        b"not json",
        b"[1,",
        b"\xff[]",
        b'[{"ev":"T","sym":"\xff"}]',  # fast-path shaped, not UTF-8
        "[\ud800]",
        b"{}",
        b'{"ev":"T"}',
        b"1",
        b'"[]"',
        b"null",
        b"[" * 2000 + b"]" * 2000,
    ],
)
def test_route_refuses_frames_that_are_not_json_arrays(frame):
    with pytest.raises(FrameError):
        Router("stocks", "mdq").route(frame)


def test_frame_error_says_what_it_got():
    with pytest.raises(FrameError, match="dict"):
        Router("stocks", "mdq").route(b"{}")
    with pytest.raises(FrameError, match="not JSON"):
        Router("stocks", "mdq").route(b"nope")
    with pytest.raises(FrameError, match="not UTF-8"):
        Router("stocks", "mdq").route(b'[{"ev":"T","sym":"\xff"}]')


def test_route_other_markets():
    forex = Router("forex", "mdq")
    assert set(
        _queues(_route(forex, _frame({"ev": "C", "p": "EUR/USD"}, {"ev": "CA", "pair": "EUR/USD"})))
    ) == {
        "mdq.quotes",
        "mdq.aggregates",
    }
    crypto = _route(Router("crypto", "mdq"), _frame({"ev": "XT", "pair": "BTC-USD"}, {"ev": "T", "sym": "A"}))
    assert _queues(crypto) == {
        "mdq.trades": ['"ev":"XT","pair":"BTC-USD"'],
        "mdq.other": ['"ev":"T","sym":"A"'],
    }
    assert crypto.counts == {"XT": 1, UNKNOWN: 1}
    futures = _route(Router("futures/cme", "mdq"), _frame({"ev": "LULD", "T": "X"}, {"ev": "Q", "sym": "ES"}))
    assert set(_queues(futures)) == {"mdq.other", "mdq.quotes"}
    assert futures.counts == {"Q": 1, UNKNOWN: 1}


def test_route_unknown_market_sends_everything_to_other():
    router = Router("moon", "mdq")
    routed = _route(router, _frame({"ev": "T", "sym": "A"}, {"ev": "status", "status": "x"}))
    assert _queues(routed) == {"mdq.other": ['"ev":"T","sym":"A"']}
    assert len(routed.statuses) == 1
    assert routed.counts == {UNKNOWN: 1}
    fast = _route(router, _frame({"ev": "T", "sym": "A"}, {"ev": "Q"}))
    assert (_queues(fast), fast.counts) == ({"mdq.other": ['"ev":"T","sym":"A"', '"ev":"Q"']}, {UNKNOWN: 2})


@pytest.mark.parametrize(
    ("event", "queue"),
    [
        # shards from zlib.crc32 (see test_mdq_units): AAPL -> 4, MSFT -> 3, TSLA -> 7, NVDA -> 7 of 8
        ({"ev": "T", "sym": "AAPL"}, "mdq.trades.4"),
        ({"ev": "Q", "sym": "MSFT"}, "mdq.quotes.3"),
        ({"ev": "AM", "sym": "TSLA"}, "mdq.aggregates.7"),
        ({"ev": "LULD", "T": "AAPL"}, "mdq.halts.4"),  # LULD and NOI name the symbol in T
        ({"ev": "NOI", "T": "MSFT", "p": 9}, "mdq.imbalances.3"),
        ({"ev": "FMV", "sym": "NVDA"}, "mdq.values.7"),
        ({"ev": "ZZ", "sym": "AAPL"}, "mdq.other.4"),  # unknown types are sharded too
        ({"ev": "T"}, "mdq.trades.0"),  # no symbol: shard 0
        ({"ev": "T", "sym": 5}, "mdq.trades.0"),
        ({"ev": "T", "x": 1, "sym": "AAPL"}, "mdq.trades.4"),  # the symbol is not always next to ev
        ({"ev": "T", "T": "MSFT", "sym": "AAPL"}, "mdq.trades.4"),  # sym before T, wherever they are
        ({"ev": "T", "sym": 5, "T": "MSFT"}, "mdq.trades.3"),  # the first symbol field holding a string
        ({"ev": "T", "p": 1.5, "pair": "MSFT"}, "mdq.trades.3"),
        ({"ev": "T", "sym": ["AAPL"], "c": ["AAPL"], "p": "MSFT"}, "mdq.trades.3"),
        ({"ev": "T", "sym": "AAPL", "s": "status"}, "mdq.trades.4"),  # full path
        ({"ev": 1, "sym": "AAPL"}, "mdq.other.0"),  # not an event: no symbol looked for
        ({"sym": "AAPL"}, "mdq.other.0"),
        ("AAPL", None),  # not an object: left out
    ],
)
def test_route_sharded_stocks(event, queue):
    routed = _route(Router("stocks", "mdq", 8), _frame(event))
    if queue is None:
        assert (routed.groups, routed.counts, routed.invalid) == ({}, {}, 1)
    else:
        assert _queues(routed) == {queue: [_text(event)]}
        assert routed.invalid == 0


@pytest.mark.parametrize(
    ("market", "event", "queue"),
    [
        ("crypto", {"ev": "XT", "pair": "ETH-USD"}, "mdq.trades.7"),
        ("crypto", {"ev": "XQ", "pair": "ETH-USD"}, "mdq.quotes.7"),
        ("forex", {"ev": "CA", "pair": "EUR/USD"}, "mdq.aggregates.2"),
        ("forex", {"ev": "CAS", "pair": "USD/JPY"}, "mdq.aggregates.4"),
    ],
)
def test_route_sharded_pairs(market, event, queue):
    assert _queues(_route(Router(market, "mdq", 8), _frame(event))) == {queue: [_text(event)]}


def test_route_sharded_forex_quotes_by_pair():
    # the vendor's forex quote: {"ev":"C","p":"USD/CNH","x":48,"a":6.83366,"b":6.83363,"t":1536036818784}
    eur = {"ev": "C", "p": "EUR/USD", "x": 48, "a": 1.1, "b": 1.0, "t": 1}
    jpy = {"ev": "C", "p": "USD/JPY", "x": 48, "a": 150.1, "b": 150.0, "t": 1}
    routed = _route(Router("forex", "mdq", 8), _frame(eur, jpy))
    assert _queues(routed) == {"mdq.quotes.2": [_text(eur)], "mdq.quotes.4": [_text(jpy)]}


def test_route_same_symbol_same_shard_queue():
    router = Router("stocks", "mdq", 5)
    symbols = ["AAPL", "MSFT", "TSLA", "NVDA", "BRK.B", "O:SPY251219C00650000"]
    frames = [_frame(*({"ev": "T", "sym": s, "n": n} for s in symbols)) for n in range(4)]
    seen: dict[str, set[str]] = {}
    for frame in frames:
        for queue, events in _queues(_route(router, frame)).items():
            for text in events:
                seen.setdefault(_event(text)["sym"], set()).add(queue)
    assert all(len(queues) == 1 for queues in seen.values())
    assert {s: q.pop() for s, q in seen.items()} == {
        s: f"mdq.trades.{topology.shard_of(s, 5)}" for s in symbols
    }


def _same_routing(routed: Routed, parsed: Routed) -> None:
    """The same events in the same places, each text possibly written differently."""
    assert list(routed.groups) == list(parsed.groups)
    for queue, (cls, events) in routed.groups.items():
        assert cls == parsed.groups[queue][0]
        assert list(map(_event, events)) == list(map(_event, parsed.groups[queue][1]))
    assert routed.counts == parsed.counts
    assert (routed.statuses, routed.invalid) == (parsed.statuses, parsed.invalid)


def _loosen(frame: str, before_colon: str, after_colon: str, after_comma: str) -> str:
    """``frame`` (with no escapes: no quote inside a string) with whitespace added between the tokens
    inside each event, but not around the seams nor after each event's first key."""
    pieces = frame.split('"')  # odd pieces are the strings
    for i in range(2, len(pieces), 2):
        if pieces[i - 1] == "ev" and pieces[i - 2].endswith("{"):
            continue  # the ":" of '{"ev":"'
        piece = pieces[i].replace("},{", "\0").replace(":", f"{before_colon}:{after_colon}")
        pieces[i] = piece.replace(",", f",{after_comma}").replace("\0", "},{")
    return '"'.join(pieces)


@pytest.mark.parametrize(
    "frame",
    [
        '[{"ev":"T","sym": "AAPL"}]',
        '[{"ev":"T","sym" :"AAPL","s":1}]',
        '[{"ev":"LULD","h":1, "T": "AAPL"}]',
        '[{"ev":"T","x":1,"sym":\t"AAPL" },{"ev":"Q", "T" :\n"MSFT"}]',
    ],
)
def test_whitespace_inside_an_event_keeps_its_text_and_its_shard(frame):
    """Whitespace inside an event does not stop the fast path: the text is kept as received (valid JSON)
    and the symbol is still found, so the event goes to its symbol's shard as on the full path."""
    parts = _cut(frame)
    assert parts is not None
    router = Router("stocks", "mdq", 8)
    routed, parsed = router.route(frame), router._route_parsed(frame)
    assert [t for _, events in routed.groups.values() for t in events] == parts
    _same_routing(routed, parsed)
    assert next(iter(routed.groups)).endswith(".4")  # AAPL


def test_a_lone_surrogate_in_a_str_frame_never_stops_the_publisher():
    """Not reachable from the vendor (websockets hands over valid UTF-8 only), but route() takes any str:
    such a frame is refused, or routed into a body that the Batcher can make and the consumer rejects."""
    frame = '[{"ev":"T","sym":"\ud800"},{"ev":"T","sym":"AAPL"}]'
    try:
        routed = Router("stocks", "mdq").route(frame)
    except FrameError:
        return
    batcher = Batcher("src", 10)
    for queue, (cls, events) in routed.groups.items():
        batcher.add(queue, cls, events, 1)
    [out] = batcher.flush()
    with pytest.raises(MalformedMessage):
        decode(out.body, out.properties.headers)


def test_routed_groups_batch_into_the_original_events():
    """Router then Batcher, as the listener chains them: every consumer gets back the events it is owed."""
    router, batcher = Router("stocks", "mdq", 2), Batcher("src", 3)
    frames = [
        _frame(*STOCK_EVENTS),
        _frame(STOCK_EVENTS[0], {"ev": "T", "sym": "MSFT", "c": {"x": [1]}}, 5),  # full path
        _frame({"ev": "ZZ"}, *STOCK_EVENTS[:2]),
    ]
    expected: dict[str, list] = {}
    for n, frame in enumerate(frames):
        for queue, (cls, events) in router.route(frame).groups.items():
            batcher.add(queue, cls, events, n)
        for event in orjson.loads(frame):
            queue = _model_queue(event, "stocks", 2) if isinstance(event, dict) else None
            if queue is not None:
                expected.setdefault(queue, []).append(event)
    got: dict[str, list] = {}
    for out in batcher.flush():
        batch = decode(out.body, out.properties.headers)
        assert out.queue in topology.class_queues("mdq", batch.cls, 2)
        got.setdefault(out.queue, []).extend(batch.events)
    assert got == expected


# -- the fast path -------------------------------------------------------------------------------------


def test_cut_a_compact_frame_of_flat_events():
    assert _cut('[{"ev":"T"}]') == ['"ev":"T"']
    frame = '[{"ev":"T","sym":"A","p":1.5,"c":[1,2]},{"ev":"Q","sym":"é: [x], y","bp":null},{"ev":"ZZ"}]'
    assert _cut(frame) == [
        '"ev":"T","sym":"A","p":1.5,"c":[1,2]',
        '"ev":"Q","sym":"é: [x], y","bp":null',
        '"ev":"ZZ"',
    ]


@pytest.mark.parametrize(
    "frame",
    [
        '[{"ev":"T"}, {"ev":"Q"}]',  # whitespace between elements
        '[{"ev":"T"},\n{"ev":"Q"}]',
        '[ {"ev":"T"}]',
        '[{"ev":"T"} ]',
        '[{"ev":"T","x":{"a":1}}]',  # nested objects
        '[{"ev":"T","x":{"ev":"Q"}}]',
        '[{"ev":"T","x":[{"ev":"Q"},{"ev":"Q"}]}]',
        '[{"ev":"T","x":{"ev":"Q"}},{"ev":"T"}]',
        '[{"ev":"T","x":"}"}]',  # braces inside a string
        '[{"ev":"T","x":"{"}]',
        '[{"ev":"T","x":"a},{b"},{"ev":"Q"}]',
        '[{"ev":"T","x":"a},{b"}]',
        '[{"ev":"T","x":"a\\"b"}]',  # a backslash inside a string
        '[{"ev":"T","x":"\\u00e9"}]',
        '[{"ev":"T\\n"}]',
        '[{"sym":"A","ev":"T"}]',  # an object not starting with ev
        '[{"ev":"T"},{"sym":"A","ev":"T"}]',
        '[{"ev":"T"},{}]',
        '[{"ev":5}]',  # ev not a string
        '[{"ev":"status","status":"connected"}]',  # a status event
        '[{"ev":"T"},{"ev":"status","status":"auth_success","message":"authenticated"}]',
        '[{"ev":"T"},1]',  # a non-object element
        '[1,{"ev":"T"}]',
        '[{"ev":"T"},[{"ev":"Q"}]]',
        "[]",
        "",
        '{"ev":"T"}',
    ],
)
def test_cut_refuses_anything_else(frame):
    assert _cut(frame) is None


def test_fast_path_keeps_the_received_text():
    """On the fast path each event keeps its exact text: ``1.50`` stays ``1.50`` (orjson writes ``1.5``)."""
    frame = '[{"ev":"T","sym":"AAPL","p":1.50,"s":1E2,"t":-0},{"ev":"Q","sym":"MSFT","bp":0.10,"z":1.0e-3}]'
    parts = _cut(frame)
    assert parts == [
        '"ev":"T","sym":"AAPL","p":1.50,"s":1E2,"t":-0',
        '"ev":"Q","sym":"MSFT","bp":0.10,"z":1.0e-3',
    ]
    for shards in (1, 8):
        router = Router("stocks", "mdq", shards)
        routed, parsed = router.route(frame), router._route_parsed(frame)
        assert [t for _, events in routed.groups.values() for t in events] == parts
        # the full path writes the same events again, compactly
        assert [t for _, events in parsed.groups.values() for t in events] == [
            '"ev":"T","sym":"AAPL","p":1.5,"s":100.0,"t":0',
            '"ev":"Q","sym":"MSFT","bp":0.1,"z":0.001',
        ]
        assert list(routed.groups) == list(parsed.groups)
        assert routed.counts == parsed.counts == {"T": 1, "Q": 1}
        for queue, (_, events) in routed.groups.items():
            assert list(map(_event, events)) == list(map(_event, parsed.groups[queue][1]))


def test_fast_path_checks_structure_not_values():
    """A frame shaped like the vendor's but not JSON is forwarded, as documented: the consumer rejects the
    body (the full path would have refused the frame)."""
    frame = '[{"ev":"T","sym":"AAPL","p":},{"ev":"Q","sym":"A"}]'
    router = Router("stocks", "mdq")
    with pytest.raises(FrameError):
        router._route_parsed(frame)
    routed = router.route(frame)
    assert _queues(routed) == {
        "mdq.trades": ['"ev":"T","sym":"AAPL","p":'],
        "mdq.quotes": ['"ev":"Q","sym":"A"'],
    }
    batcher = Batcher("src", 10)
    for queue, (cls, events) in routed.groups.items():
        batcher.add(queue, cls, events, 1)
    outs = {out.queue: out for out in batcher.flush()}
    with pytest.raises(MalformedMessage):
        decode(outs["mdq.trades"].body, outs["mdq.trades"].properties.headers)
    assert decode(outs["mdq.quotes"].body, outs["mdq.quotes"].properties.headers).events == [
        {"ev": "Q", "sym": "A"}
    ]


FAST_LOOKING = st.text(alphabet='{}[]",:evTQ01 \\', max_size=30).map(lambda s: '[{"ev":"' + s + "}]")


@FUZZ
@given(st.binary(max_size=60) | st.text(max_size=60) | FAST_LOOKING | FAST_LOOKING.map(str.encode))
def test_fuzz_route_arbitrary_input_only_raises_frame_error(frame):
    for shards in (1, 3):
        try:
            routed = Router("stocks", "mdq", shards).route(frame)
        except FrameError:
            continue
        assert isinstance(routed, Routed)
        assert routed.invalid >= 0
        assert all(events and all(isinstance(t, str) for t in events) for _, events in routed.groups.values())
        text = frame.decode() if isinstance(frame, bytes) else frame
        parts = _cut(text)
        if parts is None:  # the full path: a JSON array
            assert isinstance(orjson.loads(frame), list)
        else:  # the fast path: a frame of the vendor's shape, each part routed once
            assert sorted(t for _, events in routed.groups.values() for t in events) == sorted(parts)
            assert sum(routed.counts.values()) == len(parts)
            assert (routed.statuses, routed.invalid) == ([], 0)


EVENT_TYPES = sorted(set().union(*massive.EVENT_TYPES.values()) | {"status", "ZZ", ""})
EVENTS = st.fixed_dictionaries(
    {"ev": st.sampled_from(EVENT_TYPES) | JSON_SCALARS},
    optional={
        "sym": st.sampled_from(["AAPL", "MSFT", "X"]) | JSON_SCALARS,
        "T": st.sampled_from(["TSLA", "I:SPX"]) | JSON_SCALARS,
        "pair": st.sampled_from(["BTC-USD", "EUR/USD"]) | JSON_SCALARS,
        "p": JSON_SCALARS,
        "status": st.text(max_size=4),
    },
)
ELEMENTS = st.lists(EVENTS | JSON, max_size=12)


def _model_queue(element, market: str, shards: int) -> str | None:
    """Where the MDQ contract says the object ``element`` goes (None: a status, taken out)."""
    ev = element.get("ev")
    if not isinstance(ev, str):
        ev = None
    if ev == "status":
        return None
    cls = topology.EVENT_CLASSES.get(market, {}).get(ev, "other")
    symbol = None
    if ev is not None:
        fields = massive.SYMBOL_FIELDS  # sym, T, pair: pinned one by one in test_route_sharded_*
        symbol = next((element[f] for f in fields if isinstance(element.get(f), str)), None)
    return topology.class_queues("mdq", cls, shards)[topology.shard_of(symbol, shards)]


@FUZZ
@given(
    ELEMENTS,
    st.sampled_from(["stocks", "forex", "crypto", "indices", "futures"]),
    st.sampled_from([1, 4]),
    st.booleans(),
)
def test_fuzz_route_every_element_lands_exactly_once(elements, market, shards, as_text):
    raw = orjson.dumps(elements)
    routed = _route(Router(market, "mdq", shards), raw.decode() if as_text else raw)
    groups = _queues(routed)
    objects = [e for e in elements if isinstance(e, dict)]
    assert routed.invalid == len(elements) - len(objects)
    assert sum(map(len, groups.values())) + len(routed.statuses) == len(objects)
    assert sum(routed.counts.values()) == len(objects) - len(routed.statuses)
    assert all(events for events in groups.values())  # no empty groups
    expected: dict[str, list[str]] = {}
    for element in objects:
        queue = _model_queue(element, market, shards)
        if queue is not None:
            expected.setdefault(queue, []).append(_text(element))
    assert groups == expected  # same places, same frame order, same text
    assert list(groups) == list(expected)
    assert routed.statuses == [e for e in objects if _model_queue(e, market, shards) is None]
    for queue, (cls, _) in routed.groups.items():
        assert queue in topology.class_queues("mdq", cls, shards)
    labels = Counter(
        UNKNOWN if q.split(".")[1] == "other" else _event(t)["ev"]
        for q, events in groups.items()
        for t in events
    )
    assert routed.counts == dict(labels)


# Flat events as the vendor writes them, first key ev: the fast path takes every frame of them.
SYMBOLS = st.sampled_from(
    ["AAPL", "MSFT", "BRK.B", "O:SPY251219C00650000", "I:SPX", "EUR/USD", "BTC-USD", "é"]
)
SAFE_TEXT = st.text(alphabet="ABCXYZabcxyz019 .:/-,[]_é日€😀", max_size=6)  # no brace, quote or backslash
SAFE_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | SAFE_TEXT
)
SAFE_VALUES = SAFE_SCALARS | st.lists(SAFE_SCALARS, max_size=3)
SAFE_KEYS = st.sampled_from(["s", "x", "t", "c", "bp", "ap", "i", "sym_", "Ts"]) | SAFE_TEXT.filter(bool)
SAFE_EV = st.sampled_from([ev for ev in EVENT_TYPES if ev != "status"]) | SAFE_TEXT
# What makes a frame take the full path: braces, quotes, backslashes, control characters in strings,
# nested objects, a status anywhere.
# Strings that a fast path must not cut: braces and seams, quotes and escapes, control characters.
BRACES = st.sampled_from(["{", "}", "},{", '{"ev":"T"', '},{"ev":"T","sym":"AAPL', '"sym":"AAPL"'])
# Each written with an escape: the symbol read from the text would not be the symbol.
ESCAPED = st.sampled_from(['"', "\\", "\n", "\x1f", 'AA"PL', "AAPL\\", "A\nPL", "\x1fMSFT", "status"])
STRUCTURE = BRACES | ESCAPED
ROUGH_TEXT = STRUCTURE | st.text(max_size=6)
ROUGH_VALUES = ROUGH_TEXT | JSON | st.dictionaries(SAFE_TEXT, SAFE_SCALARS, max_size=2)
ROUGH_KEYS = ROUGH_TEXT.filter(lambda k: k != "ev")
ROUGH_EV = st.sampled_from(EVENT_TYPES) | ROUGH_TEXT


@st.composite
def flat_events(draw, ev=SAFE_EV, keys=SAFE_KEYS, values=SAFE_VALUES) -> dict:
    """A flat event whose first key is ev, its symbol fields (often symbols) in any order among others."""
    fields = draw(st.fixed_dictionaries({}, optional={f: SYMBOLS | values for f in massive.SYMBOL_FIELDS}))
    fields.update(draw(st.dictionaries(keys, values, max_size=4)))
    return {"ev": draw(ev), **{k: fields[k] for k in draw(st.permutations(list(fields)))}}


ROUGH_EVENTS = flat_events(ev=ROUGH_EV, keys=ROUGH_KEYS | SAFE_KEYS, values=ROUGH_VALUES | SAFE_VALUES)
STATUS_EVENTS = st.builds(massive.status_event, SAFE_TEXT, SAFE_TEXT)  # flat, ev first: only "status" differs


@st.composite
def nearly_fast_frames(draw) -> list:
    """Vendor-shaped events with one or two rough spots, each enough to send the frame down the full path:
    the frames a loose fast-path check would take and cut wrongly."""
    elements = draw(st.lists(flat_events(), max_size=8))
    for _ in range(draw(st.integers(1, 2))):
        spot = draw(
            st.sampled_from(["ev", "symbol", "key", "value", "value", "order", "order", "status", "element"])
        )
        objects = [e for e in elements if isinstance(e, dict)]
        if spot in ("ev", "symbol", "key", "value") and objects:
            event = objects[draw(st.integers(0, len(objects) - 1))]
            if spot == "ev":
                event["ev"] = draw(ROUGH_TEXT)
            elif spot == "symbol":
                event[draw(st.sampled_from(massive.SYMBOL_FIELDS))] = draw(ESCAPED | ROUGH_TEXT)
            elif spot == "key":
                event[draw(ROUGH_KEYS)] = draw(SAFE_SCALARS | SYMBOLS)
            else:
                event[draw(SAFE_KEYS)] = draw(STRUCTURE | ROUGH_VALUES)
        else:
            if spot == "order":  # a known event whose first key is not ev
                ev = draw(st.sampled_from(["T", "Q", "XT", "C", "AM"]))
                element = {
                    "sym": draw(SYMBOLS),
                    **draw(st.dictionaries(SAFE_KEYS, SAFE_VALUES, max_size=2)),
                    "ev": ev,
                }
            elif spot == "status":
                element = draw(STATUS_EVENTS)
            else:
                element = draw(JSON)
            elements.insert(draw(st.integers(0, len(elements))), element)
    return elements


WHITESPACE = st.sampled_from([" ", "\t", "\n", "\r\n", "  "])


@FUZZ
@given(
    st.lists(flat_events(), min_size=1, max_size=6),
    st.sampled_from(["stocks", "crypto", "forex", "moon"]),
    st.tuples(WHITESPACE, WHITESPACE | st.just(""), WHITESPACE | st.just("")),
)
def test_fuzz_fast_path_equals_full_path(events, market, spaces):
    frame = orjson.dumps(events).decode()
    assert _cut(frame) == [_text(e) for e in events]  # every such frame takes the fast path
    # The same events written with whitespace inside them (not around them): still the fast path, each
    # text as received, the same queues, events and counts as the full parse.
    loose = _loosen(frame, *spaces)
    assert _cut(loose) is not None
    for shards in (1, 4):
        router = Router(market, "mdq", shards)
        routed = _route(router, frame)
        assert (routed.statuses, routed.invalid) == ([], 0)
        assert sorted(t for _, events in routed.groups.values() for t in events) == sorted(map(_text, events))
        _same_routing(router.route(loose), router._route_parsed(loose))


@settings(max_examples=80, deadline=None)
@given(nearly_fast_frames(), st.sampled_from(["stocks", "crypto", "forex", "moon"]))
def test_fuzz_route_equals_full_parse_for_nearly_fast_frames(elements, market):
    frame = orjson.dumps(elements)
    for shards in (1, 4):
        _route(Router(market, "mdq", shards), frame)  # equal groups, counts, statuses, invalid


@FUZZ
@given(
    st.lists(flat_events() | ROUGH_EVENTS | STATUS_EVENTS | EVENTS | JSON, max_size=10),
    st.sampled_from(["stocks", "crypto", "forex", "moon"]),
)
def test_fuzz_route_equals_full_parse_for_any_compact_frame(elements, market):
    frame = orjson.dumps(elements)
    for shards in (1, 4):
        _route(Router(market, "mdq", shards), frame)


# -- hand-off ------------------------------------------------------------------------------------------


def _r(ns: int, size: int = 1, kind=bytes) -> Received:
    return Received(ns, kind(b"x" * size) if kind is bytes else "x" * size)


def test_handoff_put_and_take_in_order():
    h = Handoff(10, 1000)
    items = [_r(n, n + 1) for n in range(4)]
    assert all(h.put(i) == [] for i in items)
    assert (len(h), h.bytes) == (4, 1 + 2 + 3 + 4)
    assert h.take(3) == items[:3]
    assert (len(h), h.bytes) == (1, 4)
    assert h.take(10) == items[3:]
    assert (len(h), h.bytes, bool(h)) == (0, 0, False)
    assert h.take(5) == []


def test_handoff_drops_oldest_beyond_max_frames():
    h = Handoff(3, 1000)
    items = [_r(n) for n in range(5)]
    dropped = [d for i in items for d in h.put(i)]
    assert dropped == items[:2]
    assert h.take(10) == items[2:]


def test_handoff_drops_oldest_beyond_max_bytes():
    h = Handoff(100, 10)
    a, b, c = _r(1, 4), _r(2, 4), _r(3, 5, str)
    assert h.put(a) == h.put(b) == []
    assert h.put(c) == [a]  # 13 > 10: the oldest goes
    assert h.bytes == 9
    assert h.take(5) == [b, c]


def test_handoff_drops_the_new_frame_when_it_alone_is_too_big():
    h = Handoff(100, 10)
    a = _r(1, 3)
    h.put(a)
    big = _r(2, 11)
    assert h.put(big) == [a, big]
    assert (len(h), h.bytes) == (0, 0)


def test_handoff_expire():
    h = Handoff(100, 1000)
    items = [_r(ns, 2) for ns in (10, 20, 20, 30)]
    for i in items:
        h.put(i)
    assert h.expire(10) == []  # strictly before
    assert h.expire(21) == items[:3]
    assert (len(h), h.bytes) == (1, 2)
    assert h.expire(10**20) == items[3:]
    assert h.bytes == 0


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 5), st.binary(max_size=12) | st.text(max_size=12)),
        st.tuples(st.just("take"), st.integers(-1, 6)),
        st.tuples(st.just("expire"), st.integers(0, 8)),
    ),
    max_size=40,
)


@FUZZ
@given(st.integers(1, 6), st.integers(0, 40), OPS)
def test_fuzz_handoff_against_a_model(max_frames, max_bytes, ops):
    h = Handoff(max_frames, max_bytes)
    model: deque[Received] = deque()
    now = 0
    put = gone = 0
    for op in ops:
        if op[0] == "put":
            now += op[1]  # recv_ns never goes back
            item = Received(now, op[2])
            put += 1
            model.append(item)
            want = []
            while len(model) > max_frames or sum(len(i.frame) for i in model) > max_bytes:
                want.append(model.popleft())
            got = h.put(item)
        elif op[0] == "take":
            want = [model.popleft() for _ in range(min(max(op[1], 0), len(model)))]
            got = h.take(op[1])
        else:
            before = now - op[1]
            want = []
            while model and model[0].recv_ns < before:
                want.append(model.popleft())
            got = h.expire(before)
        assert got == want
        gone += len(got)
        assert len(h) == len(model) <= max_frames
        assert h.bytes == sum(len(i.frame) for i in model) <= max_bytes
    assert h.take(len(model) + 1) == list(model)
    assert h.bytes == 0
    assert gone + len(model) == put


# -- backoff -------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ceiling(initial: float, cap: float, n: int) -> float:
    return min(cap, initial * 2**n)


def test_backoff_delays_follow_the_doubling_ceiling():
    b = Backoff(0.5, 30, 60, rng=random.Random(7))
    ref = random.Random(7)
    delays = [b.next_delay() for _ in range(12)]
    ceilings = [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30]
    assert [_ceiling(0.5, 30, n) for n in range(12)] == ceilings
    for delay, d in zip(delays, ceilings, strict=True):
        assert d / 2 <= delay <= d
        assert delay == ref.uniform(d / 2, d)  # exactly one draw per delay
    assert b.attempts == 12


def test_backoff_same_seed_same_delays_and_jitter_is_real():
    a = Backoff(1, 100, 60, rng=random.Random(3))
    b = Backoff(1, 100, 60, rng=random.Random(3))
    assert [a.next_delay() for _ in range(8)] == [b.next_delay() for _ in range(8)]
    firsts = {Backoff(1, 100, 60, rng=random.Random(seed)).next_delay() for seed in range(20)}
    assert len(firsts) > 10 and all(0.5 <= d <= 1 for d in firsts)


def test_backoff_never_overflows():
    b = Backoff(0.1, 5, 1, rng=random.Random(1))
    b.attempts = 10_000
    assert 2.5 <= b.next_delay() <= 5
    assert b.attempts == 10_001


@FUZZ
@given(
    st.floats(1e-3, 10),
    st.floats(1, 1000),
    st.integers(0, 2**32),
    st.integers(1, 80),
)
def test_fuzz_backoff_delays_within_half_to_full_ceiling(initial, factor, seed, count):
    cap = initial * factor
    b = Backoff(initial, cap, 1, rng=random.Random(seed))
    for n in range(count):
        d = min(cap, initial * 2 ** min(n, 62))
        delay = b.next_delay()
        assert d / 2 <= delay <= d <= cap


def test_backoff_resets_only_after_a_healthy_connection():
    clock = FakeClock()
    b = Backoff(1, 64, healthy=30, clock=clock, rng=random.Random(0))
    for _ in range(5):
        b.next_delay()
    assert b.attempts == 5
    b.up()
    clock.now += 29.999
    b.down()  # not healthy long enough
    assert b.attempts == 5
    assert 16 <= b.next_delay() <= 32
    b.up()
    clock.now += 30  # exactly healthy
    b.down()
    assert b.attempts == 0
    assert 0.5 <= b.next_delay() <= 1


def test_backoff_down_without_up_or_twice_does_not_reset():
    clock = FakeClock()
    b = Backoff(1, 64, healthy=10, clock=clock, rng=random.Random(0))
    b.next_delay()
    b.next_delay()
    clock.now += 100
    b.down()  # never came up
    assert b.attempts == 2
    b.up()
    b.down()  # up for 0 s
    clock.now += 100
    b.down()  # the connection it measured is over
    assert b.attempts == 2


def test_backoff_up_time_is_from_the_latest_up():
    clock = FakeClock()
    b = Backoff(1, 64, healthy=10, clock=clock, rng=random.Random(0))
    b.next_delay()
    b.up()
    clock.now += 9
    b.up()  # a new connection: its own clock
    clock.now += 9
    b.down()
    assert b.attempts == 1


def test_backoff_delays_iterator():
    b = Backoff(2, 10, 5, rng=random.Random(42))
    twin = Backoff(2, 10, 5, rng=random.Random(42))
    it = b.delays()
    got = list(itertools.islice(it, 6))
    assert got == [twin.next_delay() for _ in range(6)]
    assert b.attempts == 6
    assert 5 <= next(it) <= 10  # endless, and capped


@pytest.mark.parametrize(("initial", "cap"), [(0, 1), (-1, 1), (2, 1)])
def test_backoff_refuses_bad_bounds(initial, cap):
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial, cap, 1)


# -- control parsing -----------------------------------------------------------------------------------


def test_parse_subscriptions_forms():
    assert parse_subscriptions("T.*,Q.AAPL", "stocks") == ("T.*", "Q.AAPL")
    assert parse_subscriptions(["T.*", "Q.AAPL"], "stocks") == ("T.*", "Q.AAPL")
    assert parse_subscriptions(" T.* , ,Q.AAPL,T.*", "stocks") == ("T.*", "Q.AAPL")  # trimmed, deduplicated
    assert parse_subscriptions("T.BRK.B,Q.O:SPY251219C00650000", "options") == (
        "T.BRK.B",
        "Q.O:SPY251219C00650000",
    )
    assert parse_subscriptions("C.EUR/USD,CA.*", "forex") == ("C.EUR/USD", "CA.*")
    assert parse_subscriptions("", "stocks") == ()
    assert parse_subscriptions([], "stocks") == ()


@pytest.mark.parametrize(
    ("value", "market"),
    [
        ("X.AAPL", "stocks"),
        ("C.EUR/USD", "stocks"),  # a forex type on stocks
        ("LULD.*", "crypto"),
        ("T", "stocks"),
        ("T.", "stocks"),
        ("T.AA PL", "stocks"),
        ("T." + "A" * 65, "stocks"),
        ("T.*", "moon"),
        (None, "stocks"),
        (5, "stocks"),
        (["T.*", 5], "stocks"),
        ({"T": "*"}, "stocks"),
        ("T.A," * (MAX_CONTROL_BYTES // 4 + 1), "stocks"),
    ],
)
def test_parse_subscriptions_refuses(value, market):
    with pytest.raises(ControlError):
        parse_subscriptions(value, market)


def test_parse_subscriptions_names_what_is_invalid():
    with pytest.raises(ControlError, match=r"invalid subscriptions for stocks: X\.A, Y\.B"):
        parse_subscriptions("T.*,X.A,Y.B", "stocks")


def test_parse_desired():
    assert parse_desired(b'{"subscriptions":"T.*,Q.AAPL"}', "stocks") == Desired(("T.*", "Q.AAPL"), False)
    assert parse_desired('{"subscriptions":["XT.*"],"paused":true}', "crypto") == Desired(("XT.*",), True)
    assert parse_desired(b'{"subscriptions":"","paused":false}', "stocks") == Desired((), False)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"not json", "not JSON"),
        (b"", "not JSON"),
        (b"\xff", "not JSON"),
        (b'["T.*"]', "not a JSON object"),
        (b'"T.*"', "not a JSON object"),
        (b"null", "not a JSON object"),
        (b'{"subscriptions":"T.*","extra":1,"more":2}', "unknown fields: extra, more"),
        (b'{"subscriptions":"T.*","paused":"yes"}', "paused"),
        (b'{"subscriptions":"T.*","paused":1}', "paused"),
        (b'{"subscriptions":"T.*","paused":null}', "paused"),
        (b'{"subscriptions":"XT.*"}', "invalid subscriptions for stocks"),
        (b'{"subscriptions":7}', "subscriptions must be"),
        (b'{"paused":true}', "subscriptions must be"),
    ],
)
def test_parse_desired_refuses(raw, why):
    with pytest.raises(ControlError, match=why):
        parse_desired(raw, "stocks")


def _desired_of_size(size: int) -> bytes:
    head, tail = b'{"subscriptions":"T.*', b'"}'
    raw = head + b"," * (size - len(head) - len(tail)) + tail
    assert len(raw) == size
    return raw


def test_parse_desired_size_limit():
    assert parse_desired(_desired_of_size(MAX_CONTROL_BYTES), "stocks") == Desired(("T.*",))
    with pytest.raises(ControlError, match="larger than 65536 bytes"):
        parse_desired(_desired_of_size(MAX_CONTROL_BYTES + 1), "stocks")
    with pytest.raises(ControlError, match="larger than"):
        parse_action(b" " * MAX_CONTROL_BYTES + b'{"action":"reload"}')


def test_parse_action_size_limit_counts_bytes_of_a_str():
    raw = '{"action":"reload","note":"' + "€" * 30_000 + '"}'  # ~90 KB of UTF-8, 30 030 characters
    assert len(raw.encode()) > MAX_CONTROL_BYTES
    with pytest.raises(ControlError, match="larger than"):
        parse_action(raw)


def test_parse_action():
    assert parse_action(b'{"action":"reload"}') == "reload"
    assert parse_action('{"action":"reconnect","by":"mdc"}') == "reconnect"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"action":"stop"}',
        b'{"action":"RELOAD"}',
        b"{}",
        b'{"action":["reload"]}',
        b'{"action":null}',
        b'["reload"]',
        b"reload",
        b"",
    ],
)
def test_parse_action_refuses(raw):
    with pytest.raises(ControlError):
        parse_action(raw)


def test_control_error_is_a_value_error():
    assert issubclass(ControlError, ValueError)


CONTROL_JSON = st.dictionaries(
    st.sampled_from(["subscriptions", "paused", "action", "x"]),
    st.sampled_from(["reload", "reconnect", "T.*,Q.AAPL", "XT.*"])
    | st.lists(st.sampled_from(["T.*", "Q.A", "C.EUR/USD", "bad"]) | JSON_SCALARS, max_size=3)
    | JSON,
).map(orjson.dumps)
CONTROL_RAW = st.binary(max_size=80) | st.text(max_size=40) | CONTROL_JSON | CONTROL_JSON.map(bytes.decode)


@FUZZ
@given(CONTROL_RAW, st.sampled_from(["stocks", "forex", "crypto", "moon"]))
def test_fuzz_parse_desired_only_raises_control_error(raw, market):
    desired = result_or_reason(lambda: parse_desired(raw, market), ControlError)
    if desired is None:
        return
    assert isinstance(desired, Desired)
    assert isinstance(desired.paused, bool)
    assert all(isinstance(s, str) for s in desired.subscriptions)
    assert len(set(desired.subscriptions)) == len(desired.subscriptions)
    valid, invalid = massive.parse_subscriptions(",".join(desired.subscriptions), market)
    assert invalid == [] and len(valid) == len(desired.subscriptions)


@FUZZ
@given(CONTROL_RAW)
def test_fuzz_parse_action_only_raises_control_error(raw):
    action = result_or_reason(lambda: parse_action(raw), ControlError)
    if action is None:
        return
    assert action in ("reload", "reconnect")
    assert orjson.loads(raw)["action"] == action


# -- settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"mdl_backoff_initial_s": 5, "mdl_backoff_max_s": 1}, "MDL_BACKOFF_MAX_S"),
        ({"mdl_backoff_initial_s": 0}, "MDL_BACKOFF_INITIAL_S"),
        ({"mdl_backoff_max_s": 3601}, "MDL_BACKOFF_MAX_S"),
        ({"mdl_healthy_s": 0}, "MDL_HEALTHY_S"),
        ({"mdl_batch_events": 0}, "MDL_BATCH_EVENTS"),
        ({"mdl_handoff_frames": 9}, "MDL_HANDOFF_FRAMES"),
        ({"mdl_handoff_bytes": 1000}, "MDL_HANDOFF_BYTES"),
        ({"mdl_http_port": 65536}, "MDL_HTTP_PORT"),
        ({"mdl_instance": "x" * 101}, "MDL_INSTANCE"),
    ],
)
def test_bad_mdl_settings_name_the_variable(overrides, variable):
    with pytest.raises(ConfigError, match=rf"^invalid setting {variable}\b"):
        load(MdlSettings, **overrides)


def test_backoff_order_error_from_the_environment(monkeypatch):
    monkeypatch.setenv("MDL_BACKOFF_INITIAL_S", "10")
    monkeypatch.setenv("MDL_BACKOFF_MAX_S", "2")
    with pytest.raises(ConfigError) as info:
        load(MdlSettings)
    assert str(info.value) == "invalid setting MDL_BACKOFF_MAX_S='2': must be at least MDL_BACKOFF_INITIAL_S"


def test_good_mdl_settings_load():
    s = load(MdlSettings, mdl_backoff_initial_s=2, mdl_backoff_max_s=2, mdl_batch_events=1)
    assert (s.mdl_backoff_initial_s, s.mdl_backoff_max_s, s.mdl_batch_events) == (2, 2, 1)
    b = Backoff(s.mdl_backoff_initial_s, s.mdl_backoff_max_s, s.mdl_healthy_s)  # what the listener builds
    assert 1 <= b.next_delay() <= 2
