"""The bench clients' WebSocket wire (bench/e2e/wire.py): the server's frames parsed from hand-built bytes
(each length form at its bounds, any split across reads, fragments, control frames, every protocol
error), the client's frames masked, the opening handshake, and a fuzz: garbage gives frames or a
FrameError, never another exception."""

from __future__ import annotations

import base64
import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.e2e import wire
from bench.e2e.wire import BINARY, CLOSE, CONT, PING, PONG, TEXT, FrameError, Reader
from tests.strategies import result_or_reason


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bytes = b"") -> bytes:
    """A frame as a server sends it (unmasked unless ``mask``), by hand: the shortest length form."""
    n = len(payload)
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    masked = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, masked | n))
    elif n < 1 << 16:
        head = bytes((first, masked | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, masked | 127)) + n.to_bytes(8, "big")
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + payload


def feed_all(chunks: list[bytes]) -> list[tuple[int, bytes]]:
    reader, out = Reader(), []
    for chunk in chunks:
        out += reader.feed(chunk)
    assert reader.kept == b""
    return out


@pytest.mark.parametrize(("n", "head"), [(0, 2), (1, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)])
def test_each_length_form_at_its_bounds(n: int, head: int) -> None:
    payload = bytes(i % 251 for i in range(n))
    data = frame(TEXT, payload)
    assert len(data) == head + n
    assert Reader().feed(data) == [(TEXT, payload)]
    # one byte short: nothing yet, and the rest completes it
    reader = Reader()
    assert reader.feed(data[:-1]) == []
    assert reader.feed(data[-1:]) == [(TEXT, payload)]


def test_a_frame_split_at_every_byte() -> None:
    data = frame(TEXT, b"x" * 300)  # a 16-bit length: the header itself can be split
    for cut in range(1, len(data)):
        assert feed_all([data[:cut], data[cut:]]) == [(TEXT, b"x" * 300)]
    assert feed_all([data[i : i + 1] for i in range(len(data))]) == [(TEXT, b"x" * 300)]


def test_several_frames_in_one_read_and_across_reads() -> None:
    data = frame(TEXT, b'[{"a":1}]') + frame(BINARY, b"\x00\x01") + frame(PING, b"hi") + frame(TEXT, b"[]")
    expected = [(TEXT, b'[{"a":1}]'), (BINARY, b"\x00\x01"), (PING, b"hi"), (TEXT, b"[]")]
    assert Reader().feed(data) == expected
    assert feed_all([data[:5], data[5:17], data[17:]]) == expected


def test_fragments_are_joined_with_control_frames_between() -> None:
    data = (
        frame(TEXT, b"[1,", fin=False)
        + frame(PING, b"p")
        + frame(CONT, b"", fin=False)
        + frame(CONT, b"2]")
        + frame(TEXT, b"[3]")
    )
    assert Reader().feed(data) == [(PING, b"p"), (TEXT, b"[1,2]"), (TEXT, b"[3]")]
    assert feed_all([data[i : i + 3] for i in range(0, len(data), 3)]) == [
        (PING, b"p"), (TEXT, b"[1,2]"), (TEXT, b"[3]"),
    ]  # fmt: skip


def test_a_fragmented_message_of_the_long_forms() -> None:
    parts = [b"a" * 65536, b"b" * 126, b"c" * 125]
    data = frame(BINARY, parts[0], fin=False) + frame(CONT, parts[1], fin=False) + frame(CONT, parts[2])
    assert Reader().feed(data) == [(BINARY, b"".join(parts))]


def test_control_frames() -> None:
    data = frame(CLOSE, (4008).to_bytes(2, "big") + b"too slow") + frame(PONG, b"") + frame(CLOSE, b"")
    (close, _), (pong, _), (empty, payload) = out = Reader().feed(data)
    assert (close, pong, empty) == (CLOSE, PONG, CLOSE)
    assert wire.close_code(out[0][1]) == 4008
    assert wire.close_code(payload) == wire.NO_STATUS
    with pytest.raises(FrameError):
        wire.close_code(b"\x03")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (frame(TEXT, b"[]", mask=b"abcd"), "masked"),
        (frame(TEXT, b"[]", rsv=4), "reserved bits"),
        (frame(TEXT, b"[]", rsv=1), "reserved bits"),
        (frame(3, b""), "reserved opcode"),
        (frame(0xB, b""), "control frame"),
        (frame(PING, b"", fin=False), "control frame"),
        (frame(PING, b"x" * 126), "control frame"),
        (frame(CONT, b"x"), "continuation"),
        (frame(TEXT, b"x", fin=False) + frame(TEXT, b"y"), "inside a fragmented"),
        (bytes((0x81, 127)) + (wire.MAX_MESSAGE + 1).to_bytes(8, "big"), "a frame of"),
        (bytes((0x81, 127)) + (1 << 63).to_bytes(8, "big"), "a frame of"),
    ],
)
def test_protocol_errors(data: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        Reader().feed(data)


def test_a_fragmented_message_past_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "MAX_MESSAGE", 100)
    reader = Reader()
    reader.feed(frame(TEXT, b"x" * 60, fin=False))
    with pytest.raises(FrameError, match="too large"):
        reader.feed(frame(CONT, b"x" * 60, fin=False))


@pytest.mark.parametrize("n", [0, 5, 125, 126, 65535, 65536])
def test_client_frames_are_masked(n: int) -> None:
    payload = bytes(i % 7 for i in range(n))
    data = wire.client_frame(TEXT, payload, mask=b"\x01\x02\x03\x04")
    assert data[0] == 0x80 | TEXT
    assert data[1] & 0x80  # masked
    size = data[1] & 0x7F
    head = 2 if size < 126 else 4 if size == 126 else 10
    length = size if size < 126 else int.from_bytes(data[2:head], "big")
    assert length == n
    mask, body = data[head : head + 4], data[head + 4 :]
    assert mask == b"\x01\x02\x03\x04"
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(body)) == payload
    assert len({wire.client_frame(TEXT, payload)[head : head + 4] for _ in range(3)}) > 1  # random masks


def accept_for(key: bytes) -> str:
    return base64.b64encode(hashlib.sha1(key + wire.GUID).digest()).decode()  # noqa: S324


def test_handshake() -> None:
    request, key = wire.handshake_request("127.0.0.1", 8780, "/ws?token=abc")
    assert request.startswith(b"GET /ws?token=abc HTTP/1.1\r\nHost: 127.0.0.1:8780\r\n")
    assert b"Sec-WebSocket-Key: " + key + b"\r\n" in request
    assert request.endswith(b"\r\n\r\n")
    assert len(base64.b64decode(key)) == 16
    head = (
        f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_for(key)}\r\n\r\n"
    ).encode()
    rest = frame(TEXT, b"[]")
    assert wire.handshake_response(head[:-1], key) == -1
    assert wire.handshake_response(head + rest, key) == len(head)
    with pytest.raises(FrameError, match="does not accept"):
        wire.handshake_response(head.replace(accept_for(key).encode(), b"x" * 28), key)
    with pytest.raises(FrameError, match="refused"):
        wire.handshake_response(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", key)
    with pytest.raises(FrameError, match="no end"):
        wire.handshake_response(b"HTTP/1.1 101 " + b"x" * wire.MAX_HEAD, key)


# -- fuzz -----------------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_garbage_gives_frames_or_a_frame_error(chunks: list[bytes]) -> None:
    reader = Reader()
    for chunk in chunks:
        if result_or_reason(lambda c=chunk: reader.feed(c), FrameError) is None:
            break  # a client stops reading at its first error


FRAMES = st.lists(
    st.tuples(st.sampled_from([TEXT, BINARY, PING, PONG, CLOSE]), st.binary(max_size=400), st.integers(1, 3)),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(FRAMES, st.lists(st.integers(0, 2000), max_size=6))
def test_any_valid_stream_split_anywhere(frames: list[tuple[int, bytes, int]], cuts: list[int]) -> None:
    """Messages (data ones in up to 3 fragments) and control frames, cut into reads anywhere: parsed back."""
    data, expected = b"", []
    for opcode, payload, pieces in frames:
        if opcode >= CLOSE:
            payload = payload[:125]
            data += frame(opcode, payload)
        else:
            step = max(1, -(-len(payload) // pieces))
            parts = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
            for i, part in enumerate(parts):
                data += frame(opcode if i == 0 else CONT, part, fin=i == len(parts) - 1)
        expected.append((opcode, payload))
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    assert feed_all([data[a:b] for a, b in itertools.pairwise(bounds)]) == expected
