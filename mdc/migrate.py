"""Upgrading MDC in place from the names of an older version (before the Redis Cluster layout).

Older versions kept every channel's ``seq`` in one hash (``md:seq``) and the market-wide state under
untagged names (``md:day``, ``md:feed:halts``, ``md:sigseq:signals.x``, ...). Now a symbol's ``seq`` is
in its own slot (``md:seq:{AAPL}``) and the market-wide names carry the prefix as a hash tag
(``md:{md}:day``): see ``mdc.names``. A processor starting on a single Redis calls ``upgrade`` once:

- each ``seq`` moves to where it is kept now, as the larger of the two, so that a client connected
  across the upgrade never sees a channel's ``seq`` go back (it would drop the updates as old);
- the market-wide keys are renamed unless the new name exists already (a processor of the new version
  wrote it first: the newer wins);
- a marker (``Names.layout``) says it is done, so the next start only reads one key.

Several processors may start at once: each step is idempotent (max, rename-if-absent), so they can
race. A Redis Cluster never held the old layout (the old version could not run on one): nothing to do.
"""

from __future__ import annotations

import logging
from typing import Any

from .names import Names, signal_owner

log = logging.getLogger(__name__)

LAYOUT = b"2"  # the layout of this version (1: before the Redis Cluster layout)
BATCH = 500  # hash fields or keys per script call

#: KEYS: pairs (old, new) of places of a seq; ARGV: per pair the hash field of each ('' when the place is
#: a counter of its own, as a ``signals.*`` channel's). The new place gets the larger; the old goes.
_MOVE_SEQ = """
local function get(key, field)
  if field == '' then return redis.call('GET', key) end
  return redis.call('HGET', key, field)
end
local moved = 0
for i = 1, #KEYS / 2 do
  local old, new, of, nf = KEYS[2 * i - 1], KEYS[2 * i], ARGV[2 * i - 1], ARGV[2 * i]
  local before = get(old, of)
  if before then
    local now = get(new, nf)
    if not now or tonumber(now) < tonumber(before) then
      if nf == '' then redis.call('SET', new, before) else redis.call('HSET', new, nf, before) end
    end
    if of == '' then redis.call('DEL', old) else redis.call('HDEL', old, of) end
    moved = moved + 1
  end
end
return moved
"""


def _legacy(names: Names) -> dict[str, str]:
    """The fixed market-wide names of an older version -> this version's."""
    p = names.prefix
    return {f"{p}:{name}": f"{names.g}:{name}" for name in ("halted", "day", "prevclose", "alerted", "vavg")}


async def upgrade(redis: Any, names: Names) -> dict[str, int]:
    """Move an older version's names to this one's (see the module docstring); what was moved."""
    if await redis.get(names.layout()) == LAYOUT:
        return {}
    p = names.prefix
    moved = {"seq": 0, "keys": 0}
    move = redis.register_script(_MOVE_SEQ)
    old_seq = f"{p}:seq"
    cursor = 0
    while True:
        cursor, fields = await redis.hscan(old_seq, cursor, count=BATCH)
        if fields:
            channels = [f.decode() for f in fields]
            keys = [k for c in channels for k in (old_seq, names.seq_key(c))]
            args = [a for c in channels for a in (c, "" if signal_owner(c) else c)]
            moved["seq"] += await move(keys=keys, args=args)
        if not cursor:
            break
    patterns = [f"{p}:sigseq:*", f"{p}:sigs:*", f"{p}:feed:*", f"{p}:board:*", f"{p}:rank:*", f"{p}:signal:*"]
    renames = dict(_legacy(names))
    for pattern in patterns:
        async for key in redis.scan_iter(match=pattern, count=BATCH):
            old = key.decode()
            renames[old] = f"{names.g}:{old[len(p) + 1 :]}"
    for old, new in renames.items():
        if old.startswith(f"{p}:sigseq:"):
            moved["seq"] += await move(keys=[old, new], args=["", ""])
        elif await redis.exists(old) and await redis.renamenx(old, new):
            moved["keys"] += 1
    await redis.set(names.layout(), LAYOUT)
    if any(moved.values()):
        log.info("mdc names upgraded", extra={"prefix": p, **moved})
    return moved
