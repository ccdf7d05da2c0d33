"""What the benchmarks share: child processes (started, watched, always stopped), free ports, a clean
environment for children, and CPU and memory readings from /proc."""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from mdpipe.children import die_with_parent
from mdpipe.private_services import free_port  # noqa: F401 - the benches take it from here
from mdpipe.settings import mask_url

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S = 60.0
# Settings of mdpipe components: a caller's value must not skew a run, so children get only ours.
_COMPONENT_VARS = ("SIM_", "MASSIVE_", "MDL_", "MDQ_", "RABBITMQ_URL", "REDIS_URL", "LOG_", "MDPIPE_ENV")


BUSY_OTHER_WARN = 0.15  # cores busy outside the measured processes before the figures are flagged


def health_notes(processes: dict[str, dict], figures: dict[str, dict], skewed: str) -> list[str]:
    """The report lines every benchmark ends with: each process's lost Redis subscriptions and first log
    lines at WARNING or above, and a warning when the machine was busy elsewhere (``skewed``: what the
    business skews most)."""
    lines = []
    for name, info in processes.items():
        if info.get("redis_reconnects"):
            lines.append(f"WARNING: {name} lost its Redis subscription {info['redis_reconnects']} times.")
        if info.get("log_lines"):
            lines.append(f"Log of {name} ({len(info['log_lines'])} lines at WARNING or above), first:")
            lines.extend(f"    {line[:300]}" for line in info["log_lines"][:3])
    busy_other = max((f["other_cores"] for f in figures.values()), default=0.0)
    if busy_other > BUSY_OTHER_WARN:
        lines.append(
            f"WARNING: up to {busy_other:.2f} cores were busy outside the measured processes: the figures "
            f"are skewed{skewed}; re-run on a quiet machine."
        )
    return lines


def child_env(extra: dict[str, str], strip: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment with every mdpipe component setting replaced by ours (and ``extra``); ``strip``:
    more prefixes of the caller's variables to leave out (``("MDP_", "MDC_")``: those components'
    defaults)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_COMPONENT_VARS + strip)}
    env.update({"LOG_LEVEL": "WARNING", "LOG_FORMAT": "json", "MDPIPE_ENV": "development"})
    env.update(extra)
    return env


def public_env(env: dict[str, str]) -> dict[str, str]:
    """What we set for a child, for the JSON: component settings, secrets and URL passwords masked."""
    out = {}
    for k, v in env.items():
        if k.startswith(_COMPONENT_VARS) and k != "MDPIPE_ENV":
            out[k] = "***" if k.endswith("API_KEY") else mask_url(v) if "://" in v else v
    return out


def http_get(port: int | None, path: str, timeout: float = 5.0) -> bytes | None:
    """The body of a 200 answer, or None."""
    if port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.read() if response.status == 200 else None
    except (urllib.error.URLError, OSError):
        return None


class Child:
    """A process of the bench; ``stop()`` terminates then kills it, whatever happened.

    Ready when ``/readyz`` on ``http_port`` answers 200, or, without one, when ``port`` accepts
    connections.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        http_port: int | None = None,
        port: int | None = None,
        stop_timeout: float = 10.0,
    ) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.http_port, self.port, self.stop_timeout = http_port, port, stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.started = 0.0
        self.ready_s = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def feed(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, cpu: int | None = None) -> Child:
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=ROOT, stdout=self.log, stderr=self.log, preexec_fn=die_with_parent
        )
        if cpu is not None:
            os.sched_setaffinity(self.proc.pid, {cpu})
        return self

    def alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            if self._ready():
                self.ready_s = time.perf_counter() - self.started
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def _ready(self) -> bool:
        if self.http_port is not None:
            return http_get(self.http_port, "/readyz") is not None
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def cpu_seconds(self) -> float:
        return proc_cpu(self.pid)

    def rss_mb(self) -> float:
        return proc_rss_mb(self.pid)

    def log_lines(self) -> list[str]:
        """Lines the process logged (components run at WARNING, so each is a warning or worse)."""
        self.log.seek(0)
        return [line for line in self.log.read().decode(errors="replace").splitlines() if line.strip()]

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_lines()[-lines:])

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def close(self) -> None:
        self.stop()
        self.log.close()


def terminate(signum: int, frame: object) -> None:
    """A SIGTERM handler: unwinds through the finally blocks that stop every child."""
    raise KeyboardInterrupt(f"signal {signum}")


def guarded(name: str, run: Callable[[], int], cleaned: str) -> int:
    """A bench's exit status from ``run()``: 130 on Ctrl-C or SIGTERM (``terminate``; the finally blocks
    have stopped every child and ``cleaned`` says what else they undid), 1 on a RuntimeError (a process
    that would not start or died, a service away), each with one line on stderr."""
    try:
        return run()
    except KeyboardInterrupt:
        print(f"{name}: interrupted; {cleaned}", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1


def proc_cpu(pid: int) -> float:
    """User + system time of a whole process (every thread), in seconds; NaN once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    """Resident memory of a process, MB; NaN once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def proc_fds(pid: int) -> float:
    """Open file descriptors of a process (entries of /proc/PID/fd: another user's needs root); NaN once
    it is gone or when they cannot be read."""
    try:
        return float(len(os.listdir(f"/proc/{pid}/fd")))
    except OSError:
        return float("nan")


class SharedInts:
    """``count`` int64 values in a file mapped by the bench and its child processes: the bench creates it
    (``path`` None, zeroed, removed by ``close``), a child opens it by ``path``; ``view[i]`` reads and
    writes value i (each write is one aligned 8-byte store: readers never see half of one)."""

    def __init__(self, count: int, path: str | None = None) -> None:
        size = 8 * max(count, 1)
        self.owner = path is None
        if path is None:
            fd, path = tempfile.mkstemp(prefix="mdpipe-bench-", suffix=".counters")
            os.write(fd, b"\0" * size)
            os.close(fd)
        self.path = path
        self._file = open(path, "r+b")  # noqa: SIM115 - closed in close()
        self._mmap = mmap.mmap(self._file.fileno(), size)
        self.view = memoryview(self._mmap).cast("q")

    def close(self) -> None:
        self.view.release()
        self._mmap.close()
        self._file.close()
        if self.owner:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def machine_busy() -> tuple[float, float]:
    """Busy and steal time of the whole machine so far, in CPU-seconds, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    steal = values[7] if len(values) > 7 else 0
    return (sum(values[:8]) - idle - steal) / CLK_TCK, steal / CLK_TCK
