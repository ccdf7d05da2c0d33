"""Fast unit and fuzz tests of MDQ's sans-I/O parts: topology, message format, batching. No sockets."""

from __future__ import annotations

import zlib
from collections import defaultdict

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import frame, header

from mdpipe import massive
from mdpipe.settings import ConfigError, MdqSettings, load
from mdq import batching, message, topology
from mdq.batching import Batcher
from mdq.consumer import ConsumerStats
from mdq.message import Batch, MalformedMessage, decode
from tests.strategies import JSON, result_or_reason

FUZZ = settings(max_examples=60, deadline=None)


# -- topology ------------------------------------------------------------------------------------------


def test_classes_are_the_documented_seven_with_other_last():
    assert topology.CLASSES == ("trades", "quotes", "aggregates", "halts", "imbalances", "values", "other")
    assert len(set(topology.CLASSES)) == len(topology.CLASSES)


def test_every_market_has_a_routing_table():
    assert set(topology.EVENT_CLASSES) == set(massive.MARKETS) == set(massive.EVENT_TYPES)


@pytest.mark.parametrize("market", massive.MARKETS)
def test_every_event_type_of_every_market_has_a_real_class(market):
    table = topology.EVENT_CLASSES[market]
    for ev in sorted(massive.EVENT_TYPES[market]):
        assert table.get(ev, topology.OTHER) != topology.OTHER, f"{market} {ev} would go to other"
    # and the table names nothing the market does not publish, and only known classes
    assert set(table) <= massive.EVENT_TYPES[market]
    assert set(table.values()) <= set(topology.CLASSES) - {topology.OTHER}


def test_status_is_never_routed_by_the_table():
    assert all(massive.STATUS not in table for table in topology.EVENT_CLASSES.values())


@pytest.mark.parametrize(
    ("ev", "cls"),
    [
        ("T", "trades"),
        ("Q", "quotes"),
        ("A", "aggregates"),
        ("AM", "aggregates"),
        ("LULD", "halts"),
        ("NOI", "imbalances"),
        ("FMV", "values"),
        ("LV", "values"),
    ],
)
def test_stock_event_classes(ev, cls):
    assert topology.EVENT_CLASSES["stocks"][ev] == cls


def test_other_markets_spot_checks():
    tables = topology.EVENT_CLASSES
    assert tables["forex"]["C"] == "quotes"
    assert tables["forex"]["CA"] == tables["forex"]["CAS"] == "aggregates"
    assert tables["crypto"]["XT"] == "trades"
    assert tables["crypto"]["XQ"] == tables["crypto"]["XL2"] == "quotes"
    assert tables["indices"]["V"] == "trades"  # an index's values feed its day stats, with its bars
    assert tables["futures/cme"] == {"T": "trades", "Q": "quotes", "A": "aggregates", "AM": "aggregates"}


def test_queue_names_one_shard():
    assert topology.queue_names("mdq", 1) == [f"mdq.{cls}" for cls in topology.CLASSES]
    assert topology.class_queues("x", "trades", 1) == ["x.trades"]


def test_queue_names_several_shards():
    names = topology.queue_names("mdq", 3)
    assert len(names) == len(set(names)) == 3 * len(topology.CLASSES)
    assert names[:3] == ["mdq.trades.0", "mdq.trades.1", "mdq.trades.2"]
    assert names[-1] == "mdq.other.2"
    assert topology.class_queues("ex", "halts", 4) == ["ex.halts.0", "ex.halts.1", "ex.halts.2", "ex.halts.3"]


@pytest.mark.parametrize(
    ("symbol", "shards", "shard"),
    [
        # Fixed values: the shard of a symbol is part of the queue contract (any process, any language).
        ("AAPL", 8, 4),
        ("AAPL", 256, 92),
        ("MSFT", 4, 3),
        ("MSFT", 256, 123),
        ("O:SPY251219C00650000", 256, 186),
        ("BRK.B", 3, 0),
        ("I:SPX", 16, 11),
        ("EUR/USD", 8, 2),
        ("ETH-USD", 8, 7),
    ],
)
def test_shard_of_is_crc32_and_stable(symbol, shards, shard):
    assert topology.shard_of(symbol, shards) == shard
    assert topology.shard_of(symbol, shards) == zlib.crc32(symbol.encode()) % shards


def test_shard_of_edge_cases():
    assert topology.shard_of(None, 16) == 0
    assert topology.shard_of("AAPL", 1) == 0
    assert topology.shard_of("", 7) == 0  # crc32 of nothing is 0
    assert topology.shard_of("é", 1000) == zlib.crc32("é".encode()) % 1000  # UTF-8, not Latin-1


@FUZZ
@given(st.text(max_size=30), st.integers(min_value=1, max_value=256))
def test_shard_of_in_range_and_deterministic(symbol, shards):
    shard = topology.shard_of(symbol, shards)
    assert 0 <= shard < shards
    assert shard == topology.shard_of(symbol, shards) == zlib.crc32(symbol.encode("utf-8")) % shards


def test_queue_arguments_from_settings():
    s = load(MdqSettings, mdq_message_ttl_ms=1234, mdq_max_length=99, mdq_max_bytes=2 * 1024 * 1024)
    assert topology.queue_arguments(s) == {
        "x-queue-type": "classic",
        "x-message-ttl": 1234,
        "x-max-length": 99,
        "x-max-length-bytes": 2 * 1024 * 1024,
        "x-overflow": "drop-head",
        "x-single-active-consumer": True,
        "x-dead-letter-exchange": f"{s.mdq_exchange}.dead",
    }
    dead = topology.dead_letter_arguments(s)
    assert dead["x-max-length"] == s.mdq_dead_max_length
    assert dead["x-message-ttl"] == s.mdq_dead_ttl_ms
    assert dead["x-overflow"] == "drop-head"


def test_queue_arguments_defaults():
    args = topology.queue_arguments(load(MdqSettings))
    assert args["x-message-ttl"] == 5000
    assert args["x-max-length"] == 10_000
    assert args["x-max-length-bytes"] == 64 * 1024 * 1024


# -- settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"mdq_shards": 0}, "MDQ_SHARDS"),
        ({"mdq_shards": 257}, "MDQ_SHARDS"),
        ({"mdq_exchange": "md q"}, "MDQ_EXCHANGE"),
        ({"mdq_exchange": ""}, "MDQ_EXCHANGE"),
        ({"mdq_exchange": "mdq\n"}, "MDQ_EXCHANGE"),
        ({"mdq_exchange": "x" * 101}, "MDQ_EXCHANGE"),
        ({"mdq_message_ttl_ms": 99}, "MDQ_MESSAGE_TTL_MS"),
        ({"mdq_max_length": 9}, "MDQ_MAX_LENGTH"),
        ({"mdq_max_bytes": 1024}, "MDQ_MAX_BYTES"),
    ],
)
def test_bad_mdq_settings_name_the_variable(overrides, variable):
    with pytest.raises(ConfigError, match=rf"^invalid setting {variable}\b"):
        load(MdqSettings, **overrides)


def test_bad_mdq_setting_from_the_environment(monkeypatch):
    monkeypatch.setenv("MDQ_SHARDS", "0")
    with pytest.raises(ConfigError, match="MDQ_SHARDS"):
        load(MdqSettings)


def test_good_mdq_settings_load():
    s = load(MdqSettings, mdq_exchange="mdq.eu-1:a_b", mdq_shards=256)
    assert (s.mdq_exchange, s.mdq_shards) == ("mdq.eu-1:a_b", 256)


# -- message format ------------------------------------------------------------------------------------


def _props(**kw):
    args = {"queue": "mdq.trades", "cls": "trades", "count": 2, "recv_ns": 17, "source": "h:1", "seq": 5}
    return message.properties(**{**args, **kw})


def test_properties():
    p = _props()
    assert p.content_type == "application/json"
    assert p.delivery_mode == 1
    assert p.app_id == "mdl"
    assert p.message_id == "h:1/mdq.trades/5"
    assert p.headers == {
        "mdq-recv-ns": 17,
        "mdq-class": "trades",
        "mdq-count": 2,
        "mdq-src": "h:1",
        "mdq-seq": 5,
        "mdq-conn": 0,
    }


def test_decode_what_the_publisher_produces():
    events = [{"ev": "T", "sym": "AAPL", "p": 1.5}, {"ev": "T", "sym": "MSFT", "p": 2}]
    batch = decode(orjson.dumps(events), _props().headers)
    assert batch == Batch(events, "trades", 17, "h:1", 5)


def test_decode_after_the_amqp_wire_encoding():
    """Properties marshalled into a content header frame and back, as a consumer receives them."""
    props = _props(recv_ns=1_700_000_000_123_456_789, seq=2**40, source="host-é:42")
    raw = frame.marshal(header.ContentHeader(weight=0, body_size=2, properties=props), 1)
    _, _, received = frame.unmarshal(raw)
    assert received.properties.message_id == "host-é:42/mdq.trades/1099511627776"
    batch = decode(b"[]", received.properties.headers)
    assert (batch.recv_ns, batch.seq, batch.source, batch.cls) == (
        1_700_000_000_123_456_789,
        2**40,
        "host-é:42",
        "trades",
    )


def test_decode_accepts_byte_string_headers():
    headers = {**_props().headers, "mdq-class": b"quotes", "mdq-src": bytearray(b"h\xff")}
    batch = decode(b"[1]", headers)
    assert batch.cls == "quotes"
    assert batch.source == "h\ufffd"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"[]", None),
        (b"[]", {}),
        (b"[]", {"mdq-recv-ns": "1", "mdq-class": "t", "mdq-src": "s", "mdq-seq": 1}),
        (b"[]", {"mdq-recv-ns": 1, "mdq-class": "t", "mdq-src": "s", "mdq-seq": 1.0}),
        (b"[]", {"mdq-recv-ns": 1, "mdq-class": 3, "mdq-src": "s", "mdq-seq": 1}),
        (b"[]", {"mdq-recv-ns": 1, "mdq-class": "t", "mdq-src": None, "mdq-seq": 1}),
        (b"[]", {"mdq-recv-ns": 1, "mdq-class": "t", "mdq-seq": 1}),
        (b"", None),
        (b"", {"mdq-recv-ns": 1, "mdq-class": "t", "mdq-src": "s", "mdq-seq": 1}),
        (b"[1,", {"mdq-recv-ns": 1, "mdq-class": "t", "mdq-src": "s", "mdq-seq": 1}),
        (b"\xff\xfe", {"mdq-recv-ns": 1, "mdq-class": "t", "mdq-src": "s", "mdq-seq": 1}),
        (b'{"ev":"T"}', {"mdq-recv-ns": 1, "mdq-class": "t", "mdq-src": "s", "mdq-seq": 1}),
        (b'"[]"', {"mdq-recv-ns": 1, "mdq-class": "t", "mdq-src": "s", "mdq-seq": 1}),
        (b"null", {"mdq-recv-ns": 1, "mdq-class": "t", "mdq-src": "s", "mdq-seq": 1}),
        (b"[" * 2000 + b"]" * 2000, {"mdq-recv-ns": 1, "mdq-class": "t", "mdq-src": "s", "mdq-seq": 1}),
    ],
)
def test_decode_refuses_malformed(body, headers):
    with pytest.raises(MalformedMessage):
        decode(body, headers)


def test_malformed_message_is_a_value_error():
    assert issubclass(MalformedMessage, ValueError)


HEADER_KEYS = st.sampled_from([message.RECV_NS, message.CLASS, message.COUNT, message.SOURCE, message.SEQ])
HEADER_VALUES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=6)
    | st.binary(max_size=6)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)
)
BODIES = st.binary(max_size=40) | JSON.map(orjson.dumps) | st.lists(JSON, max_size=5).map(orjson.dumps)


@FUZZ
@given(BODIES, st.none() | st.dictionaries(HEADER_KEYS | st.text(max_size=5), HEADER_VALUES, max_size=7))
def test_fuzz_decode_returns_a_batch_or_raises_malformed(body, headers):
    batch = result_or_reason(lambda: decode(body, headers), MalformedMessage)
    if batch is None:
        return
    assert isinstance(batch, Batch)
    assert isinstance(batch.events, list)
    assert isinstance(batch.cls, str) and isinstance(batch.source, str)
    assert isinstance(batch.recv_ns, int) and isinstance(batch.seq, int)
    assert batch.events == orjson.loads(body)


@FUZZ
@given(
    st.lists(JSON, max_size=6),
    st.text(max_size=10),
    st.text(max_size=10),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.integers(min_value=1, max_value=2**63 - 1),
)
def test_fuzz_decode_round_trips_valid_messages(events, cls, source, recv_ns, seq):
    props = message.properties(queue="q", cls=cls, count=len(events), recv_ns=recv_ns, source=source, seq=seq)
    assert decode(orjson.dumps(events), props.headers) == Batch(events, cls, recv_ns, source, seq)


# -- batching ------------------------------------------------------------------------------------------


def text(event: dict) -> str:
    """An event as ``Batcher.add`` takes it: its compact JSON text without the outer braces."""
    return orjson.dumps(event).decode()[1:-1]


def texts(events: list[dict]) -> list[str]:
    return [text(e) for e in events]


def _events(out: batching.Outgoing) -> list:
    return orjson.loads(out.body)


def _n(*ns: int) -> list[dict]:
    """Small distinct events."""
    return [{"n": n} for n in ns]


def test_one_add_one_message_when_it_fits():
    b = Batcher("src", 10)
    events = [{"ev": "T", "sym": "A", "i": n} for n in range(3)]
    b.add("mdq.trades", "trades", texts(events), 111)
    [out] = b.flush()
    assert out.queue == "mdq.trades"
    assert out.cls == "trades"
    assert out.body == orjson.dumps(events)
    assert out.count == 3 and out.recv_ns == 111
    assert out.properties.headers == {
        "mdq-recv-ns": 111,
        "mdq-class": "trades",
        "mdq-count": 3,
        "mdq-src": "src",
        "mdq-seq": 1,
        "mdq-conn": 0,
    }
    assert out.properties.message_id == "src/mdq.trades/1"
    assert out.properties.delivery_mode == 1
    assert b.flush() == []


def test_body_is_the_texts_joined_verbatim():
    """Each text goes into the body as given: no parsing, no re-encoding (``1.50`` stays ``1.50``)."""
    b = Batcher("src", 10)
    parts = ['"ev":"T","sym":"A","p":1.50', '"ev":"T","sym":"é","c":[1, 2],"t":1E3', '"ev":"Q"']
    b.add("q", "c", parts, 1)
    [out] = b.flush()
    assert (
        out.body
        == '[{"ev":"T","sym":"A","p":1.50},{"ev":"T","sym":"é","c":[1, 2],"t":1E3},{"ev":"Q"}]'.encode()
    )
    assert out.count == 3
    assert orjson.loads(out.body) == [
        {"ev": "T", "sym": "A", "p": 1.5},
        {"ev": "T", "sym": "é", "c": [1, 2], "t": 1000.0},
        {"ev": "Q"},
    ]


def test_one_event_body():
    b = Batcher("src", 10)
    b.add("q", "c", ['"ev":"T"'], 1)
    assert [o.body for o in b.flush()] == [b'[{"ev":"T"}]']


def test_add_of_no_events_makes_no_phantom_event():
    """No events, no message (the body would otherwise be ``[{}]``: one empty object, counted 0)."""
    b = Batcher("src", 10)
    b.add("q", "c", [], 1)
    assert b.flush() == []
    b.add("q", "c", [], 1)
    b.add("q", "c", ['"ev":"T"'], 2)
    [out] = b.flush()
    assert (out.body, out.count, out.recv_ns, out.properties.headers["mdq-seq"]) == (b'[{"ev":"T"}]', 1, 2, 1)


def test_frames_merge_per_queue_and_keep_the_first_recv_ns():
    b = Batcher("src", 100)
    b.add("mdq.trades", "trades", texts(_n(1, 2)), 10)
    b.add("mdq.quotes", "quotes", texts(_n(-1)), 11)
    b.add("mdq.trades", "trades", texts(_n(3)), 12)
    b.add("mdq.quotes", "quotes", texts(_n(-2, -3)), 13)
    out = {o.queue: o for o in b.flush()}
    assert set(out) == {"mdq.trades", "mdq.quotes"}
    assert _events(out["mdq.trades"]) == _n(1, 2, 3)
    assert _events(out["mdq.quotes"]) == _n(-1, -2, -3)
    assert out["mdq.trades"].body == orjson.dumps(_n(1, 2, 3))
    assert out["mdq.trades"].recv_ns == out["mdq.trades"].properties.headers["mdq-recv-ns"] == 10
    assert out["mdq.quotes"].recv_ns == 11
    assert out["mdq.quotes"].properties.headers["mdq-count"] == 3


def test_split_at_max_events_and_remainder_waits_for_flush():
    b = Batcher("src", 3)
    b.add("q", "trades", texts(_n(*range(7))), 5)
    # two full messages are ready; the 7th event waits
    b.add("q", "trades", texts(_n(7)), 6)
    out = b.flush()
    assert [_events(o) for o in out] == [_n(0, 1, 2), _n(3, 4, 5), _n(6, 7)]
    assert [o.body for o in out] == [
        orjson.dumps(_n(0, 1, 2)),
        orjson.dumps(_n(3, 4, 5)),
        orjson.dumps(_n(6, 7)),
    ]
    assert [o.count for o in out] == [3, 3, 2]
    assert [o.properties.headers["mdq-seq"] for o in out] == [1, 2, 3]
    assert [o.properties.message_id for o in out] == ["src/q/1", "src/q/2", "src/q/3"]
    assert b.flush() == []


def test_exact_multiple_leaves_nothing_pending():
    b = Batcher("src", 2)
    b.add("q", "c", texts(_n(1, 2, 3, 4)), 1)
    out = b.flush()
    assert [_events(o) for o in out] == [_n(1, 2), _n(3, 4)]
    assert b.flush() == []


def test_seq_is_per_queue_and_continues_across_flushes():
    b = Batcher("src", 10)
    b.add("a", "c", texts(_n(1)), 1)
    b.add("b", "c", texts(_n(1)), 1)
    first = b.flush()
    b.add("a", "c", texts(_n(2)), 2)
    second = b.flush()
    assert sorted((o.queue, o.properties.headers["mdq-seq"]) for o in first) == [("a", 1), ("b", 1)]
    assert [(o.queue, o.properties.headers["mdq-seq"]) for o in second] == [("a", 2)]
    # another Batcher (another listener instance) counts on its own
    other = Batcher("src2", 10)
    other.add("a", "c", texts(_n(1)), 1)
    assert [o.properties.message_id for o in other.flush()] == ["src2/a/1"]


def test_max_events_one():
    b = Batcher("s", 1)
    b.add("q", "c", ['"x":1', '"y":"z"'], 9)
    out = b.flush()
    assert [o.body for o in out] == [b'[{"x":1}]', b'[{"y":"z"}]']
    assert [_events(o) for o in out] == [[{"x": 1}], [{"y": "z"}]]
    assert all(o.count == 1 for o in out)


def test_batcher_output_decodes():
    b = Batcher("h:1", 2)
    events = [{"ev": "Q", "sym": "AAPL", "bp": 1.25}, {"ev": "Q", "sym": "MSFT"}, {"ev": "Q"}]
    b.add("mdq.quotes", "quotes", texts(events), 77)
    decoded = [decode(o.body, o.properties.headers) for o in b.flush()]
    assert [d.events for d in decoded] == [events[:2], events[2:]]
    assert [(d.cls, d.source, d.recv_ns, d.seq) for d in decoded] == [
        ("quotes", "h:1", 77, 1),
        ("quotes", "h:1", 77, 2),
    ]


def test_recv_ns_of_a_split_message_is_that_of_its_first_event():
    b = Batcher("src", 2)
    a, bb, c, d, e = _n(*range(5))
    b.add("q", "c", texts([a]), 100)  # pending: one event of frame 100
    b.add("q", "c", texts([bb, c, d, e]), 200)  # frame 200 completes [a b], fills [c d], leaves [e]
    out = b.flush()
    assert [_events(o) for o in out] == [[a, bb], [c, d], [e]]
    # [c d] holds only events of frame 200, so it was first read at 200, not 100
    assert [o.recv_ns for o in out] == [100, 200, 200]
    assert [o.properties.headers["mdq-recv-ns"] for o in out] == [100, 200, 200]


QUEUES = st.sampled_from(["mdq.trades", "mdq.quotes", "mdq.other.3"])
EXTRA = (
    st.none()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)


@FUZZ
@given(
    st.integers(min_value=1, max_value=6),
    st.lists(
        st.lists(
            st.tuples(QUEUES, st.lists(EXTRA, min_size=1, max_size=9)),
            max_size=8,
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_fuzz_batching_per_queue_concatenation_in_chunks(max_events, rounds):
    b = Batcher("src", max_events)
    seqs: dict[str, list[int]] = defaultdict(list)
    counter = 0
    for adds in rounds:  # each round: some adds, then a flush
        expected: dict[str, list] = defaultdict(list)
        for queue, values in adds:
            events = []
            for v in values:  # unique events, so order and duplication are visible
                counter += 1
                events.append({"i": counter, "v": v})
            b.add(queue, "cls-" + queue, texts(events), counter)
            expected[queue].extend(events)
        got: dict[str, list[list]] = defaultdict(list)
        for out in b.flush():
            body = orjson.loads(out.body)
            assert out.body == orjson.dumps(body)  # the texts joined, exactly as orjson would write them
            assert len(body) <= max_events
            assert out.count == len(body) == out.properties.headers["mdq-count"]
            assert out.cls == out.properties.headers["mdq-class"] == "cls-" + out.queue
            assert out.properties.headers["mdq-src"] == "src"
            assert out.properties.headers["mdq-recv-ns"] == out.recv_ns
            seq = out.properties.headers["mdq-seq"]
            assert out.properties.message_id == f"src/{out.queue}/{seq}"
            seqs[out.queue].append(seq)
            got[out.queue].append(body)
        # every queue that received events got exactly them, in order, in greedy chunks of max_events
        for queue, events in expected.items():
            if events:
                chunks = [events[i : i + max_events] for i in range(0, len(events), max_events)]
                assert got[queue] == chunks
        assert not {q for q, chunks in got.items() if any(chunks)} - set(expected)
    for queue, values in seqs.items():
        assert values == list(range(1, len(values) + 1)), queue


def test_consumer_stats_count_gaps_and_spot_repeats():
    stats = ConsumerStats()

    def seen(seq: int, recv_ns: int, source: str = "mdl-1", conn: int = 1) -> tuple[bool, str | None]:
        return stats.saw("x.trades", Batch([], "trades", recv_ns, source, seq, conn=conn))

    def saw(seq: int, recv_ns: int, source: str = "mdl-1") -> bool:
        return seen(seq, recv_ns, source)[0]

    assert [seen(1, 100), seen(2, 200), seen(5, 500)] == [(False, None), (False, None), (False, "gap")]
    assert stats.seq_gaps == 2  # 3 and 4 never came
    assert saw(2, 200) and saw(5, 500)  # the same messages again
    assert seen(6, 600) == (False, None) and stats.seq_gaps == 2
    assert seen(7, 700, conn=2) == (False, "reconnect")  # the listener's vendor connection changed
    assert seen(0, 900) == (False, "restart")  # the listener restarted under its name: seq from 0, later time
    assert not saw(1, 1000) and saw(0, 900)
    assert seen(1, 50, source="mdl-2") == (False, "restart")  # another listener: its own count
