"""Supervised child processes (for ``mdpipe up``): started in order and waited for, their output
prefixed by name, restarted with backoff when they exit, all stopped on the way out.

- Each child leads its own process group, so the terminal's Ctrl-C reaches only the supervisor, which
  stops the children in reverse order (SIGTERM to the group, SIGKILL to what is left after the grace
  period): nothing is left behind, grandchildren included (gunicorn's workers, Erlang's helpers).
- A child also gets SIGTERM when the supervisor dies, even by SIGKILL (``die_with_parent``).
- Exit code 2 is a configuration error: restarting would not fix it, so the supervisor stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from .backoff import Backoff

log = logging.getLogger(__name__)

EXIT_CONFIG = 2
LINE_LIMIT = 1 << 20  # longest output line read whole; a longer one is cut
HEALTHY_S = 30.0  # a child up this long restarts fast again after a crash


def die_with_parent() -> None:
    """In the child: SIGTERM when the parent dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


@dataclass
class Spec:
    """What to run. ``ready``: returns True once the child serves (checked after each start)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready: Callable[[], bool] | None = None
    ready_timeout_s: float = 60.0
    stop_timeout_s: float = 15.0
    cwd: str | None = None


@dataclass
class Child:
    spec: Spec
    backoff: Backoff  # between restarts
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class ChildFailed(Exception):
    """A child could not start, or exited with a configuration error."""

    def __init__(self, name: str, message: str, code: int = 1) -> None:
        super().__init__(f"{name}: {message}")
        self.code = code


def http_ready(port: int, path: str = "/readyz") -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    return check


class Supervisor:
    def __init__(self, out: TextIO = sys.stdout, restart_max_s: float = 30.0) -> None:
        self.out = out
        self.restart_max_s = restart_max_s
        self.children: list[Child] = []
        self.failed: ChildFailed | None = None
        self.stopping = False
        self.changed = asyncio.Event()  # a child failed for good: the caller stops
        self._width = 6

    # -- starting ------------------------------------------------------------------------------------

    async def start(self, spec: Spec) -> Child:
        """Start ``spec`` and wait until it is ready; ChildFailed when it exits or never gets ready."""
        child = Child(spec, Backoff(0.5, self.restart_max_s, HEALTHY_S))
        self.children.append(child)
        self._width = max(self._width, len(spec.name))
        await self._spawn(child)
        await self._wait_ready(child)
        child.tasks.append(asyncio.create_task(self._watch(child), name=f"watch {spec.name}"))
        return child

    async def _spawn(self, child: Child) -> None:
        spec = child.spec
        try:
            child.proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                env=spec.env,
                cwd=spec.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: see the module's docstring
                preexec_fn=die_with_parent,  # a prctl call only: safe before exec
                limit=LINE_LIMIT,
            )
        except OSError as exc:
            raise ChildFailed(spec.name, f"cannot start {spec.argv[0]}: {exc.strerror or exc}") from None
        child.starts += 1
        child.backoff.up()
        assert child.proc.stdout is not None
        child.tasks.append(asyncio.create_task(self._pump(spec.name, child.proc.stdout)))

    async def _wait_ready(self, child: Child) -> None:
        spec = child.spec
        if spec.ready is None:
            return
        deadline = time.monotonic() + spec.ready_timeout_s
        while not await asyncio.to_thread(spec.ready):
            assert child.proc is not None
            if child.proc.returncode is not None:
                code = child.proc.returncode
                raise ChildFailed(spec.name, f"exited with {code} while starting (its output is above)", code)
            if time.monotonic() > deadline:
                raise ChildFailed(spec.name, f"not ready after {spec.ready_timeout_s:.0f} s")
            await asyncio.sleep(0.2)

    # -- running -------------------------------------------------------------------------------------

    async def _pump(self, name: str, stream: asyncio.StreamReader) -> None:
        prefix = f"{name:<{self._width}} | "
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # longer than LINE_LIMIT: take what is buffered
                line = await stream.read(LINE_LIMIT) + b"\n"
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\n")
            with contextlib.suppress(OSError, ValueError):
                self.out.write(prefix + text + "\n")
                self.out.flush()

    async def _watch(self, child: Child) -> None:
        spec = child.spec
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            if self.stopping:
                return
            child.backoff.down()
            if code == EXIT_CONFIG:
                self._fail(ChildFailed(spec.name, "exited with a configuration error (see above)", code))
                return
            delay = child.backoff.next_delay()
            self.say(f"{spec.name} exited with {code}: restarting in {delay:.1f} s")
            await asyncio.sleep(delay)
            if self.stopping:
                return
            self._kill_group(child, signal.SIGKILL)  # anything it left behind
            try:
                await self._spawn(child)
            except ChildFailed as exc:
                self._fail(exc)
                return

    def _fail(self, exc: ChildFailed) -> None:
        if self.failed is None:
            self.failed = exc
        self.changed.set()

    def say(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.out.write(f"{'up':<{self._width}} | {message}\n")
            self.out.flush()

    # -- stopping ------------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop every child, newest first: SIGTERM, then SIGKILL after its grace period."""
        self.stopping = True
        for child in reversed(self.children):
            if child.running:
                self._kill_group(child, signal.SIGTERM)
                assert child.proc is not None
                try:
                    await asyncio.wait_for(child.proc.wait(), child.spec.stop_timeout_s)
                except TimeoutError:
                    self.say(f"{child.spec.name} did not stop in {child.spec.stop_timeout_s:.0f} s: killed")
            self._kill_group(child, signal.SIGKILL)  # grandchildren that outlived their parent
            if child.proc is not None and child.proc.returncode is None:
                await child.proc.wait()
        for child in self.children:
            for task in child.tasks:
                if task is not asyncio.current_task():
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(*child.tasks, return_exceptions=True)

    def kill_all(self) -> None:
        """Last resort, synchronous (interrupted during stop): SIGKILL every child's group."""
        for child in self.children:
            self._kill_group(child, signal.SIGKILL)

    @staticmethod
    def _kill_group(child: Child, sig: signal.Signals) -> None:
        if child.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.proc.pid, sig)  # start_new_session: the group id is the child's pid
