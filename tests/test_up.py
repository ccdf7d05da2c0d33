"""``mdpipe up``: the whole pipeline from one command, in a subprocess, on ports and names of the test's
own; data reaches a WebSocket client, a crashed component comes back, Ctrl-C leaves no process behind
(every process it started carries a marker in its environment, looked for in /proc)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis
import requests
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mdc import acl
from mdpipe.private_services import free_port
from mdpipe.settings import WdsSettings
from mdpipe.up import Config, plan
from wds.tokens import mint

from .up_support import Up, by_cmdline, cmdline, marked, private_redis

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def start_up() -> Iterator[Callable[..., Up]]:
    started: list[Up] = []

    def start(**env: str) -> Up:
        up = Up(**env)
        started.append(up)
        return up

    yield start
    for up in started:
        up.kill()


def banner_token(up: Up) -> str:
    """A token from the command the banner prints (run as printed, in a shell, without our variables)."""
    command = up.wait_for(r"a token +(.+)$").group(1)
    assert "mdpipe token" in command, command
    command = command.replace("mdpipe token", f"{sys.executable} -m mdpipe token", 1)
    env = {k: v for k, v in up.env.items() if not k.startswith("WDS_")}
    done = subprocess.run(
        ["bash", "-c", command], env=env, cwd=up.folder, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def refused(wds_port: int, token: str) -> bool:
    """WDS answers ``token`` with an auth error and a close."""
    async with connect(f"ws://127.0.0.1:{wds_port}/ws", open_timeout=10) as ws:
        await ws.send(orjson.dumps({"action": "auth", "token": token}))
        try:
            async with asyncio.timeout(10):
                while True:
                    for event in orjson.loads(await ws.recv()):
                        if event.get("event") == "error":
                            return True
                        if event.get("event") == "authenticated":
                            return False
        except ConnectionClosed:
            return True


async def receive_leaders(wds_port: int, token: str) -> dict:
    """A WebSocket client of WDS: authenticated, subscribed, gets the snapshot and then a live update."""
    async with connect(f"ws://127.0.0.1:{wds_port}/ws", open_timeout=10) as ws:
        await ws.send(orjson.dumps({"action": "auth", "token": token}))
        await ws.send(orjson.dumps({"action": "subscribe", "channels": ["leaders.volume"]}))
        async with asyncio.timeout(30):
            while True:
                for event in orjson.loads(await ws.recv()):
                    if event.get("event") == "update" and event.get("channel") == "leaders.volume":
                        return event
                    assert event.get("event") != "error", event


def test_up_runs_the_pipeline_restarts_a_crash_and_stops_clean(start_up):
    up = start_up()
    login = up.wait_for(r"login +(\S+) / (\S+)")
    dashboard = up.wait_for(r"dashboard +(http://\S+)").group(1)
    assert dashboard == f"http://127.0.0.1:{up.ports['SCP_PORT']}/"
    assert "built-in Massive emulator" in up.output()
    token = banner_token(up)
    update = asyncio.run(receive_leaders(up.ports["WDS_PORT"], token))
    # the README's development secret is not the one WDS checks: a token signed with it is refused
    assert asyncio.run(refused(up.ports["WDS_PORT"], mint(WdsSettings(), "intruder", ["*"])))
    assert oct(os.stat(os.path.join(up.env["UP_DIR"], "wds-token-secret")).st_mode & 0o777) == "0o600"
    assert update["data"]["rows"], update  # volume leaders computed from the emulator's trades

    s = requests.Session()  # the admin it printed logs in
    page = s.get(dashboard + "auth/login", timeout=10)
    csrf = re.search(r'name="_csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    form = {"_csrf": csrf, "email": login.group(1), "password": login.group(2)}
    r = s.post(dashboard + "auth/login", data=form, allow_redirects=False, timeout=10)
    assert r.status_code == 303 and r.headers["Location"] == "/", r.text[:300]
    key_holders = [
        pid for pid in marked(up.marker) if b"MASSIVE_API_KEY=" in Path(f"/proc/{pid}/environ").read_bytes()
    ]
    # the vendor key: the listener's and the processors' (REST), never WDS's or SCP's
    assert {cmdline(pid).split()[-1] for pid in key_holders} == {"mdl", "mdp"}

    # a component that dies is started again, and data flows again
    (mdp,) = [pid for pid in marked(up.marker) if cmdline(pid).endswith("mdpipe mdp ")]
    os.kill(mdp, signal.SIGKILL)
    up.wait_for(r"mdp exited with -9: restarting in")
    deadline = time.monotonic() + 30
    while not [p for p in marked(up.marker) if cmdline(p).endswith("mdpipe mdp ") and p != mdp]:
        assert time.monotonic() < deadline, up.output()[-3000:]
        time.sleep(0.2)
    asyncio.run(receive_leaders(up.ports["WDS_PORT"], banner_token(up)))

    assert up.interrupt() == 0, up.output()[-3000:]
    assert marked(up.marker) == [], [cmdline(p) for p in marked(up.marker)]
    assert "Traceback" not in up.output(), up.output()[-3000:]


def test_up_starts_private_rabbitmq_and_redis_when_none_answers(start_up):
    up = start_up(
        RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    folder = up.wait_for(
        r"RabbitMQ does not answer at .*: a private one at amqp://guest:\*\*\*@127\.0\.0\.1:\d+/ \((.+)\)"
    )
    up.wait_for(r"Redis does not answer at .*: a private one at redis://127\.0\.0\.1:\d+/0", within=90)
    redis = private_redis(up)
    asyncio.run(receive_leaders(up.ports["WDS_PORT"], banner_token(up)))
    private = [cmdline(p) for p in marked(up.marker)]
    assert any("beam.smp" in c for c in private) and any("epmd" in c for c in private), private
    assert up.interrupt() == 0, up.output()[-3000:]
    assert marked(up.marker) == [], [cmdline(p) for p in marked(up.marker)]
    assert by_cmdline(redis) == []  # redis-server writes its title over its environment: found by port
    assert not Path(folder.group(1)).exists()  # the private servers' data went with them


def test_a_component_with_a_bad_setting_stops_everything_with_its_message(start_up):
    up = start_up(MDP_PLUGINS="no.such:Thing")  # found by MDP when it loads its plug-ins
    assert up.proc.wait(60) == 2, up.output()[-3000:]
    up._reader.join(5)
    assert "mdp    | mdpipe: invalid setting MDP_PLUGINS" in up.output()
    assert "mdpipe up: mdp: exited with 2 while starting" in up.output()
    assert marked(up.marker) == []  # the emulator and MDL, started before, were stopped


def test_a_bad_setting_of_any_component_stops_up_before_it_starts_anything(start_up):
    up = start_up(WDS_TOKEN_SECRET="too-short", SCP_PORT="0")
    assert up.proc.wait(30) == 2
    up._reader.join(5)
    assert "invalid setting WDS_TOKEN_SECRET: must be at least 32 characters" in up.output()
    assert "sim    |" not in up.output() and marked(up.marker) == []


def test_up_refuses_an_ephemeral_port(start_up):
    up = start_up(SCP_PORT="0")
    assert up.proc.wait(30) == 2
    up._reader.join(5)
    assert "invalid setting SCP_PORT: mdpipe up needs a fixed port, not 0" in up.output()
    assert marked(up.marker) == []


def test_plan_gives_the_vendor_key_to_mdl_and_mdp_alone_and_runs_the_emulator_only_without_one(tmp_path):
    from mdpipe import settings as st

    config = Config(
        st.CommonSettings(), st.MassiveSettings(), st.MdlSettings(), st.MdpSettings(), st.WdsSettings(),
        st.ScpSettings(scp_port=8100), st.SimSettings(), st.UpSettings(up_mdp_replicas=3),
    )  # fmt: skip
    real = plan(config, {"MASSIVE_API_KEY": "vendor-key", "PATH": "x"}, {}, ("a@example.com", "pw"), False)
    assert not real.emulated and [s.name for s in real.specs] == [
        "mdl",
        "mdp-1",
        "mdp-2",
        "mdp-3",
        "wds",
        "scp",
    ]
    holders = [s.name for s in real.specs if "vendor-key" in s.env.values()]
    assert holders == ["mdl", "mdp-1", "mdp-2", "mdp-3"]
    assert all("MASSIVE_REST_URL" not in s.env for s in real.specs)  # the vendor's own, by default
    assert [s.env["MDP_HTTP_PORT"] for s in real.specs if s.name.startswith("mdp")] == [
        "9102",
        "9103",
        "9104",
    ]
    scp = real.specs[-1].env
    assert scp["SCP_ADMIN_EMAIL"] == "a@example.com" and scp["SCP_ADMIN_PASSWORD_FILE"].endswith(
        "admin-password"
    )
    # the admin's password is in no process's environment, SCP's included (it reads the file)
    assert all("pw" not in s.env.values() and "SCP_ADMIN_PASSWORD" not in s.env for s in real.specs)
    wds = next(s for s in real.specs if s.name == "wds").env
    assert wds["WDS_ALLOWED_ORIGINS"] == "http://127.0.0.1:8100,http://localhost:8100"

    emulated = plan(config, {"PATH": "x"}, {"REDIS_URL": "redis://127.0.0.1:1/0"}, ("", ""), True)
    names = [s.name for s in emulated.specs]
    assert emulated.emulated and names[0] == "sim" and names[1] == "mdl"
    sim, mdl = emulated.specs[0].env, emulated.specs[1].env
    assert mdl["MASSIVE_API_KEY"] == sim["SIM_API_KEY"] and len(sim["SIM_API_KEY"]) >= 24
    mdp = emulated.specs[2].env
    assert (mdp["MASSIVE_API_KEY"], mdp["MASSIVE_REST_URL"]) == (sim["SIM_API_KEY"], "http://127.0.0.1:9100")
    holders = [s.name for s in emulated.specs if "MASSIVE_API_KEY" in s.env]
    assert holders == ["mdl", "mdp-1", "mdp-2", "mdp-3"]
    assert (mdl["MASSIVE_FEED"], mdl["MASSIVE_TLS"]) == ("127.0.0.1:8765", "false")
    assert all(
        s.env["REDIS_URL"] == "redis://127.0.0.1:1/0" and s.env["LOG_FORMAT"] == "text"
        for s in emulated.specs
    )
    assert "SCP_ADMIN_EMAIL" not in emulated.specs[-1].env


def test_the_wds_token_secret_is_made_once_kept_private_and_given_to_wds_and_scp_only(tmp_path):
    from mdpipe import settings as st
    from mdpipe.up import token_secret

    config = Config(
        st.CommonSettings(), st.MassiveSettings(), st.MdlSettings(), st.MdpSettings(), st.WdsSettings(),
        st.ScpSettings(), st.SimSettings(), st.UpSettings(up_dir=str(tmp_path / "up")),
    )  # fmt: skip
    made = token_secret(config, {})
    assert len(made) >= 32 and made != st.DEV_WDS_TOKEN_SECRET
    assert token_secret(config, {}) == made  # kept: bots' tokens stay good across restarts
    assert (tmp_path / "up" / "wds-token-secret").stat().st_mode & 0o777 == 0o600
    assert token_secret(config, {"WDS_TOKEN_SECRET": "x" * 40}) == "x" * 40  # the operator's wins
    planned = plan(config, {"PATH": "x"}, {}, ("", ""), False, token_secret=made)
    holders = [s.name for s in planned.specs if s.env.get("WDS_TOKEN_SECRET") == made]
    assert holders == ["wds", "scp"]


def test_the_admin_password_is_printed_once_and_reaches_scp_through_a_private_file(tmp_path):
    from mdpipe import settings as st
    from mdpipe.up import admin_login, banner

    config = Config(
        st.CommonSettings(), st.MassiveSettings(), st.MdlSettings(), st.MdpSettings(), st.WdsSettings(),
        st.ScpSettings(), st.SimSettings(), st.UpSettings(up_dir=str(tmp_path / "up")),
    )  # fmt: skip
    first, again = admin_login(config, {}), admin_login(config, {})
    assert first[2] and not again[2] and first[:2] == again[:2]
    password_file = tmp_path / "up" / "admin-password"
    assert password_file.read_text().strip() == first[1] and password_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "up").stat().st_mode & 0o777 == 0o700
    planned = plan(config, {"PATH": "x"}, {}, first[:2], False)
    scp = planned.specs[-1].env
    assert first[1] not in scp.values() and scp["SCP_ADMIN_PASSWORD_FILE"] == str(password_file)
    scp_settings = st.ScpSettings(scp_admin_email=scp["SCP_ADMIN_EMAIL"],
                                  scp_admin_password_file=scp["SCP_ADMIN_PASSWORD_FILE"])  # fmt: skip
    assert scp_settings.scp_admin_password.get_secret_value() == first[1]  # what SCP reads
    printed = ["\n".join(banner(config, planned, admin, {})) for admin in (first, again)]
    assert first[1] in printed[0] and "created now" in printed[0]
    assert first[1] not in printed[1] and str(tmp_path / "up" / "admin.json") in printed[1]


async def receive_signals(wds_port: int, token: str, want: int) -> list[dict]:
    """The live updates of ``signals.breakouts`` a WebSocket client of WDS gets."""
    async with connect(f"ws://127.0.0.1:{wds_port}/ws", open_timeout=10) as ws:
        await ws.send(orjson.dumps({"action": "auth", "token": token}))
        await ws.send(orjson.dumps({"action": "subscribe", "channels": ["signals.breakouts"]}))
        live: list[dict] = []
        async with asyncio.timeout(60):
            while len(live) < want:
                for event in orjson.loads(await ws.recv()):
                    assert event.get("event") != "error", event
                    if event.get("event") == "update":
                        live.append(event)
        return live


def test_up_examples_runs_the_signal_worker_as_its_own_redis_user(start_up):
    # a minute bar a second, so that breakouts come within seconds
    up = start_up(UP_EXAMPLES="1", SIM_SPEED="60", SIM_SYMBOLS="50")
    note = up.wait_for(r"example +signals\.breakouts by examples/signal_worker\.py: (.+)$").group(1)
    assert note == f"publishes as the Redis user {acl.user('breakouts')}", note
    secret = Path(up.env["UP_DIR"], "wds-token-secret").read_text().strip()
    token = mint(WdsSettings(wds_token_secret=secret), "bot", ["signals.breakouts"])
    live = asyncio.run(receive_signals(up.ports["WDS_PORT"], token, want=2))
    assert {u["type"] for u in live} == {"breakout"} and all(
        u["data"]["side"] in ("up", "down") for u in live
    )
    (worker,) = [p for p in marked(up.marker) if "signal_worker.py" in cmdline(p)]
    env = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    own = [e for e in env if e.startswith((b"REDIS_URL=", b"SIGNALS_REDIS_URL="))]
    assert len(own) == 2 and all(b"redis://mdpipe-breakouts:" in e for e in own), (
        own
    )  # reads and publishes as it
    store = redis.Redis.from_url(up.env["REDIS_URL"], decode_responses=True)
    try:
        assert acl.user("breakouts") in store.execute_command("ACL", "USERS")
        assert up.interrupt() == 0, up.output()[-3000:]
        assert acl.user("breakouts") not in store.execute_command("ACL", "USERS")  # made for the run only
    finally:
        store.close()
    assert marked(up.marker) == [] and "Traceback" not in up.output(), up.output()[-3000:]


def test_plan_runs_the_example_only_when_asked_with_the_url_it_was_given(tmp_path):
    from mdpipe import settings as st

    def config(examples: bool) -> Config:
        return Config(
            st.CommonSettings(), st.MassiveSettings(), st.MdlSettings(), st.MdpSettings(), st.WdsSettings(),
            st.ScpSettings(), st.SimSettings(), st.UpSettings(up_examples=examples, up_dir=str(tmp_path)),
        )  # fmt: skip

    assert "signals" not in [s.name for s in plan(config(False), {}, {}, ("", ""), False).specs]
    own = "redis://mdpipe-breakouts:pw@127.0.0.1:6379/0"
    (worker,) = [
        s for s in plan(config(True), {}, {}, ("", ""), False, signals_url=own).specs if s.name == "signals"
    ]
    assert worker.env["SIGNALS_REDIS_URL"] == own == worker.env["REDIS_URL"]
    assert worker.argv[-1].endswith("examples/signal_worker.py") and Path(worker.argv[-1]).is_file()
    (fallback,) = [s for s in plan(config(True), {}, {}, ("", ""), False).specs if s.name == "signals"]
    assert fallback.env["SIGNALS_REDIS_URL"] == st.CommonSettings().redis_url.get_secret_value()
