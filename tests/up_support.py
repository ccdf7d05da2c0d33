"""``mdpipe up`` in a subprocess for tests: on ports and names of the test's own, its output collected,
and every process it starts findable (and killable) by a marker in its environment."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time

from mdpipe.children import die_with_parent
from mdpipe.private_services import free_port

from .conftest import REDIS_URL


def marked(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    if marker.encode() in fh.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Up:
    """``mdpipe up`` running in a subprocess; its output collected line by line."""

    def __init__(self, **env: str) -> None:
        self.marker = "MDPIPE_UP_TEST_" + secrets.token_hex(6)
        self.folder = tempfile.mkdtemp(prefix="mdpipe-up-test-")
        self.ports = {name: free_port() for name in ("SIM_PORT", "SIM_HTTP_PORT", "MDL_HTTP_PORT",
                      "MDP_HTTP_PORT", "WDS_PORT", "WDS_HTTP_PORT", "SCP_PORT")}  # fmt: skip
        tag = secrets.token_hex(4)
        self.env = {
            **{
                k: v for k, v in os.environ.items() if not k.startswith(("SIM_", "MD", "WDS_", "SCP_", "UP_"))
            },
            **{k: str(v) for k, v in self.ports.items()},
            self.marker: "1",
            "REDIS_URL": REDIS_URL,
            "MDC_PREFIX": f"up{tag}",
            "MDQ_EXCHANGE": f"test-up-{tag}",
            "UP_DIR": os.path.join(self.folder, "up"),
            "SCP_DATA_DIR": os.path.join(self.folder, "scp"),
            "SIM_SYMBOLS": "200",
            "SIM_RATE": "1000",
            "MDP_LEADERS_INTERVAL_S": "0.5",
            "LOG_LEVEL": "WARNING",
            **env,
        }
        self.env.pop("MASSIVE_API_KEY", None)
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mdpipe", "up"], env=self.env, cwd=self.folder, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, preexec_fn=die_with_parent,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, within: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return found
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + self.output()[-4000:])

    def interrupt(self, within: float = 60.0) -> int:
        """Ctrl-C: SIGINT to ``mdpipe up`` alone, as a terminal does; its exit code."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(within)
        finally:
            self._reader.join(5)

    def kill(self) -> None:
        """Cleanup, whatever happened: nothing of this run survives the test."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in marked(self.marker):
            os.kill(pid, signal.SIGKILL)


def by_cmdline(pattern: str) -> list[int]:
    """Live processes whose command line matches ``pattern`` (for those that rewrite their environment:
    redis-server sets its process title over it, and loses the marker)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and re.search(pattern, cmdline(int(entry))):
            found.append(int(entry))
    return found


def private_redis(up: Up) -> str:
    """The cmdline pattern of the private Redis ``up`` started."""
    port = up.wait_for(r"Redis +redis://127\.0\.0\.1:(\d+)/0  \(private\)", within=120).group(1)
    return rf"redis-server 127\.0\.0\.1:{port}\b"
