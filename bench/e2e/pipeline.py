"""The pipeline's processes for the end-to-end bench, and how they are read.

Every component is a child process of the bench (``procs.Child``: free ports, the caller's component
settings removed, stopped whatever happens): MDP and WDS for the whole run, MDL from the first step on
(its ``/readyz`` needs a vendor connection), one emulator per step. MDL's control loop gets a private
``redis-server`` (as in mdl_throughput: a control message for another stocks listener on this machine
must not reach it); MDP and WDS share ``--redis-url`` under a prefix of their own, and MDL and MDP an
exchange of their own, both deleted at the end.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyspy
from mdl_throughput import PROFILE_RULES as MDL_RULES
from mdl_throughput import Samples, broker_pids, scrape, start_private_redis, total
from mdp_throughput import PROFILE_RULES as MDP_RULES
from mdp_throughput import _delete, _depths_on, amqp, delete_keys, redis_reading
from mdp_throughput import shown_env as mdp_shown_env
from procs import (
    Child,
    child_env,
    free_port,
    machine_busy,
    own_cpu,
    proc_cpu,
    proc_fds,
    proc_rss_mb,
    public_env,
)
from wds_throughput import PROFILE_RULES as WDS_RULES
from wds_throughput import start_wds

from mdpipe.settings import mask_url

from .clients import Clients

MARKET = "stocks"
API_KEY = "bench-key"
COMPONENTS = ("sim", "mdl", "rabbitmq", "mdp", "redis", "wds", "clients")  # the table's columns
SCRAPED = ("sim", "mdl", "mdp", "wds")  # components with a /metrics page
PROFILE = {"mdl": MDL_RULES, "mdp": MDP_RULES, "wds": WDS_RULES}  # the other benches' rules; others: none
MDL_RECONNECT = {"MDL_BACKOFF_INITIAL_S": "0.2", "MDL_BACKOFF_MAX_S": "1"}  # quick back after a new step
FLOWING_TIMEOUT_S = 60.0


@dataclass
class Reading:
    wall: float
    cpu: dict[str, float]  # CPU seconds so far, per component (and "bench", "mdl_redis")
    busy: float  # the machine's busy CPU seconds so far
    metrics: dict[str, Samples]
    clients: dict[str, int]
    hists: dict[str, list[int]]  # the clients' histograms


class Pipeline:
    def __init__(self, args: Any, ctx: dict[str, Any], progress) -> None:
        import redis

        self.args, self.ctx, self.progress = args, ctx, progress
        self.sim_port, self.sim_http = free_port(), free_port()
        self.emulator: Child | None = None
        self.sim_final: Samples = {}  # the emulator's /metrics, read just before it stopped
        self.mdl: Child | None = None
        self.mdp: Child | None = None
        self.wds: Child | None = None
        self.mdl_redis: Child | None = None
        self.clients: Clients | None = None
        self.brokers = listening_pids(args.rabbitmq_url, 5672) or broker_pids(args.rabbitmq_url)
        self.redis_server: Child | None = None
        if args.private_redis:  # MDP's and WDS's own: no other tenant's commands between their scripts
            self.redis_server, args.redis_url = start_private_redis()
            ctx["redis_url"] = args.redis_url
            ctx["processes"]["redis"] = {"argv": self.redis_server.argv, "env": {}}
        self.rclient = redis.Redis.from_url(args.redis_url, socket_timeout=10, socket_connect_timeout=5)
        try:
            info = self.rclient.info("server")
        except redis.RedisError as exc:
            if self.redis_server is not None:
                self.redis_server.close()
            raise RuntimeError(f"Redis at {mask_url(args.redis_url)} does not answer ({exc})") from None
        self.redis_pid = _local_pid(int(info.get("process_id", 0)), "redis")
        self.extra = dict(args.set)

    # -- starting and stopping ------------------------------------------------------------------------

    def env(self, settings: dict[str, str], strip: tuple[str, ...] = ()) -> dict[str, str]:
        return child_env({**settings, **self.extra}, strip=strip)

    def start(self) -> None:
        """MDL's private Redis, MDP and WDS, each ready."""
        self.mdl_redis, self.ctx["mdl_redis_url"] = start_private_redis()
        self.ctx["processes"]["mdl_redis"] = {"argv": self.mdl_redis.argv, "env": {}}
        port = free_port()
        env = self.env(
            {
                "MDQ_EXCHANGE": self.ctx["exchange"], "MDC_PREFIX": self.ctx["prefix"],
                "MDP_HTTP_PORT": str(port), "MDP_INSTANCE": self.ctx["prefix"],
                "RABBITMQ_URL": self.args.rabbitmq_url, "REDIS_URL": self.args.redis_url,
            },
            strip=("MDP_", "MDC_"),
        )  # fmt: skip
        self.mdp = self._start("mdp", env, port, mdp_shown_env(env))
        self.wds = start_wds(self.ctx, "wds", self.args.channels_per_client, self.extra)

    def _start(self, name: str, env: dict[str, str], http_port: int, shown: dict[str, str]) -> Child:
        child = Child(name, [sys.executable, "-m", "mdpipe", name], env, http_port=http_port)
        self.ctx["processes"].setdefault(name, {}).update(
            {"argv": ["python", "-m", "mdpipe", name], "env": shown}
        )
        child.start()
        child.wait_ready()
        self.ctx["processes"][name]["ready_after_s"] = round(child.ready_s, 2)
        return child

    def start_emulator(self, rate: int) -> None:
        """A fresh emulator at ``rate`` (0: flat-out) on the bench's port, then MDL connected to it."""
        env = self.env({
            "SIM_API_KEY": API_KEY, "SIM_PORT": str(self.sim_port), "SIM_HTTP_PORT": str(self.sim_http),
            "SIM_RATE": str(rate), "SIM_SEND_TS": "true", "SIM_SEED": str(self.args.sim_seed),
            "SIM_SYMBOLS": str(self.args.sim_symbols), "SIM_TICK_MS": str(self.args.tick_ms),
        })  # fmt: skip
        self.emulator = self._start("sim", env, self.sim_http, public_env(env))
        if self.mdl is None:
            port = free_port()
            env = self.env({
                "MASSIVE_API_KEY": API_KEY, "MASSIVE_FEED": f"127.0.0.1:{self.sim_port}",
                "MASSIVE_MARKET": MARKET, "MDQ_EXCHANGE": self.ctx["exchange"], "MDL_HTTP_PORT": str(port),
                "MDL_INSTANCE": self.ctx["prefix"], "RABBITMQ_URL": self.args.rabbitmq_url,
                "REDIS_URL": self.ctx["mdl_redis_url"], **MDL_RECONNECT,
            })  # fmt: skip
            self.mdl = self._start("mdl", env, port, public_env(env))
        else:
            self.mdl.wait_ready()  # reconnected to the new emulator
        before = total(scrape(self.mdl.http_port), "mdpipe_mdl_events_published_total")
        deadline = time.monotonic() + FLOWING_TIMEOUT_S
        while total(scrape(self.mdl.http_port), "mdpipe_mdl_events_published_total") <= before:
            self.alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing published by MDL {FLOWING_TIMEOUT_S:.0f}s after the emulator "
                                   f"started:\n{self.mdl.log_tail()}")  # fmt: skip
            time.sleep(0.05)

    def stop_emulator(self) -> None:
        if self.emulator is None:
            return
        self.sim_final = scrape(self.sim_http)
        self.emulator.stop()
        info = self.ctx["processes"]["sim"]
        info.setdefault("log_lines", []).extend(self.emulator.log_lines()[:10])
        self.emulator.close()
        self.emulator = None

    def children(self) -> dict[str, Child]:
        named = {"sim": self.emulator, "mdl": self.mdl, "mdp": self.mdp, "wds": self.wds}
        return {k: v for k, v in named.items() if v is not None}

    def alive(self) -> None:
        for child in self.children().values():
            child.alive()
        if self.clients is not None:
            self.clients.alive()

    def close(self) -> None:
        """Every process stopped (clients and MDL first: nothing declares the queues again), then the
        exchange, its queues and the keys under the prefix deleted."""
        cleanup: dict[str, Any] = {}
        if self.clients is not None:
            cleanup["client_log_lines"] = self.clients.log_lines()
            self.clients.close()
        for name, child in [("mdl", self.mdl), ("sim", self.emulator), ("mdp", self.mdp), ("wds", self.wds)]:
            if child is None:
                continue
            child.stop()
            logged = child.log_lines()
            info = self.ctx["processes"].setdefault(name, {})
            info.setdefault("log_lines", []).extend(logged[:20])
            info["redis_reconnects"] = sum("redis connection lost" in line for line in logged)
            child.close()
        if self.mdl_redis is not None:
            self.mdl_redis.close()
        if self.redis_server is not None:  # its keys go with it
            self.redis_server.close()
            self.rclient.close()
            self.ctx["cleanup"] = cleanup
            return
        try:
            cleanup["rabbitmq"] = amqp(_delete(self.args.rabbitmq_url, self.ctx["exchange"], 1),
                                       self.args.rabbitmq_url)  # fmt: skip
        except Exception as exc:
            cleanup["rabbitmq"] = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            cleanup["redis_keys_deleted"] = delete_keys(self.rclient, self.ctx["prefix"])
        except Exception as exc:
            cleanup["redis_keys_deleted"] = f"{type(exc).__name__}: {exc}"
        self.rclient.close()
        self.ctx["cleanup"] = cleanup

    # -- reading --------------------------------------------------------------------------------------

    def reading(self) -> Reading:
        busy, _ = machine_busy()
        kids = self.children()
        cpu = {name: child.cpu_seconds() for name, child in kids.items()}
        cpu["rabbitmq"] = sum(proc_cpu(p) for p in self.brokers)
        cpu["redis"] = proc_cpu(self.redis_pid) if self.redis_pid else redis_reading(self.rclient).cpu
        cpu["clients"] = self.clients.cpu_seconds() if self.clients is not None else 0.0
        cpu["mdl_redis"] = self.mdl_redis.cpu_seconds() if self.mdl_redis is not None else 0.0
        cpu["bench"] = own_cpu()
        ports = {"sim": self.sim_http if self.emulator else None, "mdl": _port(self.mdl),
                 "mdp": _port(self.mdp), "wds": _port(self.wds)}  # fmt: skip
        metrics = {name: scrape(port) for name, port in ports.items()}
        clients = self.clients.counts() if self.clients is not None else {}
        hists = self.clients.histograms() if self.clients is not None else {}
        return Reading(time.perf_counter(), cpu, busy, metrics, clients, hists)

    def pids(self) -> dict[str, list[int]]:
        """Each component's processes on this machine (none for a broker or Redis elsewhere)."""
        out = {name: [child.pid] for name, child in self.children().items()}
        out["rabbitmq"] = list(self.brokers)
        out["redis"] = [self.redis_pid] if self.redis_pid else []
        out["clients"] = [p.pid for p in self.clients.procs] if self.clients is not None else []
        return out

    def per_component(self, read: Callable[[int], float]) -> dict[str, float]:
        """``read(pid)`` summed over each component's processes; NaN for one with none here."""
        return {
            name: sum(read(p) for p in pids) if pids else float("nan") for name, pids in self.pids().items()
        }

    def rss_mb(self) -> dict[str, float]:
        out = self.per_component(proc_rss_mb)
        if not self.redis_pid:  # not on this machine: what it says
            with contextlib.suppress(Exception):
                out["redis"] = self.rclient.info("memory")["used_memory_rss"] / 2**20
        return out

    def fds(self) -> dict[str, float]:
        """Open file descriptors of each component (the entries of /proc/PID/fd)."""
        return self.per_component(proc_fds)

    def depths(self) -> dict[str, int]:
        """Messages ready in each queue of the bench's exchange, the dead-letter queue included."""
        from mdq import topology

        exchange = self.ctx["exchange"]
        names = [*topology.queue_names(exchange, 1), topology.dead_letter_name(exchange)]

        async def read() -> dict[str, int]:
            import aio_pika

            connection = await aio_pika.connect(self.args.rabbitmq_url, timeout=10)
            async with connection:
                return await _depths_on(await connection.channel(), names)

        try:
            return amqp(read(), self.args.rabbitmq_url)
        except RuntimeError as exc:
            self.progress(f"queue depths not read: {exc}")
            return {}

    def drain(self, timeout: float) -> tuple[float, bool]:
        """After the emulator stopped: until what is in flight has gone through (the counters of MDL, MDP,
        WDS and the clients still for 1 s), at most ``timeout``; the seconds it took, and whether it
        came to rest."""
        began = time.monotonic()
        last, still = None, began
        while time.monotonic() - began < timeout:
            r = self.reading()
            now = (
                total(r.metrics["mdl"], "mdpipe_mdl_events_published_total"),
                total(r.metrics["mdl"], "mdpipe_mdl_handoff_frames"),
                total(r.metrics["mdp"], "mdpipe_mdp_events_total"),
                total(r.metrics["wds"], "mdpipe_wds_deliveries_total"),
                r.clients.get("messages", 0),
            )
            if now != last:
                last, still = now, time.monotonic()
            elif time.monotonic() - still >= 1.0:
                return time.monotonic() - began, True
            time.sleep(0.2)
        return time.monotonic() - began, False

    def profile(self, names: list[str], seconds: float, folded_dir) -> dict[str, Any]:
        """py-spy on each named component in turn, under the current load."""
        out: dict[str, Any] = {}
        kids = self.children()
        for name in names:
            pids = [p.pid for p in self.clients.procs[:1]] if name == "clients" and self.clients else []
            pid = kids[name].pid if name in kids else (pids[0] if pids else None)
            if pid is None:
                out[name] = {"error": "not running"}
                continue
            self.progress(f"profiling {name} with py-spy for {max(1, round(seconds))}s")
            folded = folded_dir / f"e2e.{name}.py-spy.folded"
            error = pyspy.record(pid, seconds, folded)
            out[name] = {"error": error} if error else {
                **pyspy.summarize(folded.read_text(), PROFILE.get(name, ()), top_functions=12),
                "folded": folded.name,
            }  # fmt: skip
        return out


def _port(child: Child | None) -> int | None:
    return None if child is None else child.http_port


def listening_pids(url: str, default_port: int) -> list[int]:
    """The local process listening on the URL's port (RabbitMQ's Erlang VM: other brokers may run on this
    machine, private ones of tests), found through its socket's inode; nothing if not local or not found."""
    import os
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return []
    port = parts.port or default_port
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for row in list(f)[1:]:
                cols = row.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                    inodes.add(f"socket:[{cols[9]}]")
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not inodes:
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{entry}/fd")):
                pids.append(int(entry))
    return pids


def _local_pid(pid: int, name: str) -> int | None:
    """``pid`` when it is a process of this machine whose name starts with ``name``."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return pid if pid and f.read().startswith(name) else None
    except OSError:
        return None
