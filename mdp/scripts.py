"""The Lua scripts of what several replicas share (``lua/``), each prepended with ``prelude.lua``.

``leaders`` runs on its own, by SHA (``Scripts.load`` after a Redis restart: NOSCRIPT, load, call
again); ``shared`` and ``plugin`` run inside a group's transaction and are sent whole (``mdp.writes``).
"""

from __future__ import annotations

import hashlib
from importlib import resources

from redis.asyncio import Redis

from mdc.publisher import SIGNAL_LUA


def source(name: str) -> str:
    folder = resources.files(__package__) / "lua"
    parts = [(folder / f"{part}.lua").read_text() for part in ("prelude", name)]
    if name == "plugin":  # plug-ins publish on signals.* as every publisher does: mdc's one script
        parts.insert(1, SIGNAL_LUA)
    return "\n".join(parts)


class Scripts:
    """The leaderboard script's source and SHA; ``await load(redis)`` after a restart."""

    def __init__(self) -> None:
        self.source = {"leaders": source("leaders")}
        self.sha = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in self.source.items()}  # noqa: S324

    async def load(self, redis: Redis) -> None:
        for name, src in self.source.items():
            sha = await redis.script_load(src)
            if sha != self.sha[name]:  # pragma: no cover - Redis hashes the same bytes
                raise RuntimeError(f"Redis returned another SHA for {name}")
