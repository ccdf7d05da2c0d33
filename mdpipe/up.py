"""``mdpipe up``: the whole pipeline on one machine, without containers.

The emulator (unless ``MASSIVE_API_KEY`` is set), MDL, MDP (``UP_MDP_REPLICAS``), WDS and SCP run as
supervised child processes (``mdpipe.children``), each started once the previous one is ready, each
configured by the same environment as when run alone. RabbitMQ and Redis come from ``RABBITMQ_URL``
and ``REDIS_URL``; when one does not answer and its server is installed, a private one is started
(``mdpipe.private_services``). The first run creates an SCP admin with a random password, kept in
``UP_DIR/admin.json`` (mode 0600) and shown in the banner of that run only. SCP reads it from
``UP_DIR/admin-password`` (0600, ``SCP_ADMIN_PASSWORD_FILE``), never from its environment.
``UP_EXAMPLES=1`` adds the example services of a checkout's ``examples/`` (the breakouts signal
worker), each publishing as a Redis user of its own (``mdc.acl``) made with a random password for this
run and deleted at its end.

A Redis Cluster (``REDIS_CLUSTER_NODES`` set) is always an external one: ``up`` never starts a private
Redis for it (a single Redis is no stand-in for a cluster), does not wait on ``REDIS_URL`` (there only
the user, password and TLS of the nodes), and passes ``REDIS_CLUSTER_NODES`` to every component as it
is. ``UP_EXAMPLES`` is refused there: the example's own Redis user would be made on one node only (ACL
users are per node) and the worker needs ``BREAKOUT_SYMBOLS`` on a cluster (no patterns).

``plan`` (what to run, with which environment) is a plain function; ``run`` does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

import redis as sync_redis
from redis.exceptions import RedisError

from mdc import acl
from mdc.names import Names

from . import private_services
from .children import ChildFailed, Spec, Supervisor, http_ready
from .settings import (
    CommonSettings,
    MassiveSettings,
    MdcSettings,
    MdlSettings,
    MdpSettings,
    ScpSettings,
    SimSettings,
    UpSettings,
    WdsSettings,
    mask_url,
)

ADMIN_EMAIL = "admin@example.com"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"  # in a checkout; not installed
EXAMPLE_SIGNALS = "breakouts"  # the signal name of examples/signal_worker.py
EXAMPLE_INSTANCE = "up"
ADMIN_PASSWORD_FILE = "admin-password"  # noqa: S105 - a file name, not a secret
LOOPBACK = "127.0.0.1"


@dataclass
class Config:
    common: CommonSettings
    massive: MassiveSettings
    mdl: MdlSettings
    mdp: MdpSettings
    wds: WdsSettings
    scp: ScpSettings
    sim: SimSettings
    up: UpSettings
    mdc: MdcSettings = field(default_factory=MdcSettings)


@dataclass
class Plan:
    specs: list[Spec]
    emulated: bool  # the built-in emulator stands in for Massive
    dashboard: str
    wds_url: str


def local_host(host: str) -> str:
    """Where a process on this machine reaches a server bound to ``host``."""
    return LOOPBACK if host in ("", "0.0.0.0", "::") else host  # noqa: S104 - what a bind may say


def check_ports(config: Config) -> list[str]:
    """The settings ``mdpipe up`` cannot run with: ephemeral ports (it waits on each by its port)."""
    ports = {
        "SIM_PORT": config.sim.sim_port,
        "SIM_HTTP_PORT": config.sim.sim_http_port,
        "MDL_HTTP_PORT": config.mdl.mdl_http_port,
        "MDP_HTTP_PORT": config.mdp.mdp_http_port,
        "WDS_PORT": config.wds.wds_port,
        "WDS_HTTP_PORT": config.wds.wds_http_port,
        "SCP_PORT": config.scp.scp_port,
    }
    need = "mdpipe up needs a fixed port, not 0"
    return [f"invalid setting {name}: {need}" for name, port in ports.items() if not port]


def plan(
    config: Config,
    environ: dict[str, str],
    services: dict[str, str],
    admin: tuple[str, str],
    text_logs: bool,
    token_secret: str = "",
    signals_url: str = "",
) -> Plan:
    """Every component's command and environment. ``services``: RABBITMQ_URL/REDIS_URL of private
    servers; ``admin``: the SCP admin to create when none exists (empty: SCP's own settings);
    ``token_secret``: the WDS token secret of this machine (``token_secret()``), for WDS and SCP only;
    ``signals_url``: the Redis URL the example worker publishes with (``UP_EXAMPLES``), its alone."""
    # -P: not the working folder first on the import path, where a folder named like a package (SCP's
    # data in ./scp, with its ./scp/metrics) would shadow it for a component started again
    mdpipe = [sys.executable, "-P", "-m", "mdpipe"]
    base = {**environ, **services}
    if text_logs and "LOG_FORMAT" not in environ:
        base["LOG_FORMAT"] = "text"
    # the data plane's that call the vendor, MDL (the stream) and MDP (the REST snapshot, chart history):
    # never the gateways that clients reach, never the control plane
    vendor_key = base.pop("MASSIVE_API_KEY", "")
    sim, scp, wds = config.sim, config.scp, config.wds
    specs: list[Spec] = []
    mdl_env = dict(base)
    emulated = not vendor_key
    if emulated:
        sim_key = base.get("SIM_API_KEY") or secrets.token_urlsafe(24)
        sim_env = {**base, "SIM_API_KEY": sim_key, "SIM_MARKET": config.massive.massive_market}
        specs.append(Spec("sim", [*mdpipe, "sim"], sim_env, ready=http_ready(sim.sim_http_port)))
        mdl_env.update(MASSIVE_FEED=f"{local_host(sim.sim_host)}:{sim.sim_port}", MASSIVE_TLS="false")
        vendor_key = sim_key
    mdl_env["MASSIVE_API_KEY"] = vendor_key
    mdp_env = {**base, "MASSIVE_API_KEY": vendor_key}
    if emulated:
        mdp_env["MASSIVE_REST_URL"] = f"http://{local_host(sim.sim_host)}:{sim.sim_http_port}"
    specs.append(Spec("mdl", [*mdpipe, "mdl"], mdl_env, ready=http_ready(config.mdl.mdl_http_port)))
    replicas = config.up.up_mdp_replicas
    for i in range(replicas):
        port = config.mdp.mdp_http_port + i
        env = {**mdp_env, "MDP_HTTP_PORT": str(port)}
        if replicas > 1 and config.mdp.mdp_instance:
            env["MDP_INSTANCE"] = f"{config.mdp.mdp_instance}-{i + 1}"
        name = "mdp" if replicas == 1 else f"mdp-{i + 1}"
        specs.append(Spec(name, [*mdpipe, "mdp"], env, ready=http_ready(port)))
    scp_host = local_host(scp.scp_host)
    origins = f"http://{scp_host}:{scp.scp_port},http://localhost:{scp.scp_port}"
    wds_env = {**base, "WDS_ALLOWED_ORIGINS": environ.get("WDS_ALLOWED_ORIGINS", origins)}
    if token_secret:
        wds_env["WDS_TOKEN_SECRET"] = token_secret
    specs.append(Spec("wds", [*mdpipe, "wds"], wds_env, ready=http_ready(wds.wds_http_port)))
    scp_env = dict(base)
    if token_secret:
        scp_env["WDS_TOKEN_SECRET"] = token_secret
    if admin[0]:
        # a file, not the password: a process's environment is readable where its files are not
        password_file = os.path.join(config.up.up_dir, ADMIN_PASSWORD_FILE)
        scp_env.update(SCP_ADMIN_EMAIL=admin[0], SCP_ADMIN_PASSWORD_FILE=password_file)
    specs.append(Spec("scp", [*mdpipe, "scp"], scp_env, ready=http_ready(scp.scp_port), stop_timeout_s=30))
    if config.up.up_examples:
        specs.append(example_spec(config, base, signals_url))
    return Plan(
        specs,
        emulated,
        dashboard=f"http://{scp_host}:{scp.scp_port}/",
        wds_url=f"ws://{local_host(wds.wds_host)}:{wds.wds_port}/ws",
    )


def example_spec(config: Config, base: dict[str, str], signals_url: str) -> Spec:
    """The example signal worker: reads the market as everyone does, publishes with ``signals_url``."""
    worker = EXAMPLES / "signal_worker.py"
    if not worker.is_file():
        raise ChildFailed(
            "up", f"UP_EXAMPLES=1 runs {worker}, which is not there: run mdpipe up in a checkout"
        )
    redis_url = base.get("REDIS_URL") or config.common.redis_url.get_secret_value()
    # its own user reads the market too (least privilege); without one, REDIS_URL's does both
    own = signals_url or redis_url
    env = {**base, "REDIS_URL": own, "SIGNALS_REDIS_URL": own, "SIGNALS_INSTANCE": EXAMPLE_INSTANCE}
    beat = Names(config.mdc.mdc_prefix).heartbeat(f"signals.{EXAMPLE_SIGNALS}", EXAMPLE_INSTANCE)

    def ready() -> bool:  # its publisher's heartbeat: it is up and reaches Redis
        try:
            with sync_redis.Redis.from_url(redis_url, socket_timeout=2) as client:
                return bool(client.exists(beat))
        except (RedisError, OSError):
            return False

    return Spec("signals", [sys.executable, "-P", str(worker)], env, ready=ready, ready_timeout_s=30)


def example_user(config: Config, redis_url: str) -> tuple[str, str]:
    """The example worker's own Redis user (``mdc.acl``), with a password made now: its URL, and a
    note when the Redis refused (no ACL rights: it then publishes with ``REDIS_URL``'s user)."""
    password = secrets.token_urlsafe(24)
    try:
        with sync_redis.Redis.from_url(redis_url, socket_timeout=5) as client:
            client.execute_command(
                "ACL", "SETUSER", *acl.setuser_args(EXAMPLE_SIGNALS, password, config.mdc.mdc_prefix)
            )
    except (RedisError, OSError) as exc:
        return "", f"no Redis user of its own ({exc}): it publishes as REDIS_URL's user"
    user = acl.user(EXAMPLE_SIGNALS)
    parts = urlsplit(redis_url)
    port = f":{parts.port}" if parts.port else ""
    url = urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}{port}"))
    return url, f"publishes as the Redis user {user}"


def drop_example_user(redis_url: str) -> None:
    with (
        contextlib.suppress(RedisError, OSError),
        sync_redis.Redis.from_url(redis_url, socket_timeout=5) as client,
    ):
        client.execute_command("ACL", "DELUSER", acl.user(EXAMPLE_SIGNALS))


TOKEN_SECRET_FILE = "wds-token-secret"  # noqa: S105 - a file name, not a secret


def token_secret(config: Config, environ: dict[str, str]) -> str:
    """The secret WDS tokens are signed with: ``WDS_TOKEN_SECRET`` when given; else one made at random on
    the first run and kept in ``UP_DIR/wds-token-secret`` (owner only), so tokens minted for bots stay
    good across restarts. Never the documented development default: anyone who read the README could
    mint a token for every channel."""
    given = environ.get("WDS_TOKEN_SECRET", "")
    if given:
        return given
    path = os.path.join(config.up.up_dir, TOKEN_SECRET_FILE)
    with contextlib.suppress(OSError):
        with open(path) as fh:
            saved = fh.read().strip()
        if len(saved) >= 32:
            return saved
    secret = secrets.token_urlsafe(48)
    os.makedirs(config.up.up_dir, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret


def admin_login(config: Config, environ: dict[str, str]) -> tuple[str, str, bool]:
    """The admin to create (email, password, made now); ("", "", False) when SCP_ADMIN_EMAIL is set.

    The first run makes one with a random password and keeps it in ``UP_DIR/admin.json``, readable by
    its owner only; later runs use it again (SCP creates it only when no admin exists). Every run writes
    the password alone to ``UP_DIR/admin-password`` (0600), which SCP reads."""
    if environ.get("SCP_ADMIN_EMAIL"):
        return "", "", False
    path = os.path.join(config.up.up_dir, "admin.json")
    found: tuple[str, str, bool] | None = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        with open(path) as fh:
            saved = json.load(fh)
        if isinstance(saved["email"], str) and isinstance(saved["password"], str):
            found = saved["email"], saved["password"], False
    if found is None:
        found = ADMIN_EMAIL, secrets.token_urlsafe(15), True
        _private_write(config.up.up_dir, "admin.json", json.dumps({"email": found[0], "password": found[1]}))
    _private_write(config.up.up_dir, ADMIN_PASSWORD_FILE, found[1] + "\n")
    return found


def _private_write(folder: str, name: str, text: str) -> None:
    """``folder/name`` readable by its owner only (made so before a byte is written)."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


async def _services(config: Config, sup: Supervisor, base: dict[str, str], folder: str) -> dict[str, str]:
    """Private RabbitMQ and Redis for the URLs nothing answers at; their URLs by variable name."""
    urls: dict[str, str] = {}
    auto = config.up.up_private_services == "auto"
    wanted = (
        ("RABBITMQ_URL", config.common.rabbitmq_url, "RabbitMQ", private_services.rabbitmq),
        ("REDIS_URL", config.common.redis_url, "Redis", private_services.redis),
    )
    for variable, secret_url, what, make in wanted:
        if variable == "REDIS_URL" and config.common.redis_cluster_nodes:
            continue  # an external cluster: its nodes are the components' to reach, never replaced
        url, where = secret_url.get_secret_value(), os.path.join(folder, what.lower())
        if await asyncio.to_thread(private_services.answers, url):
            continue
        made = make(where, base) if auto else None
        if made is None:
            hint = "install it (scripts/ensure-services does)" if auto else "UP_PRIVATE_SERVICES=never"
            message = f"{what} does not answer at {variable}={mask_url(url)}; {hint}, or set {variable}"
            raise ChildFailed("up", message)
        specs, urls[variable] = made
        private = mask_url(urls[variable])
        sup.say(f"{what} does not answer at {mask_url(url)}: a private one at {private} ({where})")
        for spec in specs:
            await sup.start(spec)
    return urls


def banner(
    config: Config, planned: Plan, admin: tuple[str, str, bool], services: dict[str, str], examples: str = ""
) -> list[str]:
    rabbit = services.get("RABBITMQ_URL") or config.common.rabbitmq_url.get_secret_value()
    redis = services.get("REDIS_URL") or config.common.redis_url.get_secret_value()
    feed = (
        f"the built-in Massive emulator (no MASSIVE_API_KEY), ws://{local_host(config.sim.sim_host)}:"
        f"{config.sim.sim_port}/{config.massive.massive_market}"
        if planned.emulated
        else f"Massive, {config.massive.massive_feed}/{config.massive.massive_market}"
    )
    lines = ["mdpipe is running. Ctrl-C stops it.", f"  dashboard  {planned.dashboard}"]
    email, password, made = admin
    saved = os.path.join(config.up.up_dir, "admin.json")
    if email and made and config.common.mdpipe_env != "production":
        lines.append(f"  login      {email} / {password}   (created now; kept in {saved})")
    elif email:  # printed once: a terminal's scroll-back or a log of every start would keep it
        lines.append(f"  login      {email}; its password is in {saved}")
    lines += [
        f"  WDS        {planned.wds_url}",
        f"  a token    {bot_token_command(config, dict(os.environ))}",
        f"  feed       {feed}",
        f"  RabbitMQ   {mask_url(rabbit)}{'  (private)' if 'RABBITMQ_URL' in services else ''}",
        f"  Redis      {mask_url(redis)}{'  (private)' if 'REDIS_URL' in services else ''}",
    ]
    if examples:
        lines.append(f"  example    signals.{EXAMPLE_SIGNALS} by examples/signal_worker.py: {examples}")
    return lines


def bot_token_command(config: Config, environ: dict[str, str]) -> str:
    """A command that mints a token WDS accepts (for a bot reading the stats and the boards)."""
    channels = "--channels 'stats.*,leaders.*'"
    if environ.get("WDS_TOKEN_SECRET"):
        return f"mdpipe token --subject bot1 {channels}"
    path = os.path.join(config.up.up_dir, TOKEN_SECRET_FILE)
    return f'WDS_TOKEN_SECRET="$(cat {shlex.quote(path)})" mdpipe token --subject bot1 {channels}'


async def run(config: Config, stop: asyncio.Event, out: TextIO = sys.stdout) -> int:
    environ = dict(os.environ)
    sup = Supervisor(out, config.up.up_restart_max_s)
    folder = tempfile.mkdtemp(prefix="mdpipe-up-")
    code = 0
    example_redis = ""  # where the example's Redis user was made, to delete it at the end

    async def start_all() -> None:
        nonlocal example_redis
        if config.up.up_examples and config.common.redis_cluster_nodes:
            message = "UP_EXAMPLES does not run on a Redis Cluster (REDIS_CLUSTER_NODES): unset one of them"
            raise ChildFailed("up", message, code=2)
        services = await _services(config, sup, environ, folder)
        admin = admin_login(config, environ)
        secret = token_secret(config, environ)
        signals_url, note = "", ""
        if config.up.up_examples:
            redis_url = services.get("REDIS_URL") or config.common.redis_url.get_secret_value()
            signals_url, note = await asyncio.to_thread(example_user, config, redis_url)
            example_redis = redis_url if signals_url else ""
        planned = plan(config, environ, services, admin[:2], text_logs=out.isatty(), token_secret=secret,
                       signals_url=signals_url)  # fmt: skip
        for spec in planned.specs:
            await sup.start(spec)
        for line in banner(config, planned, admin, services, note):
            sup.say(line)

    try:
        startup = asyncio.create_task(start_all())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({startup, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not startup.done():
            startup.cancel()
            with contextlib.suppress(asyncio.CancelledError, ChildFailed):
                await startup
        else:
            startup.result()  # raises what failed
            failed = asyncio.create_task(sup.changed.wait())
            await asyncio.wait({failed, stopped}, return_when=asyncio.FIRST_COMPLETED)
            failed.cancel()
            if sup.failed is not None:
                raise sup.failed
        stopped.cancel()
    except ChildFailed as exc:
        print(f"mdpipe up: {exc}", file=sys.stderr)
        code = exc.code if exc.code == 2 else 1
    finally:
        try:
            sup.say("stopping")
            await sup.stop()
        finally:
            sup.kill_all()
            if example_redis:
                await asyncio.to_thread(drop_example_user, example_redis)
            shutil.rmtree(folder, ignore_errors=True)
    return code
