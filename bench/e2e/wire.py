"""The WebSocket wire of the bench's clients (RFC 6455, client side, no extension): the opening handshake,
written and checked by hand; the server's frames parsed out of the bytes as they arrive (``Reader``); the
client's frames built and masked (``client_frame``).

Only what a client of WDS needs, kept cheap because the clients are the bench's load generator: a read
that holds one whole unfragmented frame (nearly every read) costs a few byte look-ups and one slice.
What does not follow the protocol raises ``FrameError``; the caller counts the client as failed.
"""

from __future__ import annotations

import base64
import hashlib
import os

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
WHOLE = (0x80 | TEXT, 0x80 | BINARY)  # the first byte of a final data frame without extension bits
NO_STATUS = 1005  # a close frame without a code (RFC 6455 7.1.5)
MAX_MESSAGE = 64 << 20  # a bigger frame or message is not one of WDS's (its hard limit is far lower)
MAX_HEAD = 16 << 10  # the handshake's response header, at most
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class FrameError(Exception):
    """The server's bytes break the protocol (or pass ``MAX_MESSAGE``)."""


# -- the opening handshake ----------------------------------------------------------------------------


def handshake_request(host: str, port: int, resource: str) -> tuple[bytes, bytes]:
    """The upgrade request for ``resource`` (path and query) and the key it carries."""
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {resource} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    return request.encode(), key


def handshake_response(buf: bytes, key: bytes) -> int:
    """Where the frames start in ``buf`` once the response's header is whole (-1 while it is not); raises
    ``FrameError`` unless it is a 101 that accepts ``key``."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise FrameError("no end to the handshake's response header")
        return -1
    status, *lines = buf[:end].decode("latin-1").split("\r\n")
    if status.split(" ", 2)[1:2] != ["101"]:
        raise FrameError(f"handshake refused: {status[:100]}")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()  # noqa: S324 - the protocol's
    if headers.get("upgrade", "").lower() != "websocket" or headers.get("sec-websocket-accept") != accept:
        raise FrameError("the handshake's response does not accept the upgrade")
    return end + 4


# -- frames -------------------------------------------------------------------------------------------


def client_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final frame from the client: masked, as a client's must be (``mask``: 4 bytes, random if None)."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))  # the client's frames are few and small
    return head + mask + masked


def close_code(payload: bytes) -> int:
    """The status code of a close frame's payload."""
    if not payload:
        return NO_STATUS
    if len(payload) == 1:
        raise FrameError("a close frame with a one-byte payload")
    return int.from_bytes(payload[:2], "big")


class Reader:
    """The server's frames of one connection, fed read by read: ``feed`` gives what the bytes so far
    complete, in order, as ``(opcode, payload)``: a whole message (``TEXT`` or ``BINARY``, its fragments
    joined) or a control frame (``CLOSE``, ``PING``, ``PONG``). What is left of a frame waits for the next
    read."""

    __slots__ = ("kept", "opcode", "parts")

    def __init__(self) -> None:
        self.kept = b""  # the start of a frame that the reads so far do not complete
        self.parts: list[bytes] = []  # a fragmented message's payloads so far
        self.opcode = 0  # that message's opcode

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if not self.kept and not self.parts and len(data) > 3 and data[0] in WHOLE:
            # Nearly every read: one whole unfragmented data frame, its length in 7 or 16 bits.
            n = data[1]
            if n < 126 and len(data) == 2 + n:
                return [(data[0] & 0x0F, data[2:])]
            if n == 126 and len(data) == 4 + (data[2] << 8 | data[3]):
                return [(data[0] & 0x0F, data[4:])]
        buf = self.kept + data if self.kept else data
        out: list[tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, n = buf[pos], buf[pos + 1]
            if n & 0x80:
                raise FrameError("a masked frame from the server")
            head = pos + 2
            if n >= 126:
                size = 2 if n == 126 else 8
                if end - head < size:
                    break
                n = int.from_bytes(buf[head : head + size], "big")
                head += size
                if n > MAX_MESSAGE:
                    raise FrameError(f"a frame of {n} bytes")
            if end - head < n:
                break
            pos = head + n
            payload = buf[head:pos]
            if b0 & 0x70:
                raise FrameError("reserved bits set (no extension was agreed)")
            opcode = b0 & 0x0F
            if opcode >= CLOSE:
                if opcode > PONG or not b0 & 0x80 or n > 125:
                    raise FrameError(f"a bad control frame (opcode {opcode}, {n} bytes)")
                out.append((opcode, payload))
            elif opcode == CONT:
                if not self.parts:
                    raise FrameError("a continuation frame outside a fragmented message")
                self.parts.append(payload)
                if sum(map(len, self.parts)) > MAX_MESSAGE:
                    raise FrameError("a fragmented message too large")
                if b0 & 0x80:
                    out.append((self.opcode, b"".join(self.parts)))
                    self.parts = []
            elif opcode > BINARY:
                raise FrameError(f"reserved opcode {opcode}")
            elif self.parts:
                raise FrameError("a new message inside a fragmented one")
            elif b0 & 0x80:
                out.append((opcode, payload))
            else:
                self.opcode, self.parts = opcode, [payload]
        self.kept = buf[pos:] if pos < end else b""
        return out
