"""Running a component's asyncio main: uvloop when available, clean stop on SIGINT and SIGTERM.

``serve(main)`` runs ``main(stop)`` where ``stop`` is an ``asyncio.Event`` set by the first signal; a
second signal stops at once. The exit code is what ``main`` returns (0 when it returns None).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Main = Callable[[asyncio.Event], Awaitable[int | None]]


def serve(main: Main) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(_guarded(main)) or 0
    return uvloop.run(_guarded(main)) or 0


async def _guarded(main: Main) -> int | None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("second signal; stopping now", extra={"signal": sig.name})
            if task is not None:
                task.cancel()
            return
        log.info("stopping", extra={"signal": sig.name})
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await main(stop)
    except asyncio.CancelledError:
        return 130
