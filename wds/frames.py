"""Server-to-client WebSocket frames, sans I/O: the bytes WDS hands straight to a client's transport.

A WDS message is one unfragmented text frame (RFC 6455, section 5.2): the FIN bit and the text opcode
in one byte, then the payload length (7 bits; 126 and 16 bits; or 127 and 64 bits), no mask (a server
never masks), then the payload. Built here once per message, or once per update for every client it
goes to alone, instead of once per client by ``websockets``: the connection's own protocol object still
does the handshake, reading, pings and pongs and the close (``wds.writer`` keeps the two apart).
"""

from __future__ import annotations

import struct

FIN_TEXT = 0x81  # FIN, opcode 1 (text)
_SHORT = [bytes((FIN_TEXT, n)) for n in range(126)]
_MEDIUM = struct.Struct("!BBH").pack
_LONG = struct.Struct("!BBQ").pack


def header(length: int) -> bytes:
    """The header of a text frame of ``length`` payload bytes."""
    if length < 126:
        return _SHORT[length]
    if length < 65_536:
        return _MEDIUM(FIN_TEXT, 126, length)
    return _LONG(FIN_TEXT, 127, length)


def text_frame(payload: bytes) -> bytes:
    return header(len(payload)) + payload


def message_frame(events: list[bytes], size: int) -> bytes:
    """The frame of a message holding ``events`` as a JSON array; ``size``: their bytes together."""
    return b"".join((header(size + len(events) + 1), b"[", b",".join(events), b"]"))
