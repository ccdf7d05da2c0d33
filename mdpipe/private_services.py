"""RabbitMQ and Redis for ``mdpipe up`` when none answers at the configured URL: private servers from
the installed binaries, on free loopback ports, with their data in a temporary folder (removed at the
end), run as supervised children like the components.

A private RabbitMQ gets its own Erlang port mapper (``epmd`` on a port of its own, in the foreground, a
child like the others) so that nothing daemonizes out of reach of the supervisor.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from .children import Spec

# Debian puts the real RabbitMQ script here (/usr/sbin/rabbitmq-server is a wrapper that changes user).
RABBITMQ_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/local/sbin", "/usr/sbin", "/sbin")
DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "redis": 6379, "rediss": 6379}


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS.get(parts.scheme, 0)


def answers(url: str, timeout: float = 1.0) -> bool:
    """Something accepts TCP connections at the URL's host and port."""
    try:
        socket.create_connection(address(url), timeout=timeout).close()
    except OSError:
        return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_ready(port: int) -> Callable[[], bool]:
    return lambda: answers(f"tcp://127.0.0.1:{port}")


def find(program: str, extra_dirs: tuple[str, ...] = ()) -> str | None:
    for folder in extra_dirs:
        path = os.path.join(folder, program)
        if os.access(path, os.X_OK):
            return path
    return shutil.which(program)


def redis(folder: str, base_env: dict[str, str]) -> tuple[list[Spec], str] | None:
    """The spec of a private Redis (nothing kept on disk) and its URL; None when not installed."""
    server = find("redis-server")
    if server is None:
        return None
    port = free_port()
    os.makedirs(folder, exist_ok=True)
    argv = [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", folder, "--logfile", ""]  # fmt: skip
    spec = Spec("redis", argv, dict(base_env), ready=port_ready(port), ready_timeout_s=30)
    return [spec], f"redis://127.0.0.1:{port}/0"


def rabbitmq(folder: str, base_env: dict[str, str]) -> tuple[list[Spec], str] | None:
    """The specs of a private RabbitMQ (its epmd first) and its URL; None when not installed."""
    server = find("rabbitmq-server", RABBITMQ_DIRS)
    epmd = find("epmd", ("/usr/lib/erlang/bin",))
    if server is None or epmd is None:
        return None
    port, dist, epmd_port = free_port(), free_port(), free_port()
    os.makedirs(folder, exist_ok=True)
    plugins = os.path.join(folder, "enabled_plugins")
    with open(plugins, "w") as fh:
        fh.write("[].\n")
    with open(os.path.join(folder, "rabbitmq.conf"), "w") as fh:  # warnings and worse, on stdout
        fh.write("log.console = true\nlog.console.level = warning\nlog.file = false\n")
    env = {
        **base_env,
        "HOME": folder,  # the Erlang cookie goes here
        "ERL_EPMD_PORT": str(epmd_port),
        "RABBITMQ_NODENAME": f"mdpipe-{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_MNESIA_BASE": os.path.join(folder, "mnesia"),
        "RABBITMQ_LOG_BASE": os.path.join(folder, "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": plugins,
        "RABBITMQ_CONFIG_FILE": os.path.join(folder, "rabbitmq"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(folder, "advanced.config"),
        "RABBITMQ_PID_FILE": os.path.join(folder, "rabbitmq.pid"),
    }
    specs = [
        Spec("epmd", [epmd, "-port", str(epmd_port), "-address", "127.0.0.1"], env,
             ready=port_ready(epmd_port), ready_timeout_s=15),
        Spec("rabbitmq", [server], env, ready=port_ready(port), ready_timeout_s=90, stop_timeout_s=30,
             cwd=folder),
    ]  # fmt: skip
    return specs, f"amqp://guest:guest@127.0.0.1:{port}/"
