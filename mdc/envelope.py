"""The one envelope of every update published on an MDC channel.

``{"type": "stats", "channel": "stats.AAPL", "seq": 42, "ts": 1763649000123, "sent": 1763649000125,
"src": "host:123", "data": {...}}``

- ``type``: what ``data`` is (``trades``, ``quote``, ``bar.1s``, ``bar.1m``, ``stats``, ``luld``,
  ``leaders``, ``halt``, ``resume``, ``alert``, or a plug-in's own);
- ``channel``: the client-facing channel name (without the Redis prefix);
- ``seq``: the channel's sequence number, +1 per update, kept in Redis (the ``<prefix>:seq`` hash), so a
  reader can tell a gap and can stitch a snapshot (which carries the seq it reflects) to the stream;
- ``ts``: event time, ms since the epoch (the newest event the update reflects);
- ``sent``: publish time, ms since the epoch;
- ``src``: the instance that published it;
- ``resync`` (only when true): ``data`` is the channel's whole state, as a snapshot's, not an increment
  (a processor merged the vendor's REST snapshot: a start mid-day, a reconnect, lost messages). For
  ``trades.SYM`` its prints are the newest known, which a client may already hold.

The processors build it with ``encode_raw`` (and, for what several replicas publish, the leaderboards
and the feeds, in Lua: ``mdp/lua/prelude.lua``, the same format, checked by a test); ``encode`` is for
Python publishers and tests; ``decode`` validates what a subscriber receives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

FIELDS = ("type", "channel", "seq", "ts", "sent", "src", "data")


class MalformedUpdate(ValueError):
    """A pub/sub message that is not an MDC envelope; the reason is safe to log."""


@dataclass(frozen=True, slots=True)
class Update:
    type: str
    channel: str
    seq: int
    ts: int
    sent: int
    src: str
    data: Any
    resync: bool = False


def encode(type: str, channel: str, seq: int, ts: int, sent: int, src: str, data: Any) -> bytes:
    return encode_raw(
        type.encode(), channel.encode(), seq, ts, b"%d" % sent, orjson.dumps(src), orjson.dumps(data)
    )


def encode_raw(
    type: bytes, channel: bytes, seq: int, ts: int, sent: bytes, src: bytes, data: bytes, resync: bool = False
) -> bytes:
    """The envelope from parts already in JSON: ``type`` and ``channel`` plain (they are names made of
    safe characters), ``sent`` the decimal digits, ``src`` and ``data`` JSON values. The processors'
    hot path: one format operation, no dictionary."""
    return (_RESYNC if resync else _TEMPLATE) % (type, channel, seq, ts, sent, src, data)


_TEMPLATE = b'{"type":"%b","channel":"%b","seq":%d,"ts":%d,"sent":%b,"src":%b,"data":%b}'
_RESYNC = b'{"type":"%b","channel":"%b","seq":%d,"ts":%d,"sent":%b,"src":%b,"resync":true,"data":%b}'


def decode(raw: bytes | str) -> Update:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedUpdate(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedUpdate("not a JSON object")
    missing = [f for f in FIELDS if f not in obj]
    if missing:
        raise MalformedUpdate("missing " + ", ".join(missing))
    typ, channel, seq, ts, sent, src = (obj[f] for f in FIELDS[:-1])
    if not (isinstance(typ, str) and isinstance(channel, str) and isinstance(src, str)):
        raise MalformedUpdate("type, channel and src must be strings")
    if not all(type(v) is int for v in (seq, ts, sent)):
        raise MalformedUpdate("seq, ts and sent must be integers")
    return Update(typ, channel, seq, ts, sent, src, obj["data"], obj.get("resync") is True)
