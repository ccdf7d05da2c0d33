"""How long the market is blind when the leading listener dies: kill -9 of the leader to the first message
the standby publishes, over ``--trials`` trials (default 10).

Two ``mdpipe mdl`` replicas (``MDL_INSTANCE`` r1, r2, ...) of one market share a lease in Redis
(``mdl:stocks:lease``, ``mdl.lease``) in front of one emulator (in this process, ``SIM_MAX_CONNECTIONS=0``
so that two connections at once would show instead of the older one being closed). A consumer here reads
the trades queue of a bench exchange of its own (``bench-failover-<pid>``, deleted at the end) and notes
when each message arrives and which instance published it (``mdq-src``). Each trial: wait until one
replica leads and data flows from it and the other stands by, kill -9 the leader, and measure from the
kill to the first message of the other one arriving here; then start a fresh replica as the next standby.
The takeover is bounded by the lease TTL (the key expires a TTL after the last renewal, 0 to a third of a
TTL before the kill), plus the standby's retry period, plus connecting and subscribing to the vendor.

Prints a Markdown table and writes ``bench/results/mdl_failover.json``; also checks that the emulator
never had more than one connection at once.

    python -m bench.mdl_failover [--trials 10] [--ttl 1.5] [--retry 0.2]

Needs RabbitMQ and Redis (``RABBITMQ_URL``, ``REDIS_URL``; the local defaults otherwise). Uses db 15 of
``REDIS_URL`` unless ``--redis-url`` is given, deleting only the lease and status keys of ``stocks``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aio_pika
import orjson

from mdpipe.private_services import free_port

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "bench" / "results" / "mdl_failover.json"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/15"
_COMPONENT_VARS = ("SIM_", "MASSIVE_", "MDL_", "MDQ_", "RABBITMQ_URL", "REDIS_URL", "LOG_", "MDPIPE_ENV")


class Replica:
    """One ``mdpipe mdl`` process; its log goes to a temporary file (``log()``)."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name, self.port = name, free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(_COMPONENT_VARS)}
        self.env.update({"LOG_LEVEL": "INFO", "LOG_FORMAT": "json", "MDL_INSTANCE": name})
        self.env.update({"MDL_HTTP_PORT": str(self.port), **env})
        self.proc: asyncio.subprocess.Process | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()

    async def start(self) -> Replica:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mdpipe", "mdl", env=self.env, cwd=ROOT, stdout=self._log, stderr=self._log
        )
        return self

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def get(self, path: str) -> tuple[int, bytes] | None:
        """``(status, body)`` of ``GET path`` on its HTTP port, or None if it does not answer."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 2)
        except (OSError, TimeoutError):
            return None
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: mdl\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            response = await asyncio.wait_for(reader.read(), 5)
        except (OSError, TimeoutError):
            return None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        head, _, body = response.partition(b"\r\n\r\n")
        try:
            return int(head.split(b" ", 2)[1]), body
        except (IndexError, ValueError):
            return None

    async def readyz(self) -> dict[str, Any]:
        """``/readyz``'s detail and ``ready`` (its status was 200); ``{}`` when it does not answer."""
        answer = await self.get("/readyz")
        if answer is None:
            return {}
        try:
            detail = orjson.loads(answer[1])
        except orjson.JSONDecodeError:
            return {}
        return {**detail, "ready": answer[0] == 200}

    async def metric(self, name: str, **labels: str) -> float | None:
        """A sample of its ``/metrics``: ``await metric("mdpipe_mdl_leader")``."""
        answer = await self.get("/metrics")
        if answer is None:
            return None
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in answer[1].decode().splitlines():
            sample, _, value = line.rpartition(" ")
            if sample == want:
                return float(value)
        return None

    async def leading(self) -> bool:
        detail = await self.readyz()
        return detail.get("role") == "leader" and detail.get("vendor") == "connected"

    async def standing_by(self) -> bool:
        detail = await self.readyz()
        return detail.get("role") == "standby" and detail.get("ready") is True

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s; the exit code."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        return None if proc is None else proc.returncode

    def close(self) -> None:
        self._log.close()


class Consumer:
    """Consumes a queue and notes each message's arrival (``loop.time()``) and publisher (``mdq-src``)."""

    def __init__(self, url: str, queue: str) -> None:
        self.url, self.queue = url, queue
        self.got: list[tuple[float, str]] = []
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def start(self) -> Consumer:
        self._connection = await aio_pika.connect(self.url)
        channel = await self._connection.channel()
        queue = await channel.get_queue(self.queue, ensure=True)  # declared by the listeners
        loop = asyncio.get_running_loop()

        async def note(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            self.got.append((loop.time(), str(message.headers.get("mdq-src"))))

        await queue.consume(note, no_ack=True)
        return self

    def first_from(self, source: str, after: float) -> float | None:
        return next((t for t, src in self.got if src == source and t > after), None)

    def count_from(self, source: str, after: float = 0.0) -> int:
        return sum(1 for t, src in self.got if src == source and t > after)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


def replica_env(emulator: Any, exchange: str, rabbitmq_url: str, redis_url: str, **extra: str) -> dict:
    return {
        "MASSIVE_API_KEY": emulator.settings.sim_api_key.get_secret_value(),
        "MASSIVE_FEED": emulator.feed,
        "MASSIVE_MARKET": emulator.market,
        "MASSIVE_SUBSCRIPTIONS": "T.*",
        "MDQ_EXCHANGE": exchange,
        "RABBITMQ_URL": rabbitmq_url,
        "REDIS_URL": redis_url,
        "MDL_BACKOFF_INITIAL_S": "0.05",
        "MDL_BACKOFF_MAX_S": "0.5",
        **extra,
    }


async def until(predicate, within: float, what: str, step: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"not within {within} s: {what}")
        await asyncio.sleep(step)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from redis.asyncio import Redis

    from mdc import names
    from mdpipe.settings import SimSettings
    from mdq import topology
    from sim.server import Emulator

    exchange = f"bench-failover-{os.getpid()}"
    redis = Redis.from_url(args.redis_url)
    await redis.delete(names.mdl_lease("stocks"), names.mdl_status("stocks"))
    emulator = Emulator(
        SimSettings(sim_port=0, sim_http_port=0, sim_api_key="bench-key", sim_symbols=50, sim_rate=500,
                    sim_max_connections=0)
    )  # fmt: skip
    await emulator.start()
    env = replica_env(
        emulator, exchange, args.rabbitmq_url, args.redis_url,
        MDL_LEASE_TTL_S=str(args.ttl), MDL_LEASE_RETRY_S=str(args.retry),
    )  # fmt: skip
    replicas: list[Replica] = []
    consumer: Consumer | None = None
    loop = asyncio.get_running_loop()
    trials: list[dict[str, Any]] = []
    try:
        serial = 0

        async def spawn() -> Replica:
            nonlocal serial
            serial += 1
            replica = await Replica(f"r{serial}", env).start()
            replicas.append(replica)
            return replica

        leader = await spawn()
        await until(leader.leading, 30, "the first replica leads")
        standby = await spawn()
        await until(standby.standing_by, 30, "the second replica stands by")
        consumer = await Consumer(args.rabbitmq_url, f"{exchange}.trades").start()
        for n in range(args.trials):
            flowing_since = loop.time() - 0.5
            await until(
                lambda r=leader, t=flowing_since: consumer.count_from(r.name, t) > 0, 10, "data flows"
            )
            await until(standby.standing_by, 30, "the standby is ready")
            killed_at = loop.time()
            leader.signal(signal.SIGKILL)
            await until(
                lambda s=standby, t=killed_at: consumer.first_from(s.name, t), 30, "the standby publishes"
            )
            takeover = consumer.first_from(standby.name, killed_at) - killed_at  # type: ignore[operator]
            await leader.stop()
            trials.append({"trial": n + 1, "killed": leader.name, "new_leader": standby.name,
                           "takeover_s": round(takeover, 4)})  # fmt: skip
            print(f"trial {n + 1}: {leader.name} killed, {standby.name} published after {takeover:.3f} s")
            leader, standby = standby, await spawn()
        peak = emulator.peak_clients
    finally:
        for replica in replicas:
            await replica.stop()
            replica.close()
        if consumer is not None:
            await consumer.close()
        await emulator.stop()
        await redis.delete(names.mdl_lease("stocks"), names.mdl_status("stocks"))
        await redis.aclose()
        connection = await aio_pika.connect(args.rabbitmq_url)
        async with connection:
            channel = await connection.channel()
            for name in (*topology.queue_names(exchange, 1), topology.dead_letter_name(exchange)):
                with contextlib.suppress(Exception):
                    await channel.queue_delete(name)
            for name in (exchange, topology.dead_letter_name(exchange)):
                with contextlib.suppress(Exception):
                    await channel.exchange_delete(name)
    times = [t["takeover_s"] for t in trials]
    return {
        "bench": "mdl_failover",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "settings": {
            "MDL_LEASE_TTL_S": args.ttl,
            "MDL_LEASE_RETRY_S": args.retry,
            "SIM_RATE": 500,
            "MASSIVE_SUBSCRIPTIONS": "T.*",
        },
        "trials": trials,
        "takeover_s": {
            "median": round(statistics.median(times), 4),
            "max": round(max(times), 4),
            "min": round(min(times), 4),
        },
        "emulator_peak_connections": peak,
    }


def report(result: dict[str, Any]) -> str:
    lines = ["| trial | killed | new leader | kill -9 to first message (s) |", "|---:|---|---|---:|"]
    for t in result["trials"]:
        lines.append(f"| {t['trial']} | {t['killed']} | {t['new_leader']} | {t['takeover_s']:.3f} |")
    s = result["takeover_s"]
    lines.append("")
    lines.append(
        f"Takeover over {len(result['trials'])} trials: median {s['median']:.3f} s, max {s['max']:.3f} s, "
        f"min {s['min']:.3f} s (MDL_LEASE_TTL_S={result['settings']['MDL_LEASE_TTL_S']}, "
        f"MDL_LEASE_RETRY_S={result['settings']['MDL_LEASE_RETRY_S']}); "
        f"most emulator connections at once: {result['emulator_peak_connections']}."
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--ttl", type=float, default=1.5, help="MDL_LEASE_TTL_S")
    parser.add_argument("--retry", type=float, default=0.2, help="MDL_LEASE_RETRY_S")
    parser.add_argument("--rabbitmq-url", default=os.environ.get("RABBITMQ_URL", RABBITMQ_URL))
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    print(report(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["emulator_peak_connections"] <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
