"""The emulator as users run it: determinism over the wire, and `mdpipe sim` as a process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests.conftest import ALL_STOCKS, START, Collector, client_for

ROOT = Path(__file__).resolve().parent.parent


async def first_frames(emulator, count: int) -> list[str]:
    collector = Collector(client_for(emulator, ALL_STOCKS))
    try:
        await collector.wait_for(lambda got: sum('"status"' not in m for m in got) >= count)
    finally:
        await collector.close()
    return [m for m in collector.received if '"status"' not in m][:count]


async def test_same_seed_same_frames_over_the_wire(make_emulator):
    settings = {"sim_rate": 0, "sim_pool_events": 5000, "sim_seed": 11}
    one = await first_frames(await make_emulator(**settings), 30)
    two = await first_frames(await make_emulator(**settings), 30)
    other = await first_frames(await make_emulator(**{**settings, "sim_seed": 12}), 30)
    assert one == two
    assert one != other


async def test_send_timestamps_are_the_send_time(make_emulator):
    emulator = await make_emulator(sim_send_ts=True, sim_rate=2000)
    collector = Collector(client_for(emulator, ["Q.*"]))
    try:
        await collector.wait_for(lambda got: len(got) >= 5)
    finally:
        await collector.close()
    events = [e for m in collector.received for e in orjson.loads(m) if e["ev"] == "Q"]
    wall_ns = time.time_ns()
    assert events
    assert all(wall_ns - 10 * 10**9 < e["_st"] <= wall_ns for e in events)


async def read_until(stream: asyncio.StreamReader, needle: str, timeout: float = 20) -> dict:
    async def scan() -> dict:
        while line := await stream.readline():
            record = orjson.loads(line)
            if record["msg"] == needle:
                return record
        raise AssertionError(f"process ended before logging {needle!r}")

    return await asyncio.wait_for(scan(), timeout)


async def test_mdpipe_sim_process_serves_logs_json_and_stops_on_sigterm():
    env = {
        **os.environ, "SIM_PORT": "0", "SIM_HTTP_PORT": "0", "SIM_API_KEY": "proc-key-123",
        "SIM_START": START, "SIM_SYMBOLS": "200", "LOG_LEVEL": "INFO",
    }  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mdpipe", "sim", "--rate", "3000", cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        listening = await read_until(proc.stderr, "emulator listening")
        assert listening["component"] == "sim"
        assert listening["level"] == "info"
        host_port = listening["url"].removeprefix("ws://").removesuffix("/stocks")

        class Target:  # what client_for needs of an emulator
            feed, market = host_port, "stocks"

        collector = Collector(client_for(Target, ["T.*"], api_key="proc-key-123"))
        try:
            await collector.wait_for(lambda got: any('"ev":"T"' in m for m in got))
        finally:
            await collector.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        rest = (await proc.stderr.read()).decode()
        assert "proc-key-123" not in rest
        for line in rest.splitlines():
            orjson.loads(line)  # every line is one JSON object
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_mdpipe_sim_refuses_a_busy_port_with_one_line():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "mdpipe", "sim", "--port", str(port), "--http-port", "0"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={**os.environ, "LOG_LEVEL": "ERROR"},
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().startswith("mdpipe sim: cannot listen on 127.0.0.1:")
    assert "Traceback" not in result.stderr
