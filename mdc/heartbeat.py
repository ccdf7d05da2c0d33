"""Heartbeats: every long-running component instance says it is alive, and how it is, in Redis.

``<prefix>:hb:<component>:<instance>`` holds ``{"component", "instance", "version", "host", "pid",
"started", "at", ...the component's own figures (rates, lag, state)}`` and expires after
``HEARTBEAT_TTL_S``; it is rewritten every ``HEARTBEAT_EVERY_S``. An instance gone for good disappears by
itself. The control plane lists them with ``mdc.reader.Reader.heartbeats()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from mdpipe import __version__

from .names import HEARTBEAT_EVERY_S, HEARTBEAT_TTL_S, Names

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        redis: Redis,
        names: Names,
        component: str,
        instance: str,
        figures: Callable[[], dict[str, Any]],
        every: float = HEARTBEAT_EVERY_S,
    ) -> None:
        self.redis, self.key, self.figures, self.every = (
            redis,
            names.heartbeat(component, instance),
            figures,
            every,
        )
        self.base = {
            "component": component,
            "instance": instance,
            "version": __version__,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": int(time.time() * 1000),
        }
        self.ok = False  # the last write succeeded

    async def beat(self) -> None:
        doc = {**self.base, "at": int(time.time() * 1000), **self.figures()}
        await self.redis.set(self.key, orjson.dumps(doc), ex=HEARTBEAT_TTL_S)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.beat()
                self.ok = True
            except (RedisError, OSError) as exc:
                if self.ok:
                    log.warning("heartbeat not written", extra={"error": repr(exc)})
                self.ok = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(self.key)  # a clean stop says so at once
