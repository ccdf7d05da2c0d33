"""Fast unit and fuzz tests of WDS's sans-I/O parts: protocol, outbox, session. No sockets."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from mdc import envelope
from mdc.subscriber import CONFLATED_PRINTS, FEED_WAITING
from wds import frames, metrics, protocol
from wds.outbox import CONTROL_FACTOR, Outbox
from wds.protocol import ProtocolError, parse, update_frame
from wds.session import Session
from wds.tokens import Grant

from .strategies import JSON, result_or_reason

FUZZ = settings(max_examples=300, deadline=None)


TYPES = {"trades": "trades", "alerts": "alert", "halts": "halt", "quotes": "quote"}


def upd(channel: str = "stats.AAPL", seq: int = 1, data: object = None, ts: int = 1_763_649_000_000):
    kind = TYPES.get(channel.split(".")[0], "stats")
    raw = envelope.encode(kind, channel, seq, ts, ts + 1, "mdp-1", data if data is not None else {"n": seq})
    update = update_frame(raw)
    assert update is not None
    return update


def session(channels=("*",), subs=10, rate=100.0, buffer=1 << 20) -> Session:
    return Session(Grant("alice", 2e9, tuple(channels), "jti-1"), subs, rate, buffer)


def unframe(data: bytes) -> bytes:
    """The payload of one whole server frame, read by websockets' own parser (as a client reads it): a
    final text frame, unmasked, nothing before or after it."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame = done.value.value
    assert (frame.opcode, frame.fin, bytes(reader.buffer)) == (Opcode.TEXT, True, b"")
    return frame.data


def events(data: bytes) -> list[dict]:
    """The events of one message as the outbox hands it over: a whole WebSocket frame."""
    return orjson.loads(unframe(data))


# -- protocol --------------------------------------------------------------------------------------------


def test_parse_actions():
    assert parse('{"action":"ping","id":7}', 1000) == protocol.Action("ping", 7)
    sub = parse(b'{"action":"subscribe","channels":["stats.A","stats.A","quotes.B"],"max_hz":2}', 1000)
    assert sub.channels == ("stats.A", "quotes.B") and sub.max_hz == 2.0
    assert parse('{"action":"auth","token":"t"}', 1000).token == "t"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        ("[1,2]", "bad_request"),
        ('{"action":"dance"}', "unknown_action"),
        ("{}", "unknown_action"),
        ('{"action":"subscribe"}', "bad_request"),
        ('{"action":"subscribe","channels":[]}', "bad_request"),
        ('{"action":"subscribe","channels":[1]}', "bad_request"),
        ('{"action":"subscribe","channels":["a"],"max_hz":0.01}', "bad_request"),
        ('{"action":"subscribe","channels":["a"],"max_hz":"fast"}', "bad_request"),
        ('{"action":"auth"}', "bad_request"),
        ('{"action":"ping","id":[1]}', "bad_request"),
        ('{"action":"ping","id":"' + "x" * 65 + '"}', "bad_request"),
        ('{"action":"ping","pad":"' + "x" * 2000 + '"}', "frame_too_large"),
    ],
)
def test_parse_refuses_with_a_code(frame, code):
    with pytest.raises(ProtocolError) as info:
        parse(frame, 1000)
    assert info.value.code == code


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300), JSON.map(orjson.dumps)))
def test_parse_fuzz_gives_an_action_or_a_protocol_error(frame):
    action = result_or_reason(lambda: parse(frame, 256), ProtocolError)
    assert action is None or action.name in protocol.ACTIONS
    if action is None:
        with pytest.raises(ProtocolError) as info:
            parse(frame, 256)
        assert info.value.code in {"bad_json", "bad_request", "unknown_action", "frame_too_large"}
        orjson.loads(protocol.encode_error(info.value.code, info.value.message, info.value.id))  # JSON reply


def test_update_frame_splices_the_envelope():
    update = upd(seq=42, data={"last": 1.5})
    assert (update.channel, update.seq) == ("stats.AAPL", 42)
    event = orjson.loads(update.frame)
    assert event["event"] == "update" and event["seq"] == 42 and event["data"] == {"last": 1.5}
    assert "conflated" not in event and orjson.loads(update.conflated.frame)["conflated"] is True


@FUZZ
@given(st.binary(max_size=200))
def test_update_frame_refuses_what_is_not_an_envelope(raw):
    update = update_frame(raw)
    if (
        update is not None
    ):  # only a real envelope prefix passes; the spliced event is then JSON if the input was
        assert raw.startswith(b'{"type":"')


# -- outbox ----------------------------------------------------------------------------------------------


def test_outbox_conflates_per_channel_and_keeps_control_order():
    box = Outbox(1 << 20)
    box.control(b'{"event":"subscribed"}')
    assert not box.update(upd(seq=1))
    assert not box.update(upd("quotes.AAPL", seq=5))
    assert box.update(upd(seq=2)) and box.update(upd(seq=3))
    assert len(box) == 3 and box.conflated == 2
    data, updates, oldest = box.take(1 << 20)
    got = events(data)
    assert [e["event"] for e in got] == ["subscribed", "update", "update"]
    assert (got[1]["seq"], got[1]["conflated"]) == (3, True)  # the newest, in the first one's place
    assert "conflated" not in got[2] and updates == 2 and oldest > 0
    assert box.bytes == 0 and not box


def test_outbox_take_respects_the_message_size_and_counts_bytes():
    box = Outbox(1 << 20)
    for n in range(10):
        box.update(upd(f"stats.S{n}", seq=1))
    one = len(upd("stats.S0", seq=1).frame)
    assert len(events(box.take(3 * one)[0])) == 3 and box.bytes == 7 * one
    box.forget("stats.S9")
    assert len(box) == 6 and box.bytes == 6 * one
    assert len(events(box.take(1)[0])) == 1  # at least one, whatever the limit


def test_outbox_is_over_past_its_bytes_of_updates_or_many_times_that_in_all():
    one = len(upd("stats.S0", seq=1).frame)
    box = Outbox(3 * one)
    for n in range(3):
        box.update(upd(f"stats.S{n}", seq=1))
    assert not box.over
    box.update(upd("stats.S3", seq=1))
    assert box.over  # updates past the buffer: a client falling behind
    box = Outbox(1000)
    box.control(b"x" * 900)
    box.control(b"x" * 200)  # snapshots it asked for: more than the buffer, not yet over
    assert not box.over and box.control_bytes == 1100
    box.update(upd(seq=1))
    assert not box.over
    box.control(b"x" * (CONTROL_FACTOR * 1000 - 1100))
    assert box.over  # a flood of replies it does not read
    # what is taken out is taken off both counts
    while box:
        box.take(700)
    assert box.bytes == box.control_bytes == 0
    box.control(b"x" * 10)
    box.take(1)
    box.update(upd(seq=2))
    box.control(b"y" * 10)
    box.take(10_000)
    assert box.bytes == box.control_bytes == 0


def test_the_latency_histogram_counts_a_flush_at_a_time():
    hist = metrics.FlushHistogram("test_wds_flush_seconds", "test", buckets=(0.01, 0.1, 1))
    try:
        hist.observe(0.01, 3)  # on a bound: in its bucket, as Prometheus counts
        hist.observe(0.05)
        hist.observe(7.5, 2)
        samples = {
            (sample.name, sample.labels.get("le")): sample.value
            for family in hist.collect()
            for sample in family.samples
        }
        assert REGISTRY.get_sample_value("test_wds_flush_seconds_count") == 6  # exposed
    finally:
        REGISTRY.unregister(hist)
    assert samples == {
        ("test_wds_flush_seconds_bucket", "0.01"): 3,
        ("test_wds_flush_seconds_bucket", "0.1"): 4,
        ("test_wds_flush_seconds_bucket", "1.0"): 4,
        ("test_wds_flush_seconds_bucket", "+Inf"): 6,
        ("test_wds_flush_seconds_count", None): 6,
        ("test_wds_flush_seconds_sum", None): pytest.approx(0.03 + 0.05 + 15),
    }


def test_outbox_clear_counts_the_updates_dropped():
    box = Outbox(1 << 20)
    box.control(b'{"event":"pong"}')
    box.update(upd(seq=1))
    for seq in (1, 2, 3):
        box.update(upd("alerts", seq))
    assert box.clear() == 4 and not box and box.bytes == 0


# -- frames ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 65_537, 200_000])
def test_text_frames_are_the_bytes_websockets_would_write(size):
    payload = b"x" * size
    theirs = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert frames.text_frame(payload) == theirs
    assert unframe(theirs) == payload
    head = frames.header(size)
    assert head[0] == 0x81 and len(head) == (2 if size < 126 else 4 if size < 65_536 else 10)


@pytest.mark.parametrize("size", [120, 125, 126, 65_535, 65_536])
def test_a_message_frame_is_the_text_frame_of_its_json_array(size):
    # two events whose array is ``size`` bytes: the header's length form changes at 126 and 65,536
    first = b'{"e":1}'
    second = b'"' + b"y" * (size - len(first) - 5) + b'"'
    array = protocol.message([first, second])
    assert len(array) == size
    assert frames.message_frame([first, second], len(first) + len(second)) == frames.text_frame(array)


def test_an_update_alone_is_framed_once_for_every_client():
    update = upd(seq=7)
    boxes = [Outbox(1 << 20) for _ in range(3)]
    for box in boxes:
        box.update(update)
    taken = [box.take(1 << 20)[0] for box in boxes]
    assert taken[0] is taken[1] is taken[2]  # the same bytes object, built once
    assert events(taken[0]) == [orjson.loads(update.frame)]
    marked = [Outbox(1 << 20) for _ in range(2)]
    for box in marked:
        box.update(update, conflated=True)
    first, second = (box.take(1 << 20)[0] for box in marked)
    assert first is second and events(first)[0]["conflated"] is True
    assert update.conflated is update.conflated and update.conflated.conflated is update.conflated


# -- conflation: trades carry every print, feeds keep their updates ------------------------------------


def prints(*ids: int) -> list[dict]:
    return [{"t": 1_763_649_000_000 + i, "p": 100.0 + i, "s": i, "i": str(i)} for i in ids]


def test_a_waiting_trades_update_gives_its_prints_to_the_newer_one():
    box = Outbox(1 << 20)
    box.update(upd("stats.AAPL", 1))
    box.update(upd("trades.AAPL", 1, prints(1, 2), ts=1000))
    assert box.update(upd("trades.AAPL", 2, prints(3), ts=2000))
    assert box.update(upd("trades.AAPL", 3, prints(4, 5), ts=3000))
    data, updates, oldest = box.take(1 << 20)
    _, trades = events(data)  # stats.AAPL first, in its place
    assert [p["s"] for p in trades["data"]] == [1, 2, 3, 4, 5]  # oldest first, none lost
    assert (trades["seq"], trades["ts"], trades["sent"], trades["conflated"]) == (3, 3000, 3001, True)
    assert list(trades) == ["event", "conflated", "type", "channel", "seq", "ts", "sent", "src", "data"]
    assert (updates, oldest) == (2, 1000) and box.conflated == 2


def test_merged_prints_are_bounded_to_the_newest():
    box = Outbox(1 << 20)
    seq = 0
    for first in range(0, 150, 10):
        seq += 1
        box.update(upd("trades.AAPL", seq, prints(*range(first, first + 10))))
    (trades,) = events(box.take(1 << 20)[0])
    assert [p["s"] for p in trades["data"]] == list(range(150 - CONFLATED_PRINTS, 150))
    assert trades["seq"] == seq and trades["conflated"] is True


def test_trades_whose_data_is_no_list_of_prints_are_replaced():
    box = Outbox(1 << 20)
    box.update(upd("trades.AAPL", 1, {"odd": 1}))
    box.update(upd("trades.AAPL", 2, prints(1)))
    (trades,) = events(box.take(1 << 20)[0])
    assert trades["seq"] == 2 and [p["s"] for p in trades["data"]] == [1] and trades["conflated"]


def test_feed_updates_wait_in_order_up_to_the_bound_then_the_oldest_go():
    box = Outbox(1 << 20)
    box.update(upd("halts", 1))
    for seq in (1, 2, 3):
        assert not box.update(upd("alerts", seq))  # nothing lost: not counted as conflated
    box.update(upd("stats.AAPL", 1))
    data, updates, _ = box.take(1 << 20)
    got = [(e["channel"], e["seq"], e.get("conflated")) for e in events(data)]
    assert got == [("halts", 1, None), ("alerts", 1, None), ("alerts", 2, None), ("alerts", 3, None),
                   ("stats.AAPL", 1, None)]  # fmt: skip
    assert updates == 5 and box.conflated == 0
    over = FEED_WAITING + 5
    for seq in range(1, over + 1):
        box.update(upd("alerts", seq))
    sent = events(box.take(1 << 20)[0])
    assert [e["seq"] for e in sent] == list(range(6, over + 1))  # the newest FEED_WAITING
    assert sent[0]["conflated"] is True and not any(e.get("conflated") for e in sent[1:])
    assert box.conflated == 5


def test_a_batch_of_feed_updates_is_marked_conflated_on_its_first():
    box = Outbox(1 << 20)
    box.update(upd("alerts", 5))
    box.update(upd("alerts", 6))
    box.update(upd("alerts", 9), conflated=True)  # skipped on the input: the gap is before 9
    got = [(e["seq"], e.get("conflated")) for e in events(box.take(1 << 20)[0])]
    assert got == [(5, None), (6, None), (9, True)]


def test_a_throttled_trades_subscription_sends_every_print_held_back():
    s = session()
    s.subscribe("trades.AAPL", 2.0)
    s.snapshot("trades.AAPL", 0, b'{"event":"snapshot","seq":0}', 0.0)
    s.offer(upd("trades.AAPL", 1, prints(1)), 10.0)
    s.outbox.take(1 << 20)
    assert s.offer(upd("trades.AAPL", 2, prints(2)), 10.1) == (False, 10.5)
    assert s.offer(upd("trades.AAPL", 3, prints(3, 4)), 10.2) == (True, 0.0)
    assert s.release("trades.AAPL", 10.5)
    (trades,) = events(s.outbox.take(1 << 20)[0])
    assert ([p["s"] for p in trades["data"]], trades["seq"], trades["conflated"]) == ([2, 3, 4], 3, True)
    s.subscribe("alerts", 2.0)
    s.snapshot("alerts", 0, b'{"event":"snapshot","seq":0}', 10.5)
    for seq in (1, 2, 3):
        s.offer(upd("alerts", seq), 10.6)
    s.release("alerts", 11.0)
    got = [(e["seq"], e.get("conflated")) for e in events(s.outbox.take(1 << 20)[0])[1:]]
    assert got == [(1, None), (2, None), (3, None)]


def test_trades_and_feeds_held_for_a_snapshot_follow_it_in_order():
    s = session()
    for channel in ("trades.AAPL", "alerts", "stats.AAPL"):
        s.subscribe(channel, 0)
    for seq in (4, 5, 6, 7):  # published while the snapshots were read
        s.offer(upd("trades.AAPL", seq, prints(seq)), 0.0)
        s.offer(upd("alerts", seq), 0.0)
        s.offer(upd("stats.AAPL", seq), 0.0)
    for channel in ("trades.AAPL", "alerts", "stats.AAPL"):
        s.snapshot(channel, 5, b'{"event":"snapshot","seq":5}', 0.0)
    got = [e for e in events(s.outbox.take(1 << 20)[0]) if e["event"] == "update"]
    trades = [e for e in got if e["channel"] == "trades.AAPL"]
    assert [p["s"] for e in trades for p in e["data"]] == [6, 7]  # 4 and 5 are in the snapshot
    assert [(e["seq"], e.get("conflated")) for e in got if e["channel"] == "alerts"] == [(6, None), (7, None)]
    assert [(e["seq"], e.get("conflated")) for e in got if e["channel"] == "stats.AAPL"] == [(7, True)]


CHANNELS = ("stats.A", "trades.A", "alerts")
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from(CHANNELS)),
        st.tuples(st.just("skip"), st.sampled_from(CHANNELS)),  # lost before WDS (its input conflated)
        st.tuples(st.just("take"), st.integers(1, 2000)),
        st.tuples(st.just("wait"), st.floats(0.0, 0.6)),
    ),
    max_size=60,
)


@FUZZ
@given(OPS, st.integers(0, 5), st.sampled_from([0.0, 2.0]))
def test_stitching_holds_and_no_print_or_feed_update_is_lost(ops, before, max_hz):
    """Whatever the order of publishing, skipping, taking and waiting: per channel, seqs only go up, a
    gap is always marked conflated, trades deliver every print published after the snapshot and the feed
    every update (below their bounds, which these few operations never reach)."""
    s = session()
    seqs = dict.fromkeys(CHANNELS, 0)
    offered: dict[str, list[int]] = {c: [] for c in CHANNELS}
    now, timers, received = 100.0, {}, []

    def publish(channel: str, skipped: bool = False) -> None:
        seqs[channel] += 1
        seq = seqs[channel]
        offered[channel].append(seq)
        data = prints(seq * 10, seq * 10 + 1) if channel.startswith("trades") else {"n": seq}
        _, release_at = s.offer(upd(channel, seq, data), now, skipped)
        if release_at:
            timers[channel] = release_at

    def take(limit: int = 1 << 30) -> None:
        while s.outbox:
            received.extend(e for e in events(s.outbox.take(limit)[0]) if e["event"] == "update")

    for channel in CHANNELS:
        s.subscribe(channel, max_hz)
    for _ in range(before):
        for channel in CHANNELS:
            publish(channel)
    snap = dict(seqs)  # the snapshots reflect what was published so far...
    for channel in CHANNELS:
        publish(channel)  # ...and this comes while they are read
        s.snapshot(channel, snap[channel], b'{"event":"snapshot"}', now)
    for op, arg in ops:
        if op == "publish":
            publish(arg)
        elif op == "skip":
            seqs[arg] += 1  # never reaches WDS
            publish(arg, skipped=True)
        elif op == "take":
            take(arg)
        else:
            now += arg
        for channel, at in list(timers.items()):
            if at <= now:
                del timers[channel]
                s.release(channel, now)
    for channel in timers:
        s.release(channel, now + 10)
    take()
    assert s.outbox.bytes == 0  # its count of bytes followed every merge, batch and take
    for channel in CHANNELS:
        got = [e for e in received if e["channel"] == channel]
        last = snap[channel]
        for e in got:
            assert e["seq"] > last, got  # never back, never older than the snapshot
            assert e["seq"] == last + 1 or e.get("conflated") is True, got  # no gap without the flag
            last = e["seq"]
        assert last == seqs[channel]  # converged on the newest
        after = [seq for seq in offered[channel] if seq > snap[channel]]
        if channel == "trades.A":
            assert [p["s"] for e in got for p in e["data"]] == [
                i for q in after for i in (q * 10, q * 10 + 1)
            ]
        elif channel == "alerts":
            assert [e["seq"] for e in got] == after


# -- session ---------------------------------------------------------------------------------------------


def test_snapshot_then_updates_are_stitched_by_seq():
    s = session()
    assert s.subscribe("stats.AAPL", 0)
    for seq in (4, 5, 6):  # published while the snapshot was read
        s.offer(upd(seq=seq), 0.0)
    assert not s.outbox  # held until the snapshot
    s.snapshot("stats.AAPL", 5, b'{"event":"snapshot","seq":5}', 0.0)
    s.offer(upd(seq=5), 0.0)  # older than the snapshot: never sent
    s.offer(upd(seq=7), 0.0)
    got = events(s.outbox.take(1 << 20)[0])
    assert [(e["event"], e["seq"]) for e in got] == [("snapshot", 5), ("update", 7)]
    # the held 6 was replaced by 7 while waiting: 7 comes conflated, as 6 was never seen
    assert got[1].get("conflated") is True


def test_the_held_update_follows_its_snapshot_and_older_ones_are_dropped():
    s = session()
    s.subscribe("stats.AAPL", 0)
    s.offer(upd(seq=3), 0.0)
    s.snapshot("stats.AAPL", 2, b'{"event":"snapshot","seq":2}', 0.0)
    got = events(s.outbox.take(1 << 20)[0])
    assert [(e["event"], e["seq"], e.get("conflated")) for e in got] == [
        ("snapshot", 2, None),
        ("update", 3, None),
    ]
    s2 = session()
    s2.subscribe("stats.AAPL", 0)
    s2.offer(upd(seq=3), 0.0)
    s2.snapshot("stats.AAPL", 3, b'{"event":"snapshot","seq":3}', 0.0)
    assert [e["event"] for e in events(s2.outbox.take(1 << 20)[0])] == ["snapshot"]


def test_throttled_subscription_sends_the_newest_at_its_pace():
    s = session()
    s.subscribe("quotes.AAPL", 2.0)  # one update per 0.5 s
    s.snapshot("quotes.AAPL", 0, b'{"event":"snapshot","seq":0}', 0.0)
    s.outbox.take(1 << 20)
    assert s.offer(upd("quotes.AAPL", 1), 10.0) == (False, 0.0)  # sent
    assert s.offer(upd("quotes.AAPL", 2), 10.1) == (False, 10.5)  # held, release at 10.5
    assert s.offer(upd("quotes.AAPL", 3), 10.2) == (True, 0.0)  # replaces the held one, timer already set
    assert [e["seq"] for e in events(s.outbox.take(1 << 20)[0])] == [1]
    assert s.release("quotes.AAPL", 10.5)
    (released,) = events(s.outbox.take(1 << 20)[0])
    assert (released["seq"], released["conflated"]) == (3, True)
    assert not s.release("quotes.AAPL", 11.0)  # nothing held


def test_throttled_update_after_its_time_but_before_the_timer_supersedes_the_held_one():
    # the release timer may fire late (a busy loop): an update that arrives after next_at goes out at
    # once, marked conflated because the held one is skipped; the timer then has nothing to release
    s = session()
    s.subscribe("quotes.AAPL", 2.0)
    s.snapshot("quotes.AAPL", 0, b'{"event":"snapshot","seq":0}', 0.0)
    s.outbox.take(1 << 20)
    s.offer(upd("quotes.AAPL", 1), 10.0)
    assert [(e["seq"], e.get("conflated")) for e in events(s.outbox.take(1 << 20)[0])] == [(1, None)]
    assert s.offer(upd("quotes.AAPL", 2), 10.1) == (False, 10.5)  # held
    assert s.offer(upd("quotes.AAPL", 3), 10.6) == (True, 0.0)  # its time came: sent now, 2 replaced
    assert [(e["seq"], e.get("conflated")) for e in events(s.outbox.take(1 << 20)[0])] == [(3, True)]
    assert not s.release("quotes.AAPL", 10.61)  # 2 is never sent after 3
    assert s.offer(upd("quotes.AAPL", 4), 11.2) == (False, 0.0)  # next_at was 11.1: plain, no gap
    assert [(e["seq"], e.get("conflated")) for e in events(s.outbox.take(1 << 20)[0])] == [(4, None)]


def test_a_single_held_back_update_is_released_plain_and_a_timer_waits_for_a_pending_snapshot():
    s = session()
    s.subscribe("quotes.AAPL", 2.0)
    s.snapshot("quotes.AAPL", 0, b'{"event":"snapshot","seq":0}', 0.0)
    s.offer(upd("quotes.AAPL", 1), 10.0)
    assert [(e.get("seq"), e.get("conflated")) for e in events(s.outbox.take(1 << 20)[0])] == [
        (0, None),
        (1, None),
    ]
    s.offer(upd("quotes.AAPL", 2), 10.1)  # held alone: nothing skipped
    assert s.release("quotes.AAPL", 10.5)
    assert [(e["seq"], e.get("conflated")) for e in events(s.outbox.take(1 << 20)[0])] == [(2, None)]
    # a timer that fires while a new snapshot is pending leaves the update held for that snapshot
    s.offer(upd("quotes.AAPL", 3), 10.6)  # held, release at 11.0
    s.subscribe("quotes.AAPL", 2.0)
    s.offer(upd("quotes.AAPL", 5), 10.7)
    assert not s.release("quotes.AAPL", 11.0)
    s.snapshot("quotes.AAPL", 4, b'{"event":"snapshot","seq":4}', 11.1)
    got = events(s.outbox.take(1 << 20)[0])
    assert [(e["event"], e["seq"], e.get("conflated")) for e in got] == [
        ("snapshot", 4, None),
        ("update", 5, None),
    ]


def test_an_update_conflated_on_the_input_is_marked_for_the_clients_that_miss_something():
    s = session()
    s.subscribe("stats.AAPL", 0)
    s.subscribe("stats.MSFT", 0)
    s.snapshot("stats.AAPL", 4, b'{"event":"snapshot","seq":4}', 0.0)
    s.snapshot("stats.MSFT", 5, b'{"event":"snapshot","seq":5}', 0.0)
    s.outbox.take(1 << 20)
    # WDS skipped seq 5 on its input and fans out 6: the AAPL client (at 4) misses 5, the other had it
    s.offer(upd("stats.AAPL", 6), 1.0, skipped=True)
    s.offer(upd("stats.MSFT", 6), 1.0, skipped=True)
    s.offer(upd("stats.AAPL", 7), 1.0)
    got = [(e["channel"], e["seq"], e.get("conflated")) for e in events(s.outbox.take(1 << 20)[0])]
    assert got == [("stats.AAPL", 7, True), ("stats.MSFT", 6, None)]  # 7 replaced 6, still conflated
    s.subscribe("quotes.AAPL", 2.0)  # throttled: a skip held back is remembered until its release
    s.snapshot("quotes.AAPL", 0, b'{"event":"snapshot","seq":0}', 0.0)
    s.offer(upd("quotes.AAPL", 1), 10.0)
    s.outbox.take(1 << 20)
    assert s.offer(upd("quotes.AAPL", 3), 10.1, skipped=True) == (False, 10.5)
    assert s.release("quotes.AAPL", 10.5)
    assert [(e["seq"], e.get("conflated")) for e in events(s.outbox.take(1 << 20)[0])] == [(3, True)]


def test_check_subscribe_refuses_unknown_forbidden_and_too_many():
    s = session(channels=("stats.*", "quotes.AAPL"), subs=3)
    s.subscribe("stats.X", 0)
    ok, refused = s.check_subscribe(
        ("stats.A", "quotes.AAPL", "quotes.MSFT", "nonsense", "stats.B", "stats.C")
    )
    assert ok == ["stats.A", "quotes.AAPL"]
    assert {code: chans for code, _, chans in refused} == {
        "unknown_channel": ["nonsense"],
        "forbidden_channel": ["quotes.MSFT"],
        "too_many_subscriptions": ["stats.B", "stats.C"],
    }


def test_unsubscribe_forgets_the_waiting_update_and_resync_holds_updates():
    s = session()
    s.subscribe("stats.AAPL", 0)
    s.snapshot("stats.AAPL", 0, b'{"event":"snapshot","seq":0}', 0.0)
    s.outbox.take(1 << 20)
    s.offer(upd(seq=1), 0.0)
    s.resyncing()
    assert not s.outbox
    s.offer(upd(seq=2), 0.0)
    assert not s.outbox  # held until the fresh snapshot
    s.snapshot("stats.AAPL", 2, b'{"event":"snapshot","seq":2,"resync":true}', 0.0)
    assert [e["event"] for e in events(s.outbox.take(1 << 20)[0])] == ["snapshot"]
    s.offer(upd(seq=3), 0.0)
    assert s.unsubscribe("stats.AAPL") and not s.outbox and not s.unsubscribe("stats.AAPL")


def test_rate_limit_allows_a_burst_then_one_error_per_second():
    s = session(rate=5.0)
    allowed = [s.allow_action(100.0) for _ in range(15)]
    assert allowed.count(True) == 10  # 2 s of burst
    got = events(s.outbox.take(1 << 20)[0])
    assert [e["code"] for e in got] == ["rate_limited"]  # one error for five refusals
    assert s.allow_action(100.3)  # refilled 1.5 actions
    assert not s.allow_action(100.3) and not s.outbox  # no second error within the second


def test_an_update_older_than_the_newest_queued_is_dropped():
    s = session()
    s.subscribe("stats.AAPL", 0)
    s.snapshot("stats.AAPL", 1, b'{"event":"snapshot","seq":1}', 0.0)
    s.outbox.take(1 << 20)
    s.offer(upd(seq=3), 0.0)
    s.offer(upd(seq=2), 0.0)  # published out of order: must not replace 3, nor follow it
    assert [e["seq"] for e in events(s.outbox.take(1 << 20)[0])] == [3]
    s.offer(upd(seq=2), 0.0)
    assert not s.outbox
