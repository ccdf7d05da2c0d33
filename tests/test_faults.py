"""Fault injection, end to end: ``mdpipe up`` runs the emulator, MDL, MDP, WDS and SCP on a private
RabbitMQ and Redis of its own, a WDS bot client is subscribed to a board and a few symbols, and each
fault below is injected in turn while data flows. After each: the pipeline recovers by itself within
the time stated in ``RECOVERY_S``, the client receives fresh data again (of events that happened after
the fault, not data that was in flight; a fresh snapshot where state may have been missed), no
component crash-loops (``mdpipe up`` restarted only what was killed), memory stays bounded, and the
metrics show what happened.

The tests share one pipeline and run in file order; each one starts from data flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from mdpipe.backoff import Backoff
from mdpipe.private_services import free_port
from mdpipe.settings import WdsSettings
from wds.client import Snapshot, Update, WdsClient
from wds.tokens import mint

from .up_support import Up, by_cmdline, cmdline, marked, private_redis

TOKEN_SECRET = "fault-suite-token-secret-" + secrets.token_hex(8)
SIM_KEY = "fault-suite-sim-key-" + secrets.token_hex(4)
CHANNELS = ("leaders.volume", "quotes.SPY", "trades.SPY", "stats.SPY")
# Their updates carry the emulator's event time (its market clock is the wall clock under `mdpipe up`): an
# update of these is fresh only if its event happened after the fault, not if it was in flight then.
EVENT_CHANNELS = ("quotes.SPY", "trades.SPY")
EVENT_SLACK_MS = 20  # an event's time may run up to a tick (10 ms) ahead of its sending
#: Seconds from the end of a fault to fresh data on every channel: what the pipeline promises here.
RECOVERY_S = {"sim": 10, "mdl": 10, "mdp": 10, "wds": 10, "scp": 20, "rabbitmq": 40, "redis": 15,
              "redis-pause": 10, "drop": 10, "max_connections": 10, "stall": 10}  # fmt: skip
RSS_BOUND_MB = 400  # any one component, whatever it went through

pytestmark = pytest.mark.timeout(240)


class Watcher:
    """A WDS bot client (``wds.client``) in a thread of its own: when each channel last got data."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.last: dict[str, float] = {}  # channel -> when its last item arrived (monotonic)
        self.event_ms: dict[str, int] = {}  # channel -> the newest event time of its updates (wall, ms)
        self.snapshots = self.resyncs = 0
        self.client: WdsClient | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    async def _run(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        token = mint(WdsSettings(wds_token_secret=TOKEN_SECRET), "fault-suite", ["*"], ttl_s=3600)
        self.client = WdsClient(f"ws://127.0.0.1:{self.port}/ws", token, channels=CHANNELS,
                                backoff=Backoff(0.2, 2.0, 10.0))  # fmt: skip
        self.client.on(None, self._item)
        self._ready.set()
        await self.client.run(self._stop)

    def _item(self, item: Snapshot | Update) -> None:
        if isinstance(item, Snapshot):
            self.snapshots += 1
            self.resyncs += item.resync
            if item.data is None:
                return
        else:
            self.event_ms[item.channel] = max(item.ts, self.event_ms.get(item.channel, 0))
        self.last[item.channel] = time.monotonic()

    def fresh_since(self, since: float, within: float) -> float:
        """Seconds until every channel got data after ``since`` (monotonic), and the event channels data of
        events after it (what was in flight at ``since`` does not count); AssertionError after ``within``."""
        since_ms = (time.time() - (time.monotonic() - since)) * 1000 + EVENT_SLACK_MS
        deadline = since + within
        while time.monotonic() < deadline:
            if not self._stale(since, since_ms):
                return time.monotonic() - since
            time.sleep(0.05)
        raise AssertionError(f"no fresh data within {within} s on {self._stale(since, since_ms)}")

    def _stale(self, since: float, since_ms: float) -> list[str]:
        return [c for c in CHANNELS if self.last.get(c, 0) <= since] + [
            f"{c} (events)" for c in EVENT_CHANNELS if self.event_ms.get(c, 0) <= since_ms
        ]

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def metrics(port: int) -> dict[str, float]:
    """``name{label="v",...}`` -> value, from a component's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def total(values: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(prefix))


class Pipeline:
    def __init__(self) -> None:
        self.up = Up(
            RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/",  # nothing there: a private one
            REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
            WDS_TOKEN_SECRET=TOKEN_SECRET,
            SIM_API_KEY=SIM_KEY,
            SIM_RATE="2000",
            SIM_SYMBOLS="100",
            MDL_BACKOFF_INITIAL_S="0.2",
            MDL_BACKOFF_MAX_S="2",
            UP_RESTART_MAX_S="2",
        )
        self.kills: dict[str, int] = {}
        self.up.wait_for(r"dashboard +http://", within=150)
        self.redis = private_redis(self.up)
        self.watcher = Watcher(self.up.ports["WDS_PORT"])

    def pids(self, name: str) -> list[int]:
        if name == "redis":
            return by_cmdline(self.redis)
        pattern = r"beam\.smp" if name == "rabbitmq" else rf"-m mdpipe {name} ?$"
        found = [p for p in marked(self.up.marker) if re.search(pattern, cmdline(p))]
        return [p for p in found if parent(p) not in found]  # gunicorn's master, not its workers

    def kill(self, name: str) -> float:
        """kill -9 the component (its main process); returns when it was killed."""
        (pid,) = self.pids(name)
        os.kill(pid, signal.SIGKILL)
        self.kills[name] = self.kills.get(name, 0) + 1
        return time.monotonic()

    def restarts(self, name: str) -> int:
        return len(re.findall(rf"^up +\| {name} exited with .*: restarting", self.up.output(), re.M))

    def fault(self, name: str, seconds: float = 5) -> None:
        url = f"http://127.0.0.1:{self.up.ports['SIM_HTTP_PORT']}/faults?name={name}&seconds={seconds}"
        answer = requests.post(url, headers={"Authorization": f"Bearer {SIM_KEY}"}, timeout=10)
        assert answer.status_code == 200, answer.text

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for pid in marked(self.up.marker):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
                kb = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
                out[f"{cmdline(pid)[:60]} ({pid})"] = kb / 1024
        return out

    def close(self) -> None:
        self.watcher.stop()
        try:
            assert self.up.interrupt() == 0, self.up.output()[-3000:]
            assert marked(self.up.marker) == [] and by_cmdline(self.redis) == []
        finally:
            self.up.kill()


@pytest.fixture(scope="module")
def pipe() -> Iterator[Pipeline]:
    pipeline = Pipeline()
    try:
        pipeline.watcher.fresh_since(time.monotonic(), 60)  # data flows end to end before any fault
        yield pipeline
    finally:
        pipeline.close()


def recovered(pipe: Pipeline, name: str, since: float, **context: Any) -> None:
    took = pipe.watcher.fresh_since(since, RECOVERY_S[name])
    print(f"{name}: fresh data {took:.1f} s after the fault", context)
    for component, killed in pipe.kills.items():  # nothing crash-loops: only what was killed restarted
        assert pipe.restarts(component) == killed, (component, pipe.up.output()[-3000:])
    for other in ("sim", "mdl", "mdp", "wds", "scp", "rabbitmq", "redis", "epmd"):
        if other not in pipe.kills:
            assert pipe.restarts(other) == 0, (other, pipe.up.output()[-3000:])
    big = {p: mb for p, mb in pipe.rss_mb().items() if mb > RSS_BOUND_MB}
    assert not big, big


@pytest.mark.parametrize("component", ["sim", "mdl", "mdp", "wds", "scp"])
def test_kill_9_each_component_comes_back_and_data_flows(pipe, component):
    reconnects = pipe.watcher.client.reconnects  # type: ignore[union-attr]
    mdl_before = metrics(pipe.up.ports["MDL_HTTP_PORT"]) if component == "sim" else {}
    since = pipe.kill(component)
    pipe.up.wait_for(rf"{component} exited with -9: restarting in")
    recovered(pipe, component, since)
    if component == "wds":  # the client lost its connection, came back and subscribed again
        assert pipe.watcher.client.reconnects > reconnects  # type: ignore[union-attr]
    if component == "sim":  # the listener saw its vendor go and reconnected
        after = metrics(pipe.up.ports["MDL_HTTP_PORT"])
        assert total(after, "mdpipe_mdl_reconnects_total") > total(mdl_before, "mdpipe_mdl_reconnects_total")
    if component == "scp":  # not on the data path: it serves again once restarted
        deadline = since + RECOVERY_S["scp"]
        while not answers(f"http://127.0.0.1:{pipe.up.ports['SCP_PORT']}/readyz"):
            assert time.monotonic() < deadline, "SCP did not come back"
            time.sleep(0.2)


@pytest.mark.parametrize("fault", ["drop", "max_connections", "stall"])
def test_the_emulator_misbehaves_and_the_listener_rides_it_out(pipe, fault):
    before = metrics(pipe.up.ports["MDL_HTTP_PORT"])
    pipe.fault(fault, seconds=4)
    since = time.monotonic() + (4 if fault == "stall" else 0)
    if fault == "stall":
        time.sleep(4)
    recovered(pipe, fault, since)
    after = metrics(pipe.up.ports["MDL_HTTP_PORT"])
    if fault != "stall":
        assert total(after, "mdpipe_mdl_reconnects_total") > total(before, "mdpipe_mdl_reconnects_total")
    if fault == "max_connections":
        assert total(after, 'mdpipe_mdl_status_events_total{status="max_connections"}') > total(
            before, 'mdpipe_mdl_status_events_total{status="max_connections"}'
        )
    assert after["mdpipe_mdl_connected"] == 1


def test_rabbitmq_restart(pipe):
    since = pipe.kill("rabbitmq")
    pipe.up.wait_for(r"rabbitmq exited with \S+: restarting in")  # its start script exits 0 when it dies
    recovered(pipe, "rabbitmq", since)
    until(lambda: metrics(pipe.up.ports["MDL_HTTP_PORT"])["mdpipe_mdl_broker_connected"] == 1)
    until(lambda: metrics(pipe.up.ports["MDP_HTTP_PORT"])["mdpipe_mdp_broker_connected"] == 1)


def test_redis_restart_resyncs_the_clients(pipe):
    resyncs = pipe.watcher.resyncs
    since = pipe.kill("redis")
    pipe.up.wait_for(r"redis exited with -9: restarting in")
    recovered(pipe, "redis", since)
    # WDS lost its subscription, came back, and sent fresh snapshots marked resync (state may be missed)
    deadline = time.monotonic() + 10
    while pipe.watcher.resyncs == resyncs and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pipe.watcher.resyncs > resyncs
    until(lambda: metrics(pipe.up.ports["WDS_HTTP_PORT"])["mdpipe_wds_redis_connected"] == 1)  # sampled 1/s
    assert total(metrics(pipe.up.ports["WDS_HTTP_PORT"]), 'mdpipe_wds_snapshots_total{kind="resync"}') > 0
    until(lambda: metrics(pipe.up.ports["MDP_HTTP_PORT"])["mdpipe_mdp_redis_ok"] == 1)


def test_redis_paused_for_seconds(pipe):
    (redis,) = pipe.pids("redis")
    os.kill(redis, signal.SIGSTOP)
    try:
        time.sleep(6)
    finally:
        os.kill(redis, signal.SIGCONT)
    recovered(pipe, "redis-pause", time.monotonic())
    until(lambda: metrics(pipe.up.ports["MDP_HTTP_PORT"])["mdpipe_mdp_redis_ok"] == 1)
    until(lambda: metrics(pipe.up.ports["WDS_HTTP_PORT"])["mdpipe_wds_redis_connected"] == 1)
