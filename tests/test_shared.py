"""The shared package: settings, JSON logs without secrets, the observability server, the CLI."""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdpipe import logs
from mdpipe.observe import ObservabilityServer, Response
from mdpipe.settings import (
    GROUPS,
    CommonSettings,
    ConfigError,
    MassiveSettings,
    SimSettings,
    WdsSettings,
    describe,
    load,
    markdown_table,
)
from tests.conftest import http_exchange

ROOT = Path(__file__).resolve().parent.parent


# -- settings -----------------------------------------------------------------------------------------


def test_defaults_work_on_a_laptop(monkeypatch):
    for group in GROUPS:
        for name in group.model_fields:
            monkeypatch.delenv(name.upper(), raising=False)
    common = load(CommonSettings)
    assert common.rabbitmq_url.get_secret_value() == "amqp://guest:guest@127.0.0.1:5672/"
    assert common.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert load(SimSettings).sim_port == 8765
    assert load(MassiveSettings).massive_api_key is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SIM_PORT": "http"}, r"^invalid setting SIM_PORT='http': .*integer"),
        ({"SIM_PORT": "70000"}, r"^invalid setting SIM_PORT='70000': .*65535"),
        ({"SIM_TICK_MS": "7"}, r"^invalid setting SIM_TICK_MS='7': must divide 1000"),
        ({"SIM_START": "yesterday"}, r"^invalid setting SIM_START='yesterday': must be an ISO-8601"),
        ({"SIM_MARKET": "bonds"}, r"^invalid setting SIM_MARKET='bonds': must be one of stocks"),
        ({"SIM_SEND_TS": "maybe"}, r"^invalid setting SIM_SEND_TS='maybe'"),
        (
            {"SIM_BUFFER_FRAMES": "16", "SIM_RATE": "50000", "SIM_FRAME_EVENTS": "10"},
            r"^invalid setting SIM_BUFFER_FRAMES='16': must hold two ticks of frames here, at least 1700$",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(monkeypatch, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as err:
        load(SimSettings)
    assert re.match(expected, str(err.value)) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MASSIVE_FEED": "wss://socket.massive.com/stocks"}, "without a scheme or path"),
        ({"MASSIVE_FEED": "localhost:port"}, "host name or host:port"),
        ({"MASSIVE_MARKET": "bonds"}, "must be one of stocks"),
        ({"MASSIVE_SUBSCRIPTIONS": "T.*,XQ.BTC-USD"}, "invalid for stocks: XQ.BTC-USD"),
        ({"MASSIVE_SUBSCRIPTIONS": " , "}, "empty"),
        ({"MASSIVE_TLS": "yes"}, "'auto', 'true' or 'false'"),
    ],
)
def test_massive_settings_are_validated(monkeypatch, env, expected):
    ((name, value),) = env.items()
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load(MassiveSettings)
    assert str(err.value).startswith(f"invalid setting {name}={value!r}: ")
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("feed", "tls", "secure"),
    [("socket.massive.com", "auto", True), ("127.0.0.1:8765", "auto", False), ("localhost:1", "auto", False),
     ("sim.internal:8765", "auto", True), ("sim.internal:8765", "false", False)],
)  # fmt: skip
def test_tls_follows_the_feed(feed, tls, secure):
    assert MassiveSettings(massive_feed=feed, massive_tls=tls).secure is secure


def test_secret_values_are_never_echoed(monkeypatch):
    monkeypatch.setenv("RABBITMQ_URL", "http://user:hunter22@host/")
    with pytest.raises(ConfigError) as err:
        load(CommonSettings)
    assert "hunter22" not in str(err.value) and "RABBITMQ_URL" in str(err.value)
    shown = describe(CommonSettings(rabbitmq_url="amqp://mdpipe:hunter22@mq:5672/"))
    assert shown["RABBITMQ_URL"] == "amqp://mdpipe:***@mq:5672/"


def test_production_refuses_development_secrets(monkeypatch):
    monkeypatch.setenv("MDPIPE_ENV", "production")
    guest = load(CommonSettings)  # refused only where the broker is used (see the process test)
    assert "RABBITMQ_URL: production mode needs a RabbitMQ user" in (guest.broker_user_error() or "")
    with pytest.raises(ConfigError, match="SIM_API_KEY: production mode needs a value of its own"):
        load(SimSettings, production=True)
    assert load(SimSettings, production=True, sim_api_key="a-real-key").sim_api_key.get_secret_value()
    monkeypatch.setenv("RABBITMQ_URL", "amqp://mdpipe:s3cret@mq:5672/")
    assert load(CommonSettings).broker_user_error() is None


def test_production_refuses_the_guest_broker_user_only_where_the_broker_is_used(tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "MDPIPE_ENV": "production",
        "SCP_DATA_DIR": str(tmp_path),
        "WDS_TOKEN_SECRET": "t" * 40,
        "SCP_SESSION_SECRET": "s" * 40,
        "SIM_API_KEY": "k" * 20,
        "MASSIVE_API_KEY": "k" * 20,
        "WDS_PORT": "-1",
        "MDP_HTTP_PORT": "-1",
        "MDL_HTTP_PORT": "-1",
        "SCP_PORT": "-1",
        "SIM_PORT": "-1",
    }  # fmt: skip; a bad port each: every one stops at its settings
    for component, refused in (("mdp", True), ("mdl", True), ("scp", True), ("wds", False), ("sim", False)):
        run = subprocess.run([sys.executable, "-m", "mdpipe", component], env=env, capture_output=True,
                             text=True, timeout=30)  # fmt: skip
        said = "RABBITMQ_URL: production mode needs a RabbitMQ user other than guest" in run.stderr
        assert run.returncode == 2 and "_PORT" in run.stderr, (component, run.stderr[-500:])
        assert said == refused, (component, run.stderr[-500:])


def test_readme_configuration_table_is_current():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "run `mdpipe settings --markdown` and paste it into the README"


def test_every_setting_is_documented():
    for group in GROUPS:
        for name, info in group.model_fields.items():
            assert info.description, f"{name.upper()} has no description"


# -- logs ---------------------------------------------------------------------------------------------


def capture(component: str = "test") -> tuple[io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter(component))
    return stream, handler


def test_json_log_line_has_fields_and_no_secret():
    logs.register_secret("sk_live_ABCDEF123456")
    stream, handler = capture("sim")
    logger = logging.getLogger("mdpipe.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info(
            "sent %s", '{"action":"auth","params":"sk_live_ABCDEF123456"}',
            extra={"peer": "127.0.0.1:5", "api_key": "whatever", "token": "t", "Cookie": "c"},
        )  # fmt: skip
        try:
            raise RuntimeError("boom sk_live_ABCDEF123456")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (orjson.loads(line) for line in lines)
    assert first["component"] == "sim" and first["level"] == "info" and first["peer"] == "127.0.0.1:5"
    assert first["api_key"] == first["token"] == first["Cookie"] == "[redacted]"
    assert "sk_live_ABCDEF123456" not in stream.getvalue()
    assert "RuntimeError" in second["exc"]


@settings(max_examples=100, deadline=None)
@given(
    st.text(min_size=4, max_size=30).filter(lambda s: s.strip() == s and s and "\uffff" not in s),
    st.text(max_size=40),
)
def test_fuzz_scrub_removes_any_registered_secret(secret, around):
    logs.register_secret(secret)
    scrubbed = logs.scrub(around + secret + around)
    assert "[redacted]" in scrubbed
    assert secret not in scrubbed.replace("[redacted]", "\uffff")  # the marker may contain it ("[red")


# -- observability server -----------------------------------------------------------------------------


async def test_observability_endpoints_and_bad_requests():
    state = {"ready": False}

    async def echo(request):
        return Response.json(200, {"q": request.query, "body": request.body.decode()})

    server = ObservabilityServer(
        "127.0.0.1",
        0,
        readiness=lambda: (state["ready"], {"why": "warming"}),
        routes={("POST", "/echo"): echo},
    )
    await server.start()
    try:
        exchange = functools.partial(http_exchange, server.port)
        status, _, body = await exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, body) == (200, b'{"status":"ok"}')
        status, _, body = await exchange(b"GET /readyz HTTP/1.1\r\n\r\n")
        assert status == 503 and orjson.loads(body) == {"ready": False, "why": "warming"}
        state["ready"] = True
        assert (await exchange(b"GET /readyz HTTP/1.1\r\n\r\n"))[0] == 200
        status, _, body = await exchange(b"GET /metrics HTTP/1.1\r\n\r\n")
        assert status == 200 and b"process_cpu_seconds_total" in body
        status, _, body = await exchange(b"POST /echo?a=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        assert status == 200 and orjson.loads(body) == {"q": {"a": ["1"]}, "body": "abc"}
        assert (await exchange(b"GET /echo HTTP/1.1\r\n\r\n"))[0] == 405
        assert (await exchange(b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
        assert (await exchange(b"garbage\r\n\r\n"))[0] == 400
        assert (await exchange(b"POST /echo HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"))[0] == 413
        assert (await exchange(b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n"))[0] == 413
    finally:
        await server.stop()


# -- CLI ----------------------------------------------------------------------------------------------


def mdpipe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mdpipe", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})}, cwd=ROOT,
    )  # fmt: skip


@pytest.mark.parametrize("args", [["--help"], ["sim", "--help"], ["sim", "record", "--help"],
                                  ["sim", "fault", "--help"], ["settings", "--help"]])  # fmt: skip
def test_help_everywhere(args):
    result = mdpipe(*args)
    assert result.returncode == 0 and "usage: mdpipe" in result.stdout


def test_python_dash_m_sim_is_mdpipe_sim():
    result = subprocess.run([sys.executable, "-m", "sim", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "usage: mdpipe sim" in result.stdout


def test_cli_bad_setting_exits_2_with_one_clear_line():
    result = mdpipe("sim", "--port", "nope", env={"SIM_RATE": "fast"})
    assert result.returncode == 2
    not_int = "Input should be a valid integer, unable to parse string as an integer"
    assert result.stderr.splitlines() == [
        f"mdpipe: invalid setting SIM_PORT='nope': {not_int}",
        f"mdpipe: invalid setting SIM_RATE='fast': {not_int}",
    ]
    assert "Traceback" not in result.stderr


def test_cli_settings_masks_secrets():
    result = mdpipe("settings", env={"SIM_API_KEY": "topsecret-key", "MASSIVE_API_KEY": "vendor-key-123"})
    assert result.returncode == 0
    shown = orjson.loads(result.stdout)
    assert shown["SIM_API_KEY"] == shown["MASSIVE_API_KEY"] == "***"
    assert "topsecret-key" not in result.stdout and "vendor-key-123" not in result.stdout


def test_cli_record_without_key_is_a_clear_error(tmp_path):
    env = {"MASSIVE_FEED": "127.0.0.1:9", "MASSIVE_API_KEY": ""}
    result = mdpipe("sim", "record", "-o", str(tmp_path / "x.mdrec"), "--duration", "1", env=env)
    assert result.returncode != 0 and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("url", "masked", "secrets"),
    [
        ("redis://:pw@h:1/0", "redis://:***@h:1/0", ["pw"]),
        ("redis://h:1/0?password=x&db=2", "redis://h:1/0?password=***&db=2", ["x"]),
        ("amqp://u:p@[::1]:5672/", "amqp://u:***@[::1]:5672/", ["p"]),
        ("redis://h/0", "redis://h/0", []),
    ],
)
def test_urls_lose_their_passwords_wherever_they_are(url, masked, secrets):
    from mdpipe.settings import mask_url, url_secrets

    assert mask_url(url) == masked
    assert url_secrets(url) == secrets


def test_wds_secret_is_refused_in_production_unless_rs256_makes_it_unused():
    with pytest.raises(ConfigError, match="WDS_TOKEN_SECRET: production mode needs a value of its own"):
        load(WdsSettings, production=True)
    assert load(WdsSettings, production=True, wds_token_algorithm="RS256").wds_token_algorithm == "RS256"
    with pytest.raises(ConfigError, match="WDS_TOKEN_TTL_S=100: above WDS_TOKEN_MAX_TTL_S"):
        load(WdsSettings, wds_token_ttl_s=100, wds_token_max_ttl_s=50)
    with pytest.raises(ConfigError, match="WDS_TOKEN_SECRET"):
        load(WdsSettings, wds_token_secret="short")
