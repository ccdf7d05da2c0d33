"""The container deployment (deploy/), checked by reading it: no Docker engine runs where the tests do.

- deploy/docker-compose.yml, interpolated the way Compose does from deploy/.env.example and from what
  deploy/gen-env writes, validates against the Compose Specification's JSON schema (tests/data); only WDS
  and SCP publish ports, on 127.0.0.1; the data plane is on the internal network, and MDL and MDP alone
  also on the `vendor` network; every service has a healthcheck and a restart policy; secrets are
  required variables, never literals; the vendor key reaches MDL and MDP only, MDP's REST URL is the
  emulator's HTTP port or Massive's API; every variable set on an mdpipe service is a setting of mdpipe,
  and each component's environment passes its settings' validation in production mode. The example signal
  service (profile `examples`) publishes as the Redis user whose line is mdc/acl.py's, which a real
  redis-server loads from the compose command when one is installed.
- deploy/Dockerfile: multi-stage, the SPA built by npm in a node stage, a non-editable install, a slim
  final stage holding only the virtual environment, run as uid 10001 with ENTRYPOINT ["mdpipe"].
- deploy/gen-env writes long random secrets, different each run, and refuses to overwrite.
- A non-editable wheel of the project carries the SCP templates and static files and the Lua scripts.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from mdpipe import settings as mdsettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
GEN_ENV = DEPLOY / "gen-env"
ENV_EXAMPLE = DEPLOY / ".env.example"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"

COMPONENTS = ("sim", "mdl", "mdp", "wds", "scp")  # the mdpipe services, named after their command
EXAMPLE = "signals-example"  # examples/signal_worker.py on the mdpipe image (profile `examples`)
SIGNAL_NAME = "breakouts"  # its signals.NAME, and its Redis user's
DATA_PLANE = ("rabbitmq", "redis", "postgres", "sim", "mdl", "mdp", EXAMPLE)
PUBLIC = ("wds", "scp")
SECRETS = (
    "RABBITMQ_PASSWORD",
    "REDIS_PASSWORD",
    "REDIS_SIGNALS_PASSWORD",
    "POSTGRES_PASSWORD",
    "WDS_TOKEN_SECRET",
    "SCP_SESSION_SECRET",
    "SCP_ADMIN_PASSWORD",
    "SIM_API_KEY",
    "MASSIVE_API_KEY",
)
REAL_KEY = "a-real-Massive-key$with-a-dollar"  # a `$` must reach MDL and MDP as it is
VENDOR_CLIENTS = ("mdl", "mdp")  # the vendor key and the `vendor` network: MDL's stream, MDP's REST calls
MASSIVE_REST = mdsettings.MassiveRestSettings.model_fields["massive_rest_url"].default
SIM_REST = f"http://sim:{mdsettings.SimSettings.model_fields['sim_http_port'].default}"  # the emulator's
# Environment variables of the mdpipe services that are not mdpipe settings: the example signal service's
# publisher URL (its Redis user's).
NON_MDPIPE_ENV: frozenset[str] = frozenset({"SIGNALS_REDIS_URL"})
SETTING_NAMES = frozenset(name.upper() for group in mdsettings.GROUPS for name in group.model_fields)

# -- Compose's interpolation ------------------------------------------------------------------------------

_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
                  r"|(?P<named>[A-Za-z_]\w*))")  # fmt: skip


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``,
    ``${VAR:+alt}``, ``$VAR`` and ``$$``, as the Compose Specification defines them."""

    def one(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["named"]
        op, arg = m["op"], m["arg"] or ""
        value = env.get(name)
        unset_or_empty = not value
        if op in (":-", "-"):
            return interpolate(arg, env) if (unset_or_empty if op == ":-" else value is None) else value
        if op in (":?", "?"):
            if unset_or_empty if op == ":?" else value is None:
                raise MissingVariable(f"{name}: {arg}")
            return value  # type: ignore[return-value]
        if op in (":+", "+"):
            return "" if (unset_or_empty if op == ":+" else value is None) else interpolate(arg, env)
        return value or ""

    return _VAR.sub(one, text)


def interpolate_all(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_all(x, env) for x in node]
    if isinstance(node, dict):
        return {interpolate(k, env): interpolate_all(v, env) for k, v in node.items()}
    return node


def read_env_file(path: Path) -> dict[str, str]:
    """A .env file as Compose reads it (the subset this project writes)."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_]\w*", name), f"{path.name}: bad line {raw!r}"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[name] = value
    return env


def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def load_compose(env: dict[str, str]) -> dict[str, Any]:
    return interpolate_all(raw_compose(), env)


GEN_ENV_INPUTS = ("MASSIVE_API_KEY", "MASSIVE_FEED", "MASSIVE_REST_URL", "SCP_ADMIN_EMAIL")


def run_gen_env(out: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in GEN_ENV_INPUTS}
    return subprocess.run(
        ["sh", str(GEN_ENV), *args, str(out)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, **extra_env},
        check=False,
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """deploy/gen-env's output: twice for the emulator, once for a real Massive key."""
    folder = tmp_path_factory.mktemp("gen-env")
    out: dict[str, dict[str, str]] = {}
    for label, extra in (
        ("emulator", {}),
        ("emulator-again", {}),
        ("massive", {"MASSIVE_API_KEY": REAL_KEY, "SCP_ADMIN_EMAIL": "ops@example.org"}),
    ):
        path = folder / label / ".env"
        path.parent.mkdir()
        result = run_gen_env(path, **extra)
        assert result.returncode == 0, result.stderr
        out[label] = read_env_file(path)
        out[label]["__stdout__"] = result.stdout
        out[label]["__mode__"] = oct(stat.S_IMODE(path.stat().st_mode))
    return out


ENV_SOURCES = ("example", "emulator", "massive")


def env_for(source: str, generated: dict[str, dict[str, str]]) -> dict[str, str]:
    if source == "example":
        return read_env_file(ENV_EXAMPLE)
    return {k: v for k, v in generated[source].items() if not k.startswith("__")}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def mdpipe_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in compose["services"].items()
        if isinstance(s.get("build"), dict) and s["build"].get("dockerfile") == "deploy/Dockerfile"
    }


def service_networks(service: dict[str, Any]) -> set[str]:
    nets = service.get("networks") or []
    return set(nets if isinstance(nets, list) else nets.keys())


# -- the compose file ---------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ENV_SOURCES)
def test_compose_file_validates_against_the_compose_specification(source, generated):
    schema = json.loads(SCHEMA.read_text())
    compose = load_compose(env_for(source, generated))
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    assert set(compose["services"]) == {"rabbitmq", "redis", "postgres", *COMPONENTS, EXAMPLE}


def test_secrets_are_required_variables_with_no_default():
    text = COMPOSE.read_text()
    uses: dict[str, set[str]] = {}
    for m in _VAR.finditer(text):
        name = m["braced"] or m["named"]
        if name:
            uses.setdefault(name, set()).add(m["op"] or "")
    for name in SECRETS:
        assert uses.get(name) == {":?"}, f"{name} must always be ${{{name}:?...}}, found {uses.get(name)}"
    with pytest.raises(MissingVariable):
        load_compose({})
    env = read_env_file(ENV_EXAMPLE)
    for name in SECRETS:
        with pytest.raises(MissingVariable, match=name):
            load_compose({k: v for k, v in env.items() if k != name})


def test_no_literal_passwords_or_secrets_in_the_compose_file():
    secretish = re.compile(r"PASSWORD|PASS$|SECRET|API_KEY|AUTH|TOKEN")
    required = re.compile(r"\$\{[A-Za-z_]\w*:\?[^}]*\}")
    for name, service in raw_compose()["services"].items():
        for key, value in environment(service).items():
            if secretish.search(key):
                assert required.fullmatch(value), f"{name}: {key} must be a required variable, not a literal"
            for password in re.findall(r"://[^/@\s:]*:([^@\s]+)@", value):
                assert required.fullmatch(password), f"{name}: {key} has a literal password"
        command = service.get("command") or []
        for flag, value in itertools.pairwise(command):
            if flag in ("--requirepass", "--masterauth", "--password"):
                assert required.fullmatch(value), f"{name}: {flag} is a literal"
        for arg in command:  # an ACL user's line: `--user NAME on >PASSWORD rules`
            for password in re.findall(r"\s>(\$\{[^}]*\}|\S+)", arg) if arg.startswith("--user ") else ():
                assert required.fullmatch(password), f"{name}: a user's password is a literal"
        assert "env_file" not in service, f"{name}: env_file would hand every secret of .env to it"


def test_only_wds_and_scp_publish_ports_and_only_on_loopback(generated):
    compose = load_compose(env_for("example", generated))
    published = {}
    for name, service in compose["services"].items():
        assert service.get("network_mode") is None, f"{name}: network_mode bypasses the networks"
        for port in service.get("ports") or []:
            if isinstance(port, dict):
                host_ip, target = port.get("host_ip"), int(port["target"])
            else:  # short syntax: [IP:]HOST:CONTAINER[/PROTO]
                parts = str(port).split("/")[0].rsplit(":", 2)
                host_ip, target = (parts[0] if len(parts) == 3 else None), int(parts[-1])
            assert host_ip == "127.0.0.1", f"{name}: port {target} published on {host_ip or 'every address'}"
            published.setdefault(name, set()).add(target)
    assert published == {"wds": {mdsettings.WdsSettings.model_fields["wds_port"].default},
                         "scp": {mdsettings.ScpSettings.model_fields["scp_port"].default}}  # fmt: skip


def test_data_plane_only_on_the_internal_network(generated):
    compose = load_compose(env_for("example", generated))
    networks = compose["networks"]
    assert networks["internal"]["internal"] is True
    assert not (networks.get("public") or {}).get("internal")
    services = compose["services"]
    for name in DATA_PLANE:
        # MDL (the stream) and MDP (the REST API) also reach the vendor outside: the `vendor` network,
        # which nothing else joins
        expected = {"internal", "vendor"} if name in VENDOR_CLIENTS else {"internal"}
        assert service_networks(services[name]) == expected, name
    for name in PUBLIC:
        assert service_networks(services[name]) == {"internal", "public"}, name
    assert [n for n, s in services.items() if "vendor" in service_networks(s)] == list(VENDOR_CLIENTS)
    assert not networks["vendor"].get("internal")  # it does reach outside
    assert set(networks) == {"internal", "public", "vendor"}


def test_every_service_has_a_healthcheck_restart_policy_and_healthy_dependencies(generated):
    compose = load_compose(env_for("example", generated))
    services = compose["services"]
    for name, service in services.items():
        check = service.get("healthcheck") or {}
        assert check.get("test") and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
        assert not check.get("disable")
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), f"{name}: no restart"
        for dep, how in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert how["condition"] == "service_healthy", f"{name} -> {dep}"
    # the emulator is optional: a profile, and MDL and MDP wait for it only when it runs
    assert services["sim"]["profiles"] == ["emulator"]
    for name in VENDOR_CLIENTS:
        assert services[name]["depends_on"]["sim"]["required"] is False, name
    assert [n for n, s in services.items() if "sim" in (s.get("depends_on") or {})] == list(VENDOR_CLIENTS)
    assert services[EXAMPLE]["profiles"] == ["examples"]  # the example runs when asked for only
    assert [n for n, s in services.items() if s.get("profiles")] == ["sim", EXAMPLE]
    assert set(services[EXAMPLE]["depends_on"]) == {"redis"}
    assert {"rabbitmq", "redis"} <= set(services["mdl"]["depends_on"])
    assert {"rabbitmq", "redis"} <= set(services["mdp"]["depends_on"])
    assert {"postgres", "redis"} <= set(services["scp"]["depends_on"])


def test_mdpipe_healthchecks_ask_each_component_its_readiness_on_its_port(generated):
    compose = load_compose(env_for("example", generated))
    ports = {
        "sim": mdsettings.SimSettings.model_fields["sim_http_port"].default,
        "mdl": mdsettings.MdlSettings.model_fields["mdl_http_port"].default,
        "mdp": mdsettings.MdpSettings.model_fields["mdp_http_port"].default,
        "wds": mdsettings.WdsSettings.model_fields["wds_http_port"].default,
        "scp": mdsettings.ScpSettings.model_fields["scp_port"].default,
    }
    services = mdpipe_services(compose)
    assert set(services) == {*COMPONENTS, EXAMPLE}
    del services[EXAMPLE]  # test_the_example_signal_service_publishes_as_its_own_redis_user
    for name, service in services.items():
        assert service["command"][0] == name
        test = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{ports[name]}/readyz" in test, name
        assert not any(k.endswith(("_PORT", "_HTTP_PORT")) for k in environment(service)), name


def test_mdp_scales(generated):
    compose = load_compose(env_for("example", generated))
    mdp = compose["services"]["mdp"]
    assert "container_name" not in mdp and "hostname" not in mdp
    assert not mdp.get("ports")
    assert not environment(mdp).get("MDP_INSTANCE"), "a fixed MDP_INSTANCE would be shared by every replica"
    for name, service in compose["services"].items():
        assert "container_name" not in service, f"{name}: container names clash between projects"


def test_the_vendor_key_reaches_only_mdl_and_mdp():
    """MDL streams, MDP calls the REST API (hydration, chart history); never WDS, SCP or the emulator."""
    services = raw_compose()["services"]
    holders = [n for n, s in services.items() if "MASSIVE_API_KEY" in environment(s)]
    assert holders == list(VENDOR_CLIENTS)
    for name in VENDOR_CLIENTS:  # the one variable, as it is
        assert environment(services[name])["MASSIVE_API_KEY"].startswith("${MASSIVE_API_KEY:?"), name
    # nor by another name, nor any REST setting outside MDP (WDS asks MDP for history, through Redis)
    for name, service in services.items():
        if name not in VENDOR_CLIENTS:
            assert "MASSIVE_API_KEY" not in json.dumps(service), name
        rest = [k for k in environment(service) if k.startswith("MASSIVE_REST_")]
        if name == "mdp":
            assert "MASSIVE_REST_URL" in rest
        else:
            assert rest == [], name


def test_each_credential_reaches_only_the_services_that_use_it():
    services = raw_compose()["services"]
    uses = {
        "MASSIVE_API_KEY": set(VENDOR_CLIENTS),
        "SIM_API_KEY": {"sim"},  # MDL and MDP present it as MASSIVE_API_KEY, from .env
        "RABBITMQ_PASSWORD": {"rabbitmq", "mdl", "mdp", "scp"},  # not the emulator, not the public gateway
        "REDIS_PASSWORD": {"redis", "mdl", "mdp", "wds", "scp"},
        "REDIS_SIGNALS_PASSWORD": {"redis", EXAMPLE},  # its own Redis user: never WDS, SCP, MDL, MDP
        "WDS_TOKEN_SECRET": {"wds", "scp"},
        "SCP_SESSION_SECRET": {"scp"},
    }
    for variable, expected in uses.items():
        holders = {name for name, service in services.items() if "${" + variable in json.dumps(service)}
        assert holders == expected, variable


def test_mdpipe_services_set_only_mdpipe_settings(generated):
    compose = load_compose(env_for("example", generated))
    for name, service in mdpipe_services(compose).items():
        unknown = set(environment(service)) - SETTING_NAMES - NON_MDPIPE_ENV
        assert not unknown, f"{name}: not mdpipe settings: {sorted(unknown)}"
    for name in dockerfile_env():
        if not name.startswith("PYTHON") and name not in ("PATH", "HOME"):
            assert name in SETTING_NAMES, f"Dockerfile ENV {name} is not an mdpipe setting"


def _groups_for(component: str) -> list[type]:
    """The settings groups a component reads, from each group's documented readers."""
    return [
        g
        for g in mdsettings.GROUPS
        if g.readers == "all" or component in [r.strip() for r in g.readers.split(",")]
    ]


@pytest.mark.parametrize("source", ["emulator", "massive"])
def test_each_component_passes_production_validation(source, generated, monkeypatch):
    compose = load_compose(env_for(source, generated))
    services = compose["services"]
    image_env = {k: v for k, v in dockerfile_env().items() if k in SETTING_NAMES}
    for name, service in mdpipe_services(compose).items():
        for var in SETTING_NAMES:
            monkeypatch.delenv(var, raising=False)
        env = {**image_env, **environment(service)}
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        assert env["MDPIPE_ENV"] == "production"
        loaded = {}
        for group in _groups_for(name):
            try:
                loaded[group] = mdsettings.load(group, production=True)
            except mdsettings.ConfigError as exc:
                pytest.fail(f"{name} ({source}): {exc}")
        for var in ("RABBITMQ_URL", "REDIS_URL", "PYDAL_URI"):
            if var in environment(service):
                host = urlsplit(environment(service)[var]).hostname or ""
                assert host in services, f"{name}: {var}: {host} is no service"
    mdl_env, mdp_env = environment(services["mdl"]), environment(services["mdp"])
    assert mdp_env["MASSIVE_API_KEY"] == mdl_env["MASSIVE_API_KEY"]
    if source == "emulator":
        sim = services["sim"]
        assert mdl_env["MASSIVE_API_KEY"] == environment(sim)["SIM_API_KEY"]
        assert mdl_env["MASSIVE_FEED"] == "sim:8765" and mdl_env["MASSIVE_TLS"] == "false"
        # MDP's REST calls go to the emulator's HTTP port: the one its healthcheck asks
        assert mdp_env["MASSIVE_REST_URL"] == SIM_REST
        port = urlsplit(SIM_REST).port
        assert f"http://127.0.0.1:{port}/readyz" in " ".join(sim["healthcheck"]["test"])
    else:
        assert mdl_env["MASSIVE_API_KEY"] == REAL_KEY
        assert mdl_env["MASSIVE_FEED"] == "socket.massive.com" and mdl_env["MASSIVE_TLS"] != "false"
        assert mdp_env["MASSIVE_REST_URL"] == MASSIVE_REST == "https://api.massive.com"
    # the REST settings compose passes on, unset in .env, are the app's own defaults
    rest = mdsettings.MassiveRestSettings.model_fields
    assert float(mdp_env["MASSIVE_REST_RATE"]) == rest["massive_rest_rate"].default
    assert mdp_env["MDP_HYDRATE"] == "true" and mdsettings.MdpSettings.model_fields["mdp_hydrate"].default
    scp_env = environment(services["scp"])
    assert urlsplit(scp_env["PYDAL_URI"]).hostname == "postgres"
    assert scp_env["WDS_TOKEN_SECRET"] == environment(services["wds"])["WDS_TOKEN_SECRET"]
    # the browser-facing URLs agree with the published ports
    assert urlsplit(scp_env["SCP_WDS_URL"]).port == 8780
    origins = environment(services["wds"])["WDS_ALLOWED_ORIGINS"].split(",")
    assert "http://localhost:8000" in origins and "http://127.0.0.1:8000" in origins
    scp_volume = next(v for v in services["scp"]["volumes"] if v.split(":")[0] == "scp-data")
    assert scp_volume.split(":")[1] == dockerfile_env()["SCP_DATA_DIR"]


def test_env_example_documents_every_variable(generated):
    text = ENV_EXAMPLE.read_text()
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, re.M))
    used = {m["braced"] or m["named"] for m in _VAR.finditer(COMPOSE.read_text())} - {None}
    assert used - documented == set(), "undocumented in deploy/.env.example"
    written = {k for k in generated["emulator"] if not k.startswith("__")}
    assert written - documented == set()
    assert (used | {"COMPOSE_PROFILES"}) >= written
    # placeholders, not values: no secret in the example looks like a generated one
    example = read_env_file(ENV_EXAMPLE)
    for name in SECRETS:
        assert "placeholder" in example[name], name
    assert "rabbitmq_management" in (DEPLOY / "rabbitmq" / "enabled_plugins").read_text()
    assert "rabbitmq_prometheus" in (DEPLOY / "rabbitmq" / "enabled_plugins").read_text()


# -- the example signal service and its Redis user ---------------------------------------------------------


def redis_user_args(compose: dict[str, Any]) -> list[str]:
    """The redis service's `--user <line>` arguments: one each, the redis.conf line `user <line>`."""
    return [a for a in compose["services"]["redis"]["command"] if a.startswith("--user ")]


@pytest.mark.parametrize("source", ENV_SOURCES)
def test_the_example_signal_service_publishes_as_its_own_redis_user(source, generated):
    """Its user's line is mdc/acl.py's, under the prefix every service uses (compose sets none but the
    example's, which is the default): the compose file cannot drift from the one declaration. Its
    publisher's URL is that user's; it reads with the default user, as the pipeline does."""
    from mdc import acl

    env = env_for(source, generated)
    compose = load_compose(env)
    services = compose["services"]
    example = environment(services[EXAMPLE])
    prefix = example["MDC_PREFIX"]
    assert prefix == mdsettings.MdcSettings.model_fields["mdc_prefix"].default
    assert [n for n, s in services.items() if "MDC_PREFIX" in environment(s)] == [EXAMPLE]
    password = env["REDIS_SIGNALS_PASSWORD"]
    assert redis_user_args(compose) == [
        f"--user {acl.user(SIGNAL_NAME)} on >{password} {acl.rules(SIGNAL_NAME, prefix)}"
    ]
    assert example["SIGNALS_REDIS_URL"] == f"redis://{acl.user(SIGNAL_NAME)}:{password}@redis:6379/0"
    assert example["REDIS_URL"] == example["SIGNALS_REDIS_URL"]  # it reads with its own user too
    if source != "example":  # (whose placeholders are all alike)
        others = {n: s for n, s in services.items() if n not in ("redis", EXAMPLE)}
        assert password not in json.dumps(others)
    # `python examples/signal_worker.py` in the image's working folder, the repository's examples read-only
    service = services[EXAMPLE]
    assert [*service["entrypoint"], *service["command"]] == ["python", "examples/signal_worker.py"]
    workdir = [a for k, a in dockerfile_stages()[-1]["steps"] if k == "WORKDIR"][-1]
    (volume,) = service["volumes"]
    source_dir, target, mode = volume.split(":")
    assert (DEPLOY / source_dir).resolve() == ROOT / "examples" and (target, mode) == (
        f"{workdir}/examples",
        "ro",
    )
    # hardened like every mdpipe service, on the internal network only, nothing published
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"] and not service.get("ports")
    assert service_networks(service) == {"internal"}
    check = " ".join(service["healthcheck"]["test"])
    assert "SIGNALS_REDIS_URL" in check and f":hb:signals.{SIGNAL_NAME}:*" in check


def test_redis_server_takes_the_compose_user_line(generated, tmp_path):
    """redis-server 7, started with the redis service's arguments: the example's user publishes on its own
    channels and nowhere else, writes nothing of the market state; the default user is the pipeline's."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server here")
    import redis
    from redis.exceptions import NoPermissionError

    from mdc import acl
    from mdc.names import Names

    env = env_for("emulator", generated)
    command = load_compose(env)["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [binary, *command[1:], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    service = redis.Redis.from_url(
        url, username=acl.user(SIGNAL_NAME), password=env["REDIS_SIGNALS_PASSWORD"]
    )
    pipeline = redis.Redis.from_url(url, password=env["REDIS_PASSWORD"])
    try:
        for _ in range(100):
            try:
                pipeline.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        names = Names("md")
        assert service.publish(names.redis_channel(f"signals.{SIGNAL_NAME}.AAPL"), b"{}") == 0
        assert service.execute_command("INCR", names.signal_seq(f"signals.{SIGNAL_NAME}")) == 1
        for channel in (names.redis_channel("trades.AAPL"), names.redis_channel("signals.momentum")):
            with pytest.raises(NoPermissionError):
                service.publish(channel, b"{}")
        with pytest.raises(NoPermissionError):
            service.set(names.stats("AAPL"), b"{}")
        with pytest.raises(NoPermissionError):
            service.execute_command("ACL", "LIST")
        assert pipeline.set(names.stats("AAPL"), b"{}")
        assert pipeline.publish(names.redis_channel("trades.AAPL"), b"{}") == 0
        assert service.get(names.stats("AAPL")) == b"{}"  # it reads the market state
    finally:
        service.close()
        pipeline.close()
        server.terminate()
        server.wait(10)


# -- deploy/gen-env -------------------------------------------------------------------------------------


def test_gen_env_writes_long_random_secrets_that_differ_each_run(generated):
    one, two = generated["emulator"], generated["emulator-again"]
    assert os.access(GEN_ENV, os.X_OK) and GEN_ENV.read_text().startswith("#!/bin/sh\n")
    assert one["__mode__"] == "0o600"
    for name in SECRETS:
        if name in ("SCP_ADMIN_PASSWORD", "SIM_API_KEY", "MASSIVE_API_KEY"):
            continue
        assert re.fullmatch(r"[0-9a-f]{64}", one[name]), name
    assert re.fullmatch(r"[0-9a-f]{48}", one["SIM_API_KEY"])
    assert re.fullmatch(r"[0-9a-f]{24}", one["SCP_ADMIN_PASSWORD"])
    for name in SECRETS:
        assert one[name] != two[name], f"{name} is the same in two runs"
    assert len({one[n] for n in SECRETS if n != "MASSIVE_API_KEY"}) == len(SECRETS) - 1
    assert one["COMPOSE_PROFILES"] == "emulator"
    assert one["SCP_ADMIN_EMAIL"] == "admin@example.com"
    assert one["SCP_ADMIN_PASSWORD"] in one["__stdout__"] and "admin@example.com" in one["__stdout__"]
    assert one["MASSIVE_REST_URL"] == SIM_REST
    massive = generated["massive"]
    assert massive["COMPOSE_PROFILES"] == ""
    assert massive["MASSIVE_API_KEY"] == REAL_KEY
    assert massive["MASSIVE_FEED"] == "socket.massive.com"
    assert massive["MASSIVE_REST_URL"] == MASSIVE_REST
    assert massive["SCP_ADMIN_EMAIL"] == "ops@example.org"


def test_gen_env_takes_the_rest_url_with_a_key_only(tmp_path):
    """MASSIVE_REST_URL is decided like MASSIVE_FEED: given with a key, it is written as it is; without
    a key the emulator's wins; a URL with a path, another scheme or a character .env would mangle is
    refused."""
    other = "https://rest.example.org:8443"
    result = run_gen_env(tmp_path / "a.env", MASSIVE_API_KEY=REAL_KEY, MASSIVE_REST_URL=other)
    assert result.returncode == 0, result.stderr
    assert read_env_file(tmp_path / "a.env")["MASSIVE_REST_URL"] == other
    result = run_gen_env(tmp_path / "b.env", MASSIVE_REST_URL=other)
    assert result.returncode == 0, result.stderr
    assert read_env_file(tmp_path / "b.env")["MASSIVE_REST_URL"] == SIM_REST
    for bad in ("https://api.massive.com/v2", "ftp://api.massive.com", "api.massive.com", "https://a b#c"):
        out = tmp_path / "bad.env"
        result = run_gen_env(out, MASSIVE_API_KEY=REAL_KEY, MASSIVE_REST_URL=bad)
        assert result.returncode != 0 and "MASSIVE_REST_URL" in result.stderr, bad
        assert not out.exists(), bad


def test_gen_env_keeps_an_existing_file_unless_forced(tmp_path):
    out = tmp_path / ".env"
    out.write_text("KEEP=me\n")
    result = run_gen_env(out)
    assert result.returncode != 0 and "exists" in result.stderr
    assert out.read_text() == "KEEP=me\n"
    result = run_gen_env(out, "--force")
    assert result.returncode == 0, result.stderr
    assert "RABBITMQ_PASSWORD" in read_env_file(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]  # no temporary file left behind
    bad = run_gen_env(tmp_path / "other.env", SCP_ADMIN_EMAIL="not an address")
    assert bad.returncode != 0 and not (tmp_path / "other.env").exists()


# -- deploy/Dockerfile ----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def dockerfile_stages() -> list[dict[str, Any]]:
    stages: list[dict[str, Any]] = []
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            image, _, name = args.partition(" AS ") if " AS " in args else args.partition(" as ")
            stages.append({"image": image.strip(), "name": name.strip(), "steps": []})
        elif stages:
            stages[-1]["steps"].append((keyword, args))
    return stages


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in dockerfile_stages()[-1]["steps"]:
        if keyword == "ENV":
            for name, value in re.findall(r"([A-Za-z_]\w*)=(\S+)", args):
                env[name] = value.strip("\"'")
    return env


PIP_INSTALL_DOT = re.compile(r"pip install \.(\s|$)")


def pyproject_packages() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}


def test_dockerfile_is_multi_stage_with_the_spa_built_by_npm():
    stages = dockerfile_stages()
    assert len(stages) >= 3
    node = [s for s in stages if s["image"].startswith("node:20")]
    assert len(node) == 1
    runs = " ".join(a for k, a in node[0]["steps"] if k == "RUN")
    assert "scripts/build-spa" in runs or "npm ci --ignore-scripts" in runs
    assert "npm ci --ignore-scripts" in (ROOT / "scripts" / "build-spa").read_text()
    copies = [a for k, a in node[0]["steps"] if k == "COPY"]
    assert any("package-lock.json" in c for c in copies)
    # the builder installs the project itself, not editable, with the SPA's output in the tree
    build = [s for s in stages if any(k == "RUN" and PIP_INSTALL_DOT.search(a) for k, a in s["steps"])]
    assert len(build) == 1 and build[0]["image"].startswith("python:3.11-slim")
    runs = " ".join(a for k, a in build[0]["steps"] if k == "RUN")
    assert not re.search(r"pip install[^&|;]*(-e|--editable)\b", runs)
    assert any(a.startswith(f"--from={node[0]['name']} ") for k, a in build[0]["steps"] if k == "COPY")
    # every package pyproject.toml installs is copied into the builder
    packages = pyproject_packages()
    copies = [a.split()[:-1] for k, a in build[0]["steps"] if k == "COPY" and not a.startswith("--")]
    copied = {src for sources in copies for src in sources}
    assert packages <= copied, f"packages not copied: {sorted(packages - copied)}"
    assert {"pyproject.toml", "README.md"} <= copied


def test_dockerfile_final_stage_is_slim_unprivileged_and_runs_mdpipe():
    final = dockerfile_stages()[-1]
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", final["image"]), final["image"]
    steps = final["steps"]
    keywords = [k for k, _ in steps]
    for keyword, args in steps:
        if keyword == "RUN":
            assert not re.search(r"apt-get install|apk add|build-essential|gcc|npm|pip install", args), args
        if keyword == "COPY":
            assert args.startswith("--from="), f"the final stage copies only from the builder: {args}"
            assert args.split()[1:] == ["/opt/mdpipe", "/opt/mdpipe"], args
    users = [a for k, a in steps if k == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    assert keywords.index("ENTRYPOINT") > len(keywords) - 1 - keywords[::-1].index("USER")
    entrypoints = [a for k, a in steps if k == "ENTRYPOINT"]
    assert len(entrypoints) == 1 and json.loads(entrypoints[0]) == ["mdpipe"]
    runs = " ".join(a for k, a in steps if k == "RUN")
    assert "--uid 10001" in runs and "--gid 10001" in runs
    env = dockerfile_env()
    for name in ("SIM_HOST", "MDL_HTTP_HOST", "MDP_HTTP_HOST", "WDS_HOST", "WDS_HTTP_HOST", "SCP_HOST"):
        assert env.get(name) == "0.0.0.0", name
    assert env["SCP_DATA_DIR"] == "/var/lib/mdpipe/scp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/mdpipe/bin:")
    exposed = {int(p) for k, a in steps if k == "EXPOSE" for p in a.split()}
    defaults = {
        mdsettings.SimSettings.model_fields["sim_port"].default,
        mdsettings.SimSettings.model_fields["sim_http_port"].default,
        mdsettings.MdlSettings.model_fields["mdl_http_port"].default,
        mdsettings.MdpSettings.model_fields["mdp_http_port"].default,
        mdsettings.WdsSettings.model_fields["wds_port"].default,
        mdsettings.WdsSettings.model_fields["wds_http_port"].default,
        mdsettings.ScpSettings.model_fields["scp_port"].default,
    }
    assert exposed == defaults
    labels = " ".join(a for k, a in steps if k == "LABEL")
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    args = [a for k, a in dockerfile_instructions() if k == "ARG" and a.startswith("MDPIPE_VERSION=")]
    assert args == [f"MDPIPE_VERSION={version}"], "the image's version label follows pyproject.toml"


def test_dockerignore_keeps_the_context_small_but_complete():
    patterns = [
        p.strip().rstrip("/")
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    for needed in (".venv", ".git", "test-artifacts", ".mdpipe", "bench/results", "deploy/.env"):
        assert needed in patterns, needed
    assert any("node_modules" in p for p in patterns)
    sources = []
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            sources += args.split()[:-1]
    assert "scripts/build-spa" in sources
    for src in sources:
        for pattern in patterns:
            hit = src == pattern or src.startswith(pattern + "/") or fnmatch.fnmatch(src, pattern)
            assert not hit, f".dockerignore pattern {pattern!r} drops {src}, which the Dockerfile copies"


# -- the wheel ------------------------------------------------------------------------------------------


def test_a_non_editable_wheel_carries_templates_static_files_and_lua(tmp_path):
    vendor = ROOT / "scp" / "apps" / "_default" / "static" / "vendor"
    assert (vendor / "lightweight-charts.standalone.production.js").is_file(), "run scripts/build-spa"
    packages = sorted(pyproject_packages())
    src = tmp_path / "src"  # a copy: building in the working tree would leave build/ and egg-info there
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in packages:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("mdpipe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = [ROOT / "scp" / "apps" / "_default" / d for d in ("templates", "static")]
    expected = {
        p.relative_to(ROOT).as_posix()
        for folder in wanted
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    expected |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "mdp" / "lua").glob("*.lua")}
    assert any(n.endswith(".lua") for n in expected) and any(n.endswith(".html") for n in expected)
    assert "scp/apps/_default/static/vendor/lightweight-charts.standalone.production.js" in expected
    assert expected - names == set(), "missing from the wheel (pyproject.toml package-data)"
    assert not any("node_modules" in n or n.startswith(("tests/", "deploy/")) for n in names)
