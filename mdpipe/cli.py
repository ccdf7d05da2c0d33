"""The ``mdpipe`` command: one subcommand per component, ``--help`` on each.

Command-line options are shortcuts for settings: ``mdpipe sim --port 9000`` is ``SIM_PORT=9000 mdpipe
sim``, validated the same way. A bad setting prints one line naming its variable and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
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
from .settings import GROUPS, CommonSettings, ConfigError, MassiveSettings, SimSettings, describe, load

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
    fault.add_argument("--seconds", type=float, default=5.0, help="stall length (default 5)")
    fault.set_defaults(run=_run_fault)

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


def _prepare(component: str, group: type, args: argparse.Namespace):
    """Load common settings and the component's group, set up logging, register secrets."""
    common = load(CommonSettings)
    settings = load(group, production=common.mdpipe_env == "production", **_overrides(args, group))
    for value in (common, settings):
        for name in type(value).model_fields:
            secret = getattr(value, name)
            if isinstance(secret, SecretStr):
                raw = secret.get_secret_value()
                logs.register_secret(urllib.parse.urlsplit(raw).password if "://" in raw else raw)
    logs.setup(component, common.log_level, common.log_format)
    return settings


def _run_sim(args: argparse.Namespace) -> int:
    from sim.recording import RecordingError
    from sim.server import Emulator

    settings: SimSettings = _prepare("sim", SimSettings, args)

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


def _run_record(args: argparse.Namespace) -> int:
    from massive.exceptions import AuthError

    from sim.recorder import record

    settings: MassiveSettings = _prepare("sim-record", MassiveSettings, args)

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
    settings: SimSettings = _prepare("sim-fault", SimSettings, args)
    host = settings.sim_host if settings.sim_host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    query = urllib.parse.urlencode({"name": args.name, "seconds": args.seconds})
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
