"""The emulator's protocol session and frames, without sockets; the client-frame parser is fuzzed."""

from __future__ import annotations

import json
import tracemalloc

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdpipe import massive
from sim.frames import Frame, Subscriptions, chunk_json
from sim.protocol import MAX_ERRORS, Session, State

KEY = "k3y"


def statuses(reply) -> list[tuple[str, str]]:
    return [(e["status"], e["message"]) for frame in reply.frames for e in orjson.loads(frame)]


def authed() -> Session:
    session = Session("stocks", KEY)
    assert session.receive(b'{"action":"auth","params":"k3y"}').authenticated
    return session


def test_greeting_is_the_vendors():
    assert orjson.loads(Session.greeting()) == [
        {"ev": "status", "status": "connected", "message": "Connected Successfully"}
    ]


@pytest.mark.parametrize("frame", ['{"action":"auth","params":"k3y"}', b'{"action":"auth","params":"k3y"}'])
def test_auth_success_text_or_binary(frame):
    session = Session("stocks", KEY)
    reply = session.receive(frame)
    assert statuses(reply) == [("auth_success", "authenticated")]
    assert reply.authenticated and reply.close is None
    assert session.state is State.AUTHENTICATED


@pytest.mark.parametrize("params", ["wrong", "", None, 42, ["k3y"], "k3y "])
def test_auth_failed_closes(params):
    session = Session("stocks", KEY)
    reply = session.receive(orjson.dumps({"action": "auth", "params": params}))
    assert statuses(reply) == [("auth_failed", "authentication failed")]
    assert reply.close == (1008, "authentication failed")
    assert session.state is State.CLOSED
    assert session.receive(b'{"action":"auth","params":"k3y"}').frames == []


def test_auth_timeout_reply():
    reply = Session("stocks", KEY).timed_out()
    assert statuses(reply)[0][0] == "auth_timeout"
    assert reply.close is not None and reply.close[0] == 1008


def test_subscribe_before_auth_is_refused():
    session = Session("stocks", KEY)
    reply = session.receive(b'{"action":"subscribe","params":"T.*"}')
    assert statuses(reply) == [("error", "not authorized")]
    assert len(session.subs) == 0


def test_each_subscription_is_acknowledged():
    session = authed()
    reply = session.receive(b'{"action":"subscribe","params":"T.*, Q.AAPL,AM.BRK.B"}')
    assert statuses(reply) == [
        ("success", "subscribed to: T.*"),
        ("success", "subscribed to: Q.AAPL"),
        ("success", "subscribed to: AM.BRK.B"),
    ]
    assert session.subs.matches("T", "ANY") and session.subs.matches("Q", "AAPL")
    assert not session.subs.matches("Q", "MSFT") and session.subs.matches("AM", "BRK.B")
    reply = session.receive(b'{"action":"unsubscribe","params":"T.*"}')
    assert statuses(reply) == [("success", "unsubscribed to: T.*")]
    assert not session.subs.matches("T", "ANY")


def test_invalid_subscriptions_get_errors_and_valid_ones_still_apply():
    session = authed()
    reply = session.receive(b'{"action":"subscribe","params":"XT.*,T,Q.AAPL,T.bad sym"}')
    assert statuses(reply) == [
        ("success", "subscribed to: Q.AAPL"),
        ("error", "invalid subscription: XT.*"),
        ("error", "invalid subscription: T"),
        ("error", "invalid subscription: T.bad sym"),
    ]
    assert reply.error == "bad_subscription"


def test_invalid_subscription_errors_are_bounded():
    session = authed()
    params = ",".join(f"BAD{i}" for i in range(MAX_ERRORS * 3))
    reply = session.receive(orjson.dumps({"action": "subscribe", "params": params}))
    assert len(statuses(reply)) == MAX_ERRORS + 1


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"not json", "invalid json"),
        (b"[1,2]", "message must be a JSON object"),
        (b'{"action":"dance"}', "unknown action: dance"),
        (b'{"action":"subscribe","params":["T.*"]}', "params must be a string"),
        (b'{"action":"unsubscribe","params":" , "}', "params name no subscription"),
    ],
)
def test_bad_frames_get_an_error_and_the_session_stays_open(frame, message):
    session = authed()
    reply = session.receive(frame)
    assert statuses(reply) == [("error", message)]
    assert reply.close is None and session.state is State.AUTHENTICATED


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_fuzz_any_client_frame_gets_a_well_formed_answer(data):
    for session in (Session("stocks", KEY), authed()):
        reply = session.receive(data)
        for frame in reply.frames:
            for event in orjson.loads(frame):
                assert event["ev"] == "status" and isinstance(event["message"], str)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["auth", "subscribe", "unsubscribe", "x"]), json_values)
def test_fuzz_actions_with_any_params(action, params):
    session = authed()
    # stdlib json: it also encodes integers beyond 64 bits, which orjson refuses to decode
    reply = session.receive(json.dumps({"action": action, "params": params}))
    assert reply.frames
    assert all(e["ev"] == "status" for f in reply.frames for e in orjson.loads(f))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.sampled_from(massive.MARKETS))
def test_fuzz_subscription_parser_partitions_its_input(params, market):
    valid, invalid = massive.parse_subscriptions(params, market)
    parts = [p.strip() for p in params.split(",") if p.strip()]
    assert len(valid) + len(invalid) == len(parts)
    for ev, sym in valid:
        assert ev in massive.EVENT_TYPES[market] and sym


# -- frames -------------------------------------------------------------------------------------------

EVENTS = [
    {"ev": "T", "sym": "AAPL", "p": 1.5, "s": 100, "t": 1},
    {"ev": "Q", "sym": "MSFT", "bp": 1.0, "ap": 1.01, "t": 2},
    {"ev": "LULD", "T": "AAPL", "h": 2.0, "l": 1.0, "t": 3},
    {"ev": "T", "sym": "MSFT", "p": 1.0, "s": 5, "t": 4},
]


def subs(*pairs: str) -> Subscriptions:
    s = Subscriptions(massive.EVENT_TYPES["stocks"])
    for pair in pairs:
        ev, _, sym = pair.partition(".")
        s.add(ev, sym)
    return s


def test_frame_render_everything_is_the_joined_frame():
    frame = Frame.from_events(EVENTS)
    everything = subs(*(f"{ev}.*" for ev in massive.EVENT_TYPES["stocks"]))
    data, count = frame.render(everything)
    assert data is frame.full and count == 4
    assert orjson.loads(data) == EVENTS


def test_frame_render_filters_in_order():
    frame = Frame.from_events(EVENTS)
    data, count = frame.render(subs("T.MSFT", "LULD.*", "T.AAPL"))
    assert [e["t"] for e in orjson.loads(data)] == [1, 3, 4] and count == 3
    assert frame.render(subs("Q.AAPL")) == (None, 0)


def test_send_timestamp_is_stamped_on_every_event():
    frame = Frame.from_events(EVENTS, send_ts=True)
    data, _ = frame.render(subs("T.*"))
    stamped = orjson.loads(frame.stamp(data, 1_795_185_000_123_456_789))
    assert [e["_st"] for e in stamped] == [1_795_185_000_123_456_789] * 2
    assert [{k: v for k, v in e.items() if k != "_st"} for e in stamped] == [EVENTS[0], EVENTS[3]]


def test_frame_of_encoded_events_renders_filters_and_stamps():
    texts = [json.dumps(e, separators=(",", ":")) for e in EVENTS]
    frame = Frame.from_json(texts, frozenset({"T", "Q", "LULD"}), send_ts=True)
    assert frame.full == ("[" + ",".join(texts) + "]").encode() and frame.count == 4
    # wildcards that cover the frame's types get it whole, even without every type of the market
    data, count = frame.render(subs("T.*", "Q.*", "LULD.*"))
    assert data is frame.full and count == 4
    stamped = orjson.loads(frame.stamp(data, 1_795_185_000_123_456_789))
    assert [{k: v for k, v in e.items() if k != "_st"} for e in stamped] == EVENTS
    assert {e["_st"] for e in stamped} == {1_795_185_000_123_456_789}
    data, count = frame.render(subs("T.MSFT", "LULD.*", "T.AAPL"))
    assert count == 3
    assert [e["t"] for e in orjson.loads(frame.stamp(data, 5))] == [1, 3, 4]
    assert frame.render(subs("Q.AAPL")) == (None, 0)


def test_raw_frame_keeps_its_bytes_and_drops_statuses():
    raw = b'[{"ev":"T","sym":"A","p":1.50}]'
    frame = Frame.from_raw(raw)
    assert frame is not None and frame.full is raw and frame.count == 1
    assert Frame.from_raw(b'[{"ev":"status","status":"success","message":"subscribed to: T.*"}]') is None
    mixed = Frame.from_raw(b'[{"ev":"status","status":"x","message":"y"},{"ev":"T","sym":"A","p":1}]')
    assert mixed is not None and orjson.loads(mixed.full) == [{"ev": "T", "sym": "A", "p": 1}]


def test_unparseable_raw_frame_goes_to_everyone_as_is():
    raw = b'[{"ev":"T","sym":"A","p":'
    frame = Frame.from_raw(raw)
    assert frame is not None
    assert frame.render(subs("Q.ZZZ")) == (raw, 1)


def test_chunk_bounds_frame_size():
    texts = [json.dumps(e, separators=(",", ":")) for e in EVENTS * 5]
    frames = chunk_json(texts, 6, frozenset({"T", "Q", "LULD"}))
    assert [f.count for f in frames] == [6, 6, 6, 2]
    assert [e for f in frames for e in orjson.loads(f.full)] == EVENTS * 5


def test_encoded_events_are_not_oversized_buffers():
    """orjson >= 3.12 hands back >= 4 KiB per dumps; frames keep every event, so they must copy."""
    tracemalloc.start()
    try:
        events = [{**EVENTS[0], "t": i} for i in range(5000)]
        frames = [Frame.from_events(events[i : i + 100]) for i in range(0, 5000, 100)]
        per_event = tracemalloc.get_traced_memory()[0] / 5000
    finally:
        tracemalloc.stop()
    assert len(frames) == 50
    assert per_event < 1024
