"""The Lua scripts that apply processed batches to Redis, loaded once and called by SHA in pipelines.

Each script in ``lua/`` is prepended with ``prelude.lua`` (context, redelivery guard, envelope), and the
stats scripts with ``stats.lua``. A script is called as ``EVALSHA sha 0 <context JSON> <records JSON>``.
Calls go into a pipeline by SHA only: after a Redis restart the scripts are gone, the pipeline fails with
NOSCRIPT, ``load()`` runs again and the batch is retried; the redelivery guard makes the retry safe.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from redis.asyncio import Redis

_PARTS = {
    "trades": ("prelude", "stats", "trades"),
    "quotes": ("prelude", "quotes"),
    "aggregates": ("prelude", "stats", "aggregates"),
    "halts": ("prelude", "halts"),
    "raw": ("prelude", "raw"),
    "plugin": ("prelude", "plugin"),
    "leaders": ("prelude", "leaders"),
}


def _source(name: str) -> str:
    folder = resources.files(__package__) / "lua"
    return "\n".join((folder / f"{part}.lua").read_text() for part in _PARTS[name])


class Scripts:
    """Script sources and SHAs; ``sha[name]`` for EVALSHA, ``await load(redis)`` after a restart."""

    def __init__(self) -> None:
        self.source = {name: _source(name) for name in _PARTS}
        self.sha = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in self.source.items()}  # noqa: S324

    async def load(self, redis: Redis) -> None:
        for name, source in self.source.items():
            sha = await redis.script_load(source)
            if sha != self.sha[name]:  # pragma: no cover - Redis hashes the same bytes
                raise RuntimeError(f"Redis returned another SHA for {name}")
