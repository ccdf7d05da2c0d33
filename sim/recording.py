"""The recording file format: raw Massive frames with their receive time, gzip-compressed.

Layout (inside one gzip stream, so ``zcat`` shows the header)::

    MDREC1\\n
    {"format":"mdpipe-recording","version":1,"market":...,"feed":...,"subscriptions":...,"started_ns":...}\\n
    then per frame: recv_ns (u64, big-endian) | length (u32) | kind (u8: 1 text, 2 binary) | payload

Frames are stored exactly as received, status frames included. The reader stops cleanly at a truncated
tail (a recorder that was killed) and refuses a frame longer than MAX_FRAME, so a corrupt file cannot
make it allocate without bound.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

MAGIC = b"MDREC1\n"
FORMAT = "mdpipe-recording"
VERSION = 1
MAX_FRAME = 64 * 1024 * 1024
MAX_HEADER = 64 * 1024
TEXT, BINARY = 1, 2
_RECORD = struct.Struct(">QIB")


class RecordingError(Exception):
    """The file is not a recording this version can read."""


@dataclass(frozen=True, slots=True)
class Recorded:
    recv_ns: int
    payload: bytes
    text: bool


class RecordingWriter:
    def __init__(self, path: str | Path, header: dict[str, Any], *, compresslevel: int = 1) -> None:
        # Level 1: recording must keep up with a live feed; the gain of higher levels is small here.
        self._file: BinaryIO = gzip.open(path, "wb", compresslevel=compresslevel)  # noqa: SIM115
        self._file.write(MAGIC)
        self._file.write(orjson.dumps({"format": FORMAT, "version": VERSION, **header}) + b"\n")
        self.frames = 0

    def write(self, recv_ns: int, payload: str | bytes) -> None:
        text = isinstance(payload, str)
        data = payload.encode() if isinstance(payload, str) else payload
        self._file.write(_RECORD.pack(recv_ns, len(data), TEXT if text else BINARY))
        self._file.write(data)
        self.frames += 1

    def close(self) -> None:
        self._file.close()


class RecordingReader:
    """Iterate a recording's frames; ``header`` is read on open and ``truncated`` is set at a cut tail."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: BinaryIO = gzip.open(self.path, "rb")  # noqa: SIM115
        self.truncated = False
        try:
            if self._file.read(len(MAGIC)) != MAGIC:
                raise RecordingError(f"{self.path}: not an mdpipe recording")
            line = self._file.readline(MAX_HEADER)
            header = orjson.loads(line)
        except (OSError, EOFError, orjson.JSONDecodeError) as exc:
            self._file.close()
            raise RecordingError(f"{self.path}: unreadable header ({exc})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
            self._file.close()
            raise RecordingError(f"{self.path}: unsupported recording header")
        self.header: dict[str, Any] = header

    def __iter__(self) -> Iterator[Recorded]:
        read = self._file.read
        try:
            while True:
                head = read(_RECORD.size)
                if not head:
                    return
                if len(head) < _RECORD.size:
                    self.truncated = True
                    return
                recv_ns, length, kind = _RECORD.unpack(head)
                if length > MAX_FRAME or kind not in (TEXT, BINARY):
                    raise RecordingError(f"{self.path}: corrupt frame record")
                payload = read(length)
                if len(payload) < length:
                    self.truncated = True
                    return
                yield Recorded(recv_ns, payload, kind == TEXT)
        except (EOFError, gzip.BadGzipFile):
            self.truncated = True

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
