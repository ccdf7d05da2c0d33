"""The ``mdpipe`` command: one subcommand per component, ``--help`` on each.

Command-line options are shortcuts for settings: ``mdpipe sim --port 9000`` is ``SIM_PORT=9000 mdpipe
sim``, validated the same way. A bad setting prints one line naming its variable and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from . import __version__, logs, runtime
from .settings import (
    GROUPS,
    CommonSettings,
    ConfigError,
    MarketSettings,
    MassiveRestSettings,
    MassiveSettings,
    MdcSettings,
    MdlSettings,
    MdpSettings,
    MdqSettings,
    ScpSettings,
    SimSettings,
    TradingDaySettings,
    UpSettings,
    WdsSettings,
    describe,
    load,
    url_secrets,
)

log = logging.getLogger("mdpipe")

EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_CONFIG
    try:
        return args.run(args) or 0
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"mdpipe: {line}", file=sys.stderr)
        return EXIT_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdpipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"mdpipe {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    sim = commands.add_parser(
        "sim",
        help="run the Massive emulator (synthetic market or replay)",
        description="Serve the Massive WebSocket protocol with a synthetic US-stocks market or a replayed "
        "recording. Every option is also an environment variable (see `mdpipe settings`).",
    )
    _setting(sim, "--host", "sim_host")
    _setting(sim, "--port", "sim_port")
    _setting(sim, "--http-port", "sim_http_port")
    _setting(sim, "--market", "sim_market")
    _setting(sim, "--seed", "sim_seed")
    _setting(sim, "--symbols", "sim_symbols")
    _setting(sim, "--rate", "sim_rate")
    _setting(sim, "--start", "sim_start")
    _setting(sim, "--replay", "sim_replay", metavar="FILE")
    _setting(sim, "--speed", "sim_replay_speed")
    sim.add_argument("--send-ts", dest="sim_send_ts", action="store_const", const=True,
                     help="stamp every event with the emulator's send time (SIM_SEND_TS)")  # fmt: skip
    sim.set_defaults(run=_run_sim)
    sim_commands = sim.add_subparsers(title="sim commands", metavar="SIM_COMMAND")

    record = sim_commands.add_parser(
        "record",
        help="record raw frames from a Massive connection to a file",
        description="Connect with the massive client to MASSIVE_FEED/MASSIVE_MARKET using MASSIVE_API_KEY "
        "and "
        "MASSIVE_SUBSCRIPTIONS, and write every raw frame with its receive time to a compressed recording.",
    )
    record.add_argument("-o", "--output", required=True, type=Path, help="recording file to write")
    record.add_argument("--duration", type=float, help="stop after this many seconds")
    record.add_argument("--frames", type=int, help="stop after this many frames")
    _setting(record, "--feed", "massive_feed")
    _setting(record, "--market", "massive_market")
    _setting(record, "--subscriptions", "massive_subscriptions")
    record.set_defaults(run=_run_record)

    fault = sim_commands.add_parser(
        "fault",
        help="inject a fault into a running emulator",
        description="Ask the emulator at SIM_HOST:SIM_HTTP_PORT to inject a fault into its clients "
        "(authenticated with SIM_API_KEY).",
    )
    from sim.server import FAULTS  # the emulator's table is the list of choices

    fault.add_argument("name", choices=sorted(FAULTS), help="; ".join(f"{k}: {v}" for k, v in FAULTS.items()))
    fault.add_argument(
        "--seconds", type=float, default=None,
        help="how long a stall or REST fault lasts (default 5), or a pause (default: until resume)",
    )  # fmt: skip
    fault.add_argument("--status", type=int, default=None, help="rest_error's answer, 400-599 (default 503)")
    fault.add_argument("--delay", type=float, default=None, help="rest_slow's delay, seconds (default 2)")
    fault.set_defaults(run=_run_fault)

    mdl = commands.add_parser(
        "mdl",
        help="run the listener: the one vendor connection, routed into RabbitMQ",
        description="Hold the one Massive connection (MASSIVE_FEED/MASSIVE_MARKET, MASSIVE_API_KEY) and "
        "publish its events, routed by class, to the MDQ queues in RabbitMQ. Exits 2 when the vendor "
        "refuses the API key.",
    )
    _setting(mdl, "--feed", "massive_feed")
    _setting(mdl, "--market", "massive_market")
    _setting(mdl, "--subscriptions", "massive_subscriptions")
    _setting(mdl, "--http-port", "mdl_http_port")
    _setting(mdl, "--shards", "mdq_shards")
    _setting(mdl, "--tap", "mdl_tap_file", metavar="FILE")
    mdl.set_defaults(run=_run_mdl)

    mdp = commands.add_parser(
        "mdp",
        help="run a processor: MDQ events into market state in Redis, published on pub/sub",
        description="Consume the MDQ classes or shards in MDP_CLASSES, keep the market state in Redis "
        "(MDC) and publish its updates. Run as many replicas as needed; each queue has one active "
        "consumer at a time.",
    )
    _setting(mdp, "--classes", "mdp_classes")
    _setting(mdp, "--http-port", "mdp_http_port")
    _setting(mdp, "--shards", "mdq_shards")
    _setting(mdp, "--plugins", "mdp_plugins")
    mdp.set_defaults(run=_run_mdp)

    inspect = commands.add_parser(
        "inspect",
        help="read cached market state or tail channels, with no other component running",
        description="Read the market state in Redis (REDIS_URL, under MDC_PREFIX) or print the updates "
        "published on its channels. Output is JSON, one document per line (per channel, item or update); "
        "notes go to stderr. Exits 2 on a bad argument, 1 when Redis fails. Options follow WHAT: "
        "`mdpipe inspect stats AAPL --prefix md --pretty`.",
    )
    inspect.set_defaults(run=_run_inspect)
    inspect_commands = inspect.add_subparsers(title="what", dest="what", metavar="WHAT", required=True)
    inspect_common = argparse.ArgumentParser(add_help=False)
    _setting(inspect_common, "--prefix", "mdc_prefix")
    inspect_common.add_argument("--pretty", action="store_true", help="indented JSON")

    def inspect_command(name: str, text: str) -> argparse.ArgumentParser:
        return inspect_commands.add_parser(name, help=text, description=text, parents=[inspect_common])

    from mdc.names import BOARDS

    part = inspect_command("snapshot", "each channel's snapshot: {channel, seq, data}")
    part.add_argument("channels", nargs="+", metavar="CHANNEL", help="stats.AAPL, leaders.gainers, halts...")
    part.add_argument("--minute-bars", type=int, default=0, metavar="N", help="newest N in bars.SYM (0: all)")
    inspect_command("stats", "a symbol's day stats").add_argument("sym", metavar="SYM")
    inspect_command("quote", "a symbol's newest quote").add_argument("sym", metavar="SYM")
    part = inspect_command("bars", "a symbol's newest minute bars, oldest first")
    part.add_argument("sym", metavar="SYM")
    part.add_argument("-n", type=int, default=10, help="how many (default 10, 0: all kept)")
    inspect_command("leaders", "a leaderboard as last published").add_argument("board", choices=BOARDS)
    inspect_command("halted", "every symbol halted now")
    inspect_command("alerts", "the newest alerts, newest first").add_argument(
        "-n", type=int, default=50, help="how many (default 50)"
    )
    part = inspect_command("raw", "the newest raw events of one type (NOI, unknown...), newest first")
    part.add_argument("ev", metavar="EV")
    part.add_argument("-n", type=int, default=20, help="how many (default 20)")
    inspect_command("day", "the newest trading day seen")
    inspect_command("heartbeats", "every live component instance")
    inspect_command("keys", "the keys under the prefix, with type and TTL (at most 10,000)").add_argument(
        "pattern", nargs="?", default="*", help="glob after the prefix, e.g. 'stats:*' (default *)"
    )
    part = inspect_command("tail", "print the updates on channels as they are published, until Ctrl-C")
    part.add_argument("targets", nargs="+", metavar="CHANNEL", help="a channel, or a pattern (trades.*)")
    part.add_argument("--type", dest="types", action="append", metavar="T",
                      help="only updates of this type (repeat, or comma-separated)")  # fmt: skip
    part.add_argument("--count", type=int, help="stop after N updates")
    part.add_argument("--seconds", type=float, help="stop after S seconds")

    wds = commands.add_parser(
        "wds",
        help="run the widget data service: the authenticated WebSocket gateway to MDC",
        description="Serve ws://WDS_HOST:WDS_PORT/ws: token auth, a snapshot then live updates per "
        "channel, conflation for slow clients. Stateless: run any number of replicas behind a load "
        "balancer. Protocol: docs/wds-protocol.md.",
    )
    _setting(wds, "--port", "wds_port")
    _setting(wds, "--http-port", "wds_http_port")
    wds.set_defaults(run=_run_wds)

    token = commands.add_parser(
        "token",
        help="mint a WDS access token for a bot or a script",
        description="Print a token letting its holder connect to WDS and read CHANNELS: one line on stdout, "
        "nothing else. Signed with WDS_TOKEN_SECRET (HS256) or the private key file WDS_TOKEN_PRIVATE_KEY "
        "(RS256), for WDS_TOKEN_AUDIENCE and WDS_TOKEN_ISSUER. Exits 2 on a bad argument or setting.",
    )
    token.add_argument("--subject", required=True, metavar="NAME", help="who holds the token (its sub claim)")
    token.add_argument("--channels", required=True, metavar="CHANNELS",
                       help="comma-separated channels or glob patterns it may read: 'stats.*,trades.AAPL'; "
                       "'*' for every channel")  # fmt: skip
    _setting(token, "--ttl", "wds_token_ttl_s", metavar="SECONDS")
    token.set_defaults(run=_run_token)

    scp = commands.add_parser(
        "scp",
        help="run the control plane: users, the dashboard and the REST API (py4web under gunicorn)",
        description="Serve http://SCP_HOST:SCP_PORT/: the login page, the dashboard (logged-in users) and "
        "/api (OpenAPI at /api/openapi.json), with SCP_WORKERS worker processes. Users are kept in "
        "PYDAL_URI; the first admin comes from `mdpipe scp create-user --admin` or SCP_ADMIN_EMAIL.",
    )
    _setting(scp, "--port", "scp_port")
    _setting(scp, "--workers", "scp_workers")
    scp.set_defaults(run=_run_scp)
    scp_commands = scp.add_subparsers(title="scp commands", metavar="SCP_COMMAND")
    create_user = scp_commands.add_parser(
        "create-user",
        help="add a user to the control plane's database",
        description="Create a user (a viewer, or an admin with --admin). The password is read from stdin "
        "with --password-stdin, else asked for.",
    )
    create_user.add_argument("--email", required=True)
    create_user.add_argument("--admin", action="store_true", help="the admin role (default: viewer)")
    create_user.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    create_user.set_defaults(run=_run_create_user)

    up = commands.add_parser(
        "up",
        help="run the whole pipeline on this machine (the emulator unless MASSIVE_API_KEY is set)",
        description="Run the emulator (without MASSIVE_API_KEY), MDL, MDP, WDS and SCP as supervised "
        "child processes: restarted with backoff when one exits, all stopped by Ctrl-C, their logs "
        "prefixed by name. RabbitMQ and Redis come from RABBITMQ_URL and REDIS_URL, or are started "
        "privately when nothing answers there. Prints the dashboard's URL and the admin login.",
    )
    _setting(up, "--mdp-replicas", "up_mdp_replicas", metavar="N")
    up.set_defaults(run=_run_up)

    settings = commands.add_parser(
        "settings",
        help="show the effective settings (secrets masked), or the documentation table",
        description="Print every setting's current value from the environment, secrets masked.",
    )
    settings.add_argument("--markdown", action="store_true", help="print the README's configuration table")
    settings.set_defaults(run=_run_settings)
    return parser


def _setting(parser: argparse.ArgumentParser, flag: str, field: str, **kw: Any) -> None:
    # No argparse type: the settings module validates the value, with the same message as from the env.
    parser.add_argument(flag, dest=field, default=None, help=f"overrides {field.upper()}", **kw)


def _overrides(args: argparse.Namespace, group: type) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k in group.model_fields and v is not None}


def _prepare(component: str, args: argparse.Namespace, *groups: type) -> list[Any]:
    """Load common settings and the component's groups, set up logging, register secrets.

    Returns ``[common, *groups]``; every group is loaded so that all bad variables are reported at once.
    """
    loaded: list[Any] = []
    errors: list[str] = []
    for group in (CommonSettings, *groups):
        try:
            production = bool(loaded) and loaded[0].mdpipe_env == "production"
            loaded.append(load(group, production=production, **_overrides(args, group)))
        except ConfigError as exc:
            errors.append(str(exc))
            if group is CommonSettings:
                break
    broker_error = loaded[0].broker_user_error() if MdqSettings in groups else None
    if broker_error:
        errors.insert(0, broker_error)
    if errors:
        raise ConfigError("\n".join(errors))
    for value in loaded:
        for name in type(value).model_fields:
            secret = getattr(value, name)
            if isinstance(secret, SecretStr):
                raw = secret.get_secret_value()
                for secret_part in url_secrets(raw) if "://" in raw else [raw]:
                    logs.register_secret(secret_part)
    logs.setup(component, loaded[0].log_level, loaded[0].log_format)
    return loaded


def _run_sim(args: argparse.Namespace) -> int:
    from sim.recording import RecordingError
    from sim.server import Emulator

    _, settings = _prepare("sim", args, SimSettings)

    async def serve(stop: asyncio.Event) -> int:
        try:
            emulator = Emulator(settings)
        except (RecordingError, OSError) as exc:
            print(f"mdpipe sim: cannot replay: {exc}", file=sys.stderr)
            return 1
        try:
            await emulator.start()
        except OSError as exc:
            print(f"mdpipe sim: cannot listen on {settings.sim_host}: {exc.strerror or exc}", file=sys.stderr)
            await emulator.stop()
            return 1
        await stop.wait()
        await emulator.stop()
        return 0

    return runtime.serve(serve)


def _run_mdl(args: argparse.Namespace) -> int:
    from mdc.connect import Target
    from mdl.listener import FatalFeedError, Listener

    common, feed, mdq, settings = _prepare("mdl", args, MassiveSettings, MdqSettings, MdlSettings)
    if feed.massive_api_key is None:
        raise ConfigError("invalid setting MASSIVE_API_KEY: not set (the emulator's key is SIM_API_KEY)")
    listener = Listener(
        feed,
        mdq,
        settings,
        rabbitmq_url=common.rabbitmq_url.get_secret_value(),
        redis_url=Target.from_settings(common),  # REDIS_CLUSTER_NODES: lease and control on a cluster
    )

    async def run(stop: asyncio.Event) -> int:
        try:
            await listener.run(stop)
        except FatalFeedError as exc:
            print(f"mdpipe mdl: {logs.scrub(str(exc))}", file=sys.stderr)
            return EXIT_CONFIG
        except OSError as exc:
            print(f"mdpipe mdl: cannot start: {exc}", file=sys.stderr)
            return 1
        return 0

    # Everything allocated so far lives as long as the process: keep the collector from walking it again,
    # and collect less often. The listener allocates a dict per event (hundreds of thousands a second);
    # with the default threshold (700) the collections cost 10-30% of its CPU at full rate.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    return runtime.serve(run)


def _run_mdp(args: argparse.Namespace) -> int:
    from mdc.connect import Target
    from mdp import plugins
    from mdp.service import ProcessorService

    common, mdq, mdc, settings, rest = _prepare(
        "mdp", args, MdqSettings, MdcSettings, MdpSettings, MassiveRestSettings
    )
    try:
        loaded = plugins.load(settings.plugin_names, settings)
    except plugins.PluginError as exc:
        raise ConfigError(f"invalid setting MDP_PLUGINS: {exc}") from None
    service = ProcessorService(
        mdq,
        mdc,
        settings,
        rabbitmq_url=common.rabbitmq_url.get_secret_value(),
        redis_url=Target.from_settings(common),  # REDIS_CLUSTER_NODES: a cluster
        plugins=loaded,
        rest=rest,
    )

    async def run(stop: asyncio.Event) -> int:
        try:
            await service.run(stop)
        except OSError as exc:
            print(f"mdpipe mdp: cannot start: {exc}", file=sys.stderr)
            return 1
        return 0

    gc.freeze()  # as for the listener: a dict per event, hundreds of thousands a second
    gc.set_threshold(20_000, 20, 20)
    return runtime.serve(run)


def _run_inspect(args: argparse.Namespace) -> int:
    from mdc import inspect as mdc_inspect
    from mdc.connect import Target

    common, mdc = _prepare("inspect", args, MdcSettings)
    out = mdc_inspect.Output(sys.stdout, sys.stderr, pretty=args.pretty)
    url, prefix = Target.from_settings(common), mdc.mdc_prefix  # REDIS_CLUSTER_NODES: a cluster
    return runtime.serve(
        lambda stop: mdc_inspect.run(args.what, vars(args), redis_url=url, prefix=prefix, out=out, stop=stop)
    )


def _run_wds(args: argparse.Namespace) -> int:
    from mdc.connect import Target
    from mdc.tradingday import TradingDay
    from mdpipe.rest import VendorRest
    from wds.server import Gateway

    common, mdc, settings, rest, day = _prepare(
        "wds", args, MdcSettings, WdsSettings, MassiveRestSettings, TradingDaySettings
    )
    gateway = Gateway(
        settings,
        mdc,
        redis_url=Target.from_settings(common),  # REDIS_CLUSTER_NODES: a cluster
        rest=VendorRest(rest),  # chart history; without MASSIVE_API_KEY it is off
        days=TradingDay(day.mdp_timezone, day.mdp_day_start),
    )

    async def run(stop: asyncio.Event) -> int:
        try:
            await gateway.run(stop)
        except OSError as exc:
            print(f"mdpipe wds: cannot listen: {exc.strerror or exc}", file=sys.stderr)
            return 1
        return 0

    return runtime.serve(run)


def _scp_config(args: argparse.Namespace) -> Any:
    from scp.web import Config

    common, market, mdc, mdq, scp, wds = _prepare("scp", args, MarketSettings, MdcSettings, MdqSettings,
                                                  ScpSettings, WdsSettings)  # fmt: skip
    return Config(common, scp, wds, market.massive_market, mdc, mdq)


def _run_scp(args: argparse.Namespace) -> int:
    from scp.server import serve

    return serve(_scp_config(args))


def _run_create_user(args: argparse.Namespace) -> int:
    from scp.server import create_user

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    return create_user(_scp_config(args), args.email, password, args.admin)


def _run_up(args: argparse.Namespace) -> int:
    from . import up

    loaded = _prepare("up", args, MassiveSettings, MdqSettings, MdlSettings, MdcSettings, MdpSettings,
                      WdsSettings, ScpSettings, SimSettings, UpSettings)  # fmt: skip
    common, massive, _, mdl, mdc, mdp, wds, scp, sim, up_settings = loaded
    config = up.Config(common, massive, mdl, mdp, wds, scp, sim, up_settings, mdc)
    errors = up.check_ports(config)
    if errors:
        raise ConfigError("\n".join(errors))
    return runtime.serve(lambda stop: up.run(config, stop))


def _run_token(args: argparse.Namespace) -> int:
    from wds.tokens import mint

    _, settings = _prepare("token", args, WdsSettings)
    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    try:
        token = mint(settings, args.subject, channels)
    except ValueError as exc:  # bad --subject or --channels: a one-line message, like a bad setting
        raise ConfigError(f"token: {exc}") from None
    print(token)
    return 0


def _run_record(args: argparse.Namespace) -> int:
    from massive.exceptions import AuthError

    from sim.recorder import record

    _, settings = _prepare("sim-record", args, MassiveSettings)

    async def run(stop: asyncio.Event) -> int:
        try:
            result = await record(
                args.output, settings, duration=args.duration, max_frames=args.frames, stop=stop
            )
        except (AuthError, ValueError, OSError) as exc:
            print(f"mdpipe sim record: {logs.scrub(str(exc))}", file=sys.stderr)
            return 1
        print(
            f"recorded {result.frames} frames ({result.dropped} dropped) "
            f"in {result.seconds:.1f}s to {args.output}"
        )
        return 0

    return runtime.serve(run)


def _run_fault(args: argparse.Namespace) -> int:
    from .up import local_host

    _, settings = _prepare("sim-fault", args, SimSettings)
    host = local_host(settings.sim_host)
    given = {"seconds": args.seconds, "status": args.status, "delay": args.delay}
    query = urllib.parse.urlencode({"name": args.name, **{k: v for k, v in given.items() if v is not None}})
    request = urllib.request.Request(
        f"http://{host}:{settings.sim_http_port}/faults?{query}",
        method="POST",
        headers={"Authorization": f"Bearer {settings.sim_api_key.get_secret_value()}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own http URL
            print(response.read().decode())
        return 0
    except urllib.error.HTTPError as exc:
        print(f"mdpipe sim fault: {exc.code} {exc.read().decode(errors='replace')}", file=sys.stderr)
    except OSError as exc:
        print(f"mdpipe sim fault: no emulator at {host}:{settings.sim_http_port} ({exc})", file=sys.stderr)
    return 1


def _run_settings(args: argparse.Namespace) -> int:
    from .settings import markdown_table

    if args.markdown:
        sys.stdout.write(markdown_table())
        return 0
    errors, current = [], {}
    for group in GROUPS:
        try:
            current.update(describe(load(group)))
        except ConfigError as exc:
            errors.append(str(exc))
    sys.stdout.write(orjson.dumps(current, option=orjson.OPT_INDENT_2).decode() + "\n")
    if errors:
        raise ConfigError("\n".join(errors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
