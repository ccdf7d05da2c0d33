"""A real Redis Cluster for tests: masters and replicas from ``redis-server`` on loopback ports.

``LocalCluster(masters=3, replicas=1).start()`` starts each node in a temporary folder (nothing kept
on disk: no RDB, no AOF), joins them with ``redis-cli --cluster create``, and waits until every node
says ``cluster_state:ok``. ``kill(port)`` is ``kill -9`` of one node; ``wait_promoted(port)`` waits until
its slots are served by another node (its replica, promoted). ``stop()`` kills them all and removes the
folder, whatever happened. Failure detection is fast (``cluster-node-timeout`` 1000 ms) so a failover
takes a few seconds, not the default fifteen.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import redis

from mdpipe.children import die_with_parent

NODE_TIMEOUT_MS = 1000
BUS_OFFSET = 10_000  # a node's cluster bus listens on its port + 10000


def node_port() -> int:
    """A port free on loopback whose cluster bus port (+10000) is free too: below the ephemeral range,
    so that neither is handed to another socket meanwhile."""
    while True:
        port = random.randint(20_000, 29_999)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + BUS_OFFSET))
        except OSError:
            continue
        return port


class LocalCluster:
    def __init__(self, masters: int = 3, replicas: int = 1) -> None:
        self.masters, self.replicas = masters, replicas
        self.folder = tempfile.mkdtemp(prefix="mdpipe-cluster-")
        self.ports: list[int] = []
        while len(self.ports) < masters * (1 + replicas):  # distinct: two draws may pick one free port
            port = node_port()
            if port not in self.ports:
                self.ports.append(port)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.ports if port in self.procs]

    @property
    def url(self) -> str:
        """A node's URL (any node serves as the entry point of a cluster client)."""
        host, port = self.startup_nodes[0]
        return f"redis://{host}:{port}/0"

    def start(self, within: float = 60.0) -> LocalCluster:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise RuntimeError(
                "redis-server and redis-cli are needed (scripts/ensure-services installs them)"
            )
        try:
            for port in self.ports:
                folder = os.path.join(self.folder, str(port))
                os.makedirs(folder)
                args = [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                        "--cluster-config-file", os.path.join(folder, "nodes.conf"), "--cluster-node-timeout",
                        str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no", "--dir", folder,
                        "--cluster-replica-validity-factor", "0",
                        "--logfile", os.path.join(folder, "log")]  # fmt: skip
                self.procs[port] = subprocess.Popen(args, preexec_fn=die_with_parent)
            deadline = time.monotonic() + within
            for port in self.ports:
                self._wait(lambda p=port: redis.Redis(port=p, socket_timeout=1).ping(), deadline)
            create = [cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                      "--cluster-replicas", str(self.replicas), "--cluster-yes"]  # fmt: skip
            subprocess.run(create, check=True, capture_output=True, timeout=within)
            for port in self.ports:
                self._wait(lambda p=port: self._state(p) == "ok", deadline)
            self._wait(self._replicas_in_sync, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def masters_now(self) -> list[int]:
        """Ports of the live masters, as a live node sees the cluster."""
        for port in self.startup_nodes:
            try:
                nodes = redis.Redis(port=port[1], socket_timeout=1).execute_command("CLUSTER", "NODES")
            except redis.RedisError:
                continue
            text = nodes.decode() if isinstance(nodes, bytes) else nodes
            return [
                int(line.split()[1].split("@")[0].rsplit(":", 1)[1])
                for line in text.splitlines()
                if "master" in line.split()[2] and "fail" not in line.split()[2]
            ]
        raise RuntimeError("no node answers")

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now."""
        client = redis.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in self.startup_nodes]
        )
        try:
            node = client.get_node_from_key(key)
            return int(node.port)
        finally:
            client.close()

    def kill(self, port: int) -> None:
        """``kill -9`` of one node."""
        proc = self.procs.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def wait_promoted(self, dead: int, within: float = 30.0) -> float:
        """Seconds until the live nodes agree that every slot has a live master again (the dead
        master's replica promoted)."""
        started = time.monotonic()

        def served() -> bool:
            masters = self.masters_now()
            return (
                dead not in masters
                and len(masters) == self.masters
                and all(self._state(p) == "ok" for _, p in self.startup_nodes)
            )

        self._wait(served, started + within)
        return time.monotonic() - started

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait(10)
        self.procs.clear()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _state(self, port: int) -> str | None:
        try:
            info = redis.Redis(port=port, socket_timeout=1).execute_command("CLUSTER", "INFO")
        except redis.RedisError:
            return None
        text = info.decode() if isinstance(info, bytes) else info
        for line in text.splitlines():
            if line.startswith("cluster_state:"):
                return line.split(":", 1)[1].strip()
        return None

    def _replicas_in_sync(self) -> bool:
        for port in self.ports:
            info = redis.Redis(port=port, socket_timeout=1).info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    @staticmethod
    def _wait(condition, deadline: float) -> None:
        while True:
            try:
                if condition():
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the local Redis Cluster did not come up in time")
            time.sleep(0.05)
