"""Recording from a live connection and replaying the file: the frames come back the same."""

from __future__ import annotations

import gzip
import struct

import orjson
import pytest

from mdpipe.settings import MassiveSettings
from sim.recorder import record
from sim.recording import MAGIC, RecordingError, RecordingReader, RecordingWriter
from tests.conftest import ALL_STOCKS, KEY, Collector, client_for


def massive_settings(emulator, subscriptions: str = ",".join(ALL_STOCKS)) -> MassiveSettings:
    return MassiveSettings(
        massive_api_key=KEY, massive_feed=emulator.feed, massive_market="stocks",
        massive_subscriptions=subscriptions,
    )  # fmt: skip


def data_frames(path) -> list[bytes]:
    with RecordingReader(path) as reader:
        return [r.payload for r in reader if b'"status"' not in r.payload]


async def test_record_then_replay_flat_out_gives_the_same_frames(make_emulator, tmp_path):
    live = await make_emulator(sim_rate=20_000)
    path = tmp_path / "session.mdrec"
    result = await record(path, massive_settings(live), max_frames=60, duration=20)
    assert result.frames >= 60 and result.dropped == 0
    recorded = data_frames(path)
    assert len(recorded) >= 50

    with RecordingReader(path) as reader:
        assert reader.header["market"] == "stocks" and reader.header["subscriptions"] == ",".join(ALL_STOCKS)
        records = list(reader)
    assert all(r.text for r in records)  # the vendor sends text frames
    assert [r.recv_ns for r in records] == sorted(r.recv_ns for r in records)

    replay = await make_emulator(sim_replay=str(path), sim_replay_speed=0)
    collector = Collector(client_for(replay, ALL_STOCKS))
    try:
        await collector.wait_for(lambda got: sum('"status"' not in m for m in got) >= len(recorded))
    finally:
        await collector.close()
    replayed = [m.encode() for m in collector.received if '"status"' not in m]
    assert replayed == recorded  # byte for byte


async def test_paced_replay_filters_by_subscription_and_keeps_pace(make_emulator, tmp_path):
    live = await make_emulator(sim_rate=20_000)
    path = tmp_path / "session.mdrec"
    await record(path, massive_settings(live), duration=1.0)
    with RecordingReader(path) as reader:
        records = [r for r in reader if b'"status"' not in r.payload]
    span_s = (records[-1].recv_ns - records[0].recv_ns) / 1e9
    expected = [
        e for r in records for e in orjson.loads(r.payload) if e["ev"] == "T" and e["sym"] in ("AAPL", "SPY")
    ]
    assert expected

    replay = await make_emulator(sim_replay=str(path), sim_replay_speed=4)
    collector = Collector(client_for(replay, ["T.AAPL", "T.SPY"]))
    try:
        await collector.wait_for(lambda got: sum(m.count('"ev":"T"') for m in got) >= len(expected))
    finally:
        await collector.close()
    got = [e for m in collector.received for e in orjson.loads(m) if e["ev"] != "status"]
    assert got == expected
    assert replay.source.finished or span_s / 4 > 0.05


def test_reader_stops_cleanly_at_a_truncated_tail(tmp_path):
    path = tmp_path / "cut.mdrec"
    writer = RecordingWriter(path, {"market": "stocks"})
    for i in range(3):
        writer.write(i, f'[{{"ev":"T","i":"{i}"}}]')
    writer.close()
    whole = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(whole[:-5]))
    with RecordingReader(path) as reader:
        frames = list(reader)
        assert reader.truncated
    assert [f.recv_ns for f in frames] == [0, 1]


@pytest.mark.parametrize(
    "content",
    [
        b"not gzip at all",
        gzip.compress(b"NOTREC\n{}\n"),
        gzip.compress(MAGIC + b"{not json\n"),
        gzip.compress(MAGIC + b'{"format":"other","version":1}\n'),
    ],
)
def test_reader_refuses_what_is_not_a_recording(tmp_path, content):
    path = tmp_path / "bad.mdrec"
    path.write_bytes(content)
    with pytest.raises(RecordingError):
        RecordingReader(path)


def test_reader_refuses_an_absurd_frame_length(tmp_path):
    path = tmp_path / "huge.mdrec"
    header = MAGIC + b'{"format":"mdpipe-recording","version":1}\n'
    path.write_bytes(gzip.compress(header + struct.pack(">QIB", 1, 2**31, 1)))
    with RecordingReader(path) as reader, pytest.raises(RecordingError, match="corrupt"):
        list(reader)


async def test_emulator_refuses_to_start_on_a_bad_recording(make_emulator, tmp_path):
    path = tmp_path / "bad.mdrec"
    path.write_bytes(b"garbage")
    with pytest.raises(RecordingError):
        await make_emulator(sim_replay=str(path))
