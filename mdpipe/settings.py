"""Every setting of mdpipe, each read from one environment variable.

This module is the only place configuration is declared. A field named ``sim_port`` is read from
``SIM_PORT``; its description is the documentation (``mdpipe settings --markdown`` prints the table the
README carries, and a test keeps the two equal). Settings are grouped by the component that reads them,
so a component validates only what it uses. ``load()`` turns a bad value into a ``ConfigError`` whose
message is one line per bad variable, and never echoes a secret.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import re
import zoneinfo
from typing import Annotated, ClassVar, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import massive

# The MDQ routing classes (mdq.topology.CLASSES; repeated here so settings import nothing heavy).
CLASS_NAMES = ("trades", "quotes", "aggregates", "halts", "imbalances", "values", "other")

DEV_SIM_API_KEY = "sim"  # development default of SIM_API_KEY; refused in production mode


def _known_market(value: str) -> str:
    if value not in massive.MARKETS:
        raise ValueError("must be one of " + ", ".join(massive.MARKETS))
    return value


MarketName = Annotated[str, AfterValidator(_known_market)]


class ConfigError(Exception):
    """A setting is invalid; the message names the variable and is safe to print."""


class _Group(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", validate_default=True)
    #: secrets whose development default production mode refuses
    dev_secrets: ClassVar[tuple[str, ...]] = ()
    #: who reads this group, for the documentation table
    readers: ClassVar[str] = ""

    def unused(self, name: str) -> bool:
        """Whether the setting ``name`` plays no part with the other values (then its default is fine)."""
        return False


class CommonSettings(_Group):
    """Read by every component."""

    readers = "all"

    mdpipe_env: Literal["development", "production"] = Field(
        "development",
        description="`production` refuses development defaults for secrets and credentials.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log threshold.")
    log_format: Literal["json", "text"] = Field(
        "json", description="`json`: one JSON object per line; `text`: for a terminal."
    )
    rabbitmq_url: SecretStr = Field(
        SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        description="RabbitMQ (MDQ) URL. The password is never logged.",
    )
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"), description="Redis (MDC) URL. The password is never logged."
    )

    redis_cluster_nodes: str = Field(
        "",
        description="Redis Cluster mode when set: seed nodes `host:port`, comma-separated (any reachable one "
        "is enough; the rest of the cluster is discovered). User, password and TLS come from REDIS_URL "
        "(database 0). Empty: one Redis (docs/cluster.md).",
    )

    @field_validator("redis_cluster_nodes")
    @classmethod
    def _cluster_nodes(cls, v: str) -> str:
        parse_nodes(v)
        return v

    @model_validator(mode="after")
    def _cluster_url(self) -> CommonSettings:
        if self.redis_cluster_nodes:
            parts = urlsplit(self.redis_url.get_secret_value())
            if parts.scheme == "unix" or parts.path not in ("", "/", "/0"):
                raise ValueError("REDIS_URL must be redis:// or rediss:// with database 0 in cluster mode")
        return self

    def redis_seeds(self) -> list[tuple[str, int]]:
        """The cluster's seed nodes (``REDIS_CLUSTER_NODES``); empty on one Redis."""
        return parse_nodes(self.redis_cluster_nodes)

    @field_validator("rabbitmq_url")
    @classmethod
    def _amqp_url(cls, v: SecretStr) -> SecretStr:
        _check_url(v.get_secret_value(), ("amqp", "amqps"))
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: SecretStr) -> SecretStr:
        _check_url(v.get_secret_value(), ("redis", "rediss", "unix"))
        return v

    def broker_user_error(self) -> str | None:
        """Production mode refuses RabbitMQ's default user, in the components that use the broker
        (``mdpipe mdl``, ``mdp``, ``scp``, ``up``: the ones that load ``MdqSettings``)."""
        if self.mdpipe_env == "production":
            parts = urlsplit(self.rabbitmq_url.get_secret_value())
            if (parts.username, parts.password) in (("guest", "guest"), (None, None)):
                return "invalid setting RABBITMQ_URL: production mode needs a RabbitMQ user other than guest"
        return None


class MarketSettings(_Group):
    """Which market the feed is: the listener's, the control plane's (which needs no vendor key), and the
    trading day's (processors and gateways: its default bounds)."""

    readers = "mdl, sim record, scp, mdp, wds"

    massive_market: MarketName = Field(
        "stocks", description="Market path: " + ", ".join(massive.MARKETS) + "."
    )


class MassiveKeySettings(_Group):
    """The vendor's API key: the data plane's alone (the listener's stream, the processors' and the
    gateways' REST calls), never the control plane's."""

    readers = "mdl, mdp, wds, sim record"

    massive_api_key: SecretStr | None = Field(
        None, description="Massive API key. Unset: `mdpipe up` runs the built-in emulator instead."
    )

    @field_validator("massive_api_key")
    @classmethod
    def _key(cls, v: SecretStr | None) -> SecretStr | None:
        return v if v is not None and v.get_secret_value().strip() else None


class MassiveSettings(MassiveKeySettings, MarketSettings):
    """The vendor connection: read by the listener (MDL) and by `mdpipe sim record`."""

    readers = "mdl, sim record"

    massive_feed: str = Field(
        "socket.massive.com",
        description="Feed host (`socket.massive.com`, `delayed.massive.com`, ...) or any `host:port`.",
    )
    massive_subscriptions: str = Field(
        "T.*,Q.*,A.*,AM.*,LULD.*,NOI.*",
        description="Comma-separated `EV.SYMBOL` subscriptions (`*` = every symbol).",
    )
    massive_tls: Literal["auto", "true", "false"] = Field(
        "auto", description="`auto`: TLS except for a loopback host (the emulator)."
    )

    @field_validator("massive_feed")
    @classmethod
    def _feed(cls, v: str) -> str:
        host, _, port = v.rpartition(":") if ":" in v else (v, "", "")
        if not host or any(c in host for c in "/ ?#@") or (port and not port.isdigit()):
            raise ValueError("must be a host name or host:port, without a scheme or path")
        return v

    @model_validator(mode="after")
    def _subscriptions(self) -> MassiveSettings:
        valid, invalid = massive.parse_subscriptions(self.massive_subscriptions, self.massive_market)
        if invalid or not valid:
            raise ValueError(
                "massive_subscriptions: "
                + (f"invalid for {self.massive_market}: {', '.join(invalid[:5])}" if invalid else "empty")
            )
        return self

    @property
    def secure(self) -> bool:
        if self.massive_tls != "auto":
            return self.massive_tls == "true"
        host = self.massive_feed.rsplit(":", 1)[0] if ":" in self.massive_feed else self.massive_feed
        return host not in ("127.0.0.1", "localhost", "::1", "[::1]")


class MassiveRestSettings(MassiveKeySettings):
    """The vendor's REST API (snapshots, previous closes, bars): read by the processors (hydration) and
    the gateways (chart history). Without `MASSIVE_API_KEY` nothing calls it."""

    readers = "mdp, wds"

    massive_rest_url: str = Field(
        "https://api.massive.com", description="REST API base URL (`mdpipe up` points it at the emulator)."
    )
    massive_rest_timeout_s: float = Field(
        10.0, gt=0, le=300, description="Connect and read timeout of one REST request, seconds."
    )
    massive_rest_retries: int = Field(
        2, ge=0, le=10, description="Retries of a request answered 429 or 5xx (the client's, with backoff)."
    )
    massive_rest_rate: float = Field(
        5.0,
        gt=0,
        le=1000,
        description="Most REST requests per second of one process (burst: one second's worth); "
        "`0.08` keeps under a 5-per-minute plan.",
    )
    massive_rest_backoff_max_s: float = Field(
        60.0, ge=1, le=3600, description="Longest wait before retrying a failed hydration or history fetch."
    )

    @field_validator("massive_rest_url")
    @classmethod
    def _rest_url(cls, v: str) -> str:
        _check_url(v, ("http", "https"))
        if urlsplit(v).path.strip("/") or urlsplit(v).query:
            raise ValueError("must be a base URL without a path or query")
        return v.rstrip("/")


class MdqSettings(_Group):
    """The queue contract: read by everything that declares, publishes to or consumes MDQ queues."""

    readers = "mdl, mdp"

    mdq_exchange: str = Field(
        "mdq",
        pattern=r"^[A-Za-z0-9_.:-]{1,100}$",
        description="Exchange name; queues are named after it (`mdq.trades`). One exchange per market.",
    )
    mdq_message_ttl_ms: int = Field(
        5000, ge=100, le=3_600_000, description="Queue `x-message-ttl`: a message older than this is dropped."
    )
    mdq_max_length: int = Field(
        10_000, ge=10, le=10_000_000, description="Queue `x-max-length` in messages; the oldest is dropped."
    )
    mdq_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024 * 1024,
        le=2**40,
        description="Queue `x-max-length-bytes` (message bodies); the oldest is dropped.",
    )
    mdq_shards: int = Field(
        1, ge=1, le=256, description="Shard queues per class (`mdq.trades.0` ...), chosen by symbol hash."
    )
    mdq_dead_max_length: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="Dead-letter queue (`mdq.dead`) length; oldest dropped.",
    )
    mdq_dead_ttl_ms: int = Field(
        86_400_000, ge=1000, le=30 * 86_400_000, description="How long a dead letter is kept, ms."
    )


class MdlSettings(_Group):
    """The listener (`mdpipe mdl`)."""

    readers = "mdl"

    mdl_http_host: str = Field("127.0.0.1", description="Address of `/metrics`, `/healthz`, `/readyz`.")
    mdl_http_port: int = Field(9101, ge=0, le=65535, description="Port of `/metrics`, `/healthz`, `/readyz`.")
    mdl_instance: str = Field(
        "", max_length=100, description="Instance id in message headers and status; empty = host:pid."
    )
    mdl_handoff_frames: int = Field(
        20_000,
        ge=10,
        le=10_000_000,
        description="Frames held between reading and publishing; oldest dropped.",
    )
    mdl_handoff_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1024 * 1024,
        le=2**36,
        description="Bytes held between reading and publishing; oldest dropped.",
    )
    mdl_batch_events: int = Field(
        2000, ge=1, le=100_000, description="Most events in one AMQP message when frames back up."
    )
    mdl_backoff_initial_s: float = Field(0.5, gt=0, le=60, description="First reconnect delay (jittered).")
    mdl_backoff_max_s: float = Field(30.0, gt=0, le=3600, description="Longest reconnect delay.")
    mdl_healthy_s: float = Field(
        30.0, gt=0, le=3600, description="A connection up this long resets the reconnect backoff."
    )
    mdl_tap_file: str = Field(
        "", description="Record every frame received to this recording (replay with `mdpipe sim --replay`)."
    )

    mdl_lease: bool = Field(
        True,
        description="Run as one of several replicas of a market: only the holder of the lease in Redis "
        "(`mdl:<market>:lease`) connects to the vendor and publishes, the others stand by to take over; "
        "`false` = always connect (one replica only). Without Redis there is no lease.",
    )
    mdl_lease_ttl_s: float = Field(
        1.5,
        ge=0.3,
        le=60,
        description="Lease TTL: a standby takes over at most this long (plus MDL_LEASE_RETRY_S) after the "
        "leader died; the leader renews every third of it and stops publishing a fifth of it early.",
    )
    mdl_lease_retry_s: float = Field(
        0.2, gt=0, le=10, description="How often a standby tries to take the lease, seconds."
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> MdlSettings:
        if self.mdl_backoff_max_s < self.mdl_backoff_initial_s:
            raise ValueError("mdl_backoff_max_s: must be at least MDL_BACKOFF_INITIAL_S")
        if self.mdl_lease_retry_s >= self.mdl_lease_ttl_s:
            raise ValueError("mdl_lease_retry_s: must be shorter than MDL_LEASE_TTL_S")
        return self


class MdcSettings(_Group):
    """The cache contract: read by everything that writes or reads market state in Redis."""

    readers = "mdp, wds, scp, inspect"

    mdc_prefix: str = Field(
        "md",
        pattern=r"^[A-Za-z0-9_.-]{1,50}$",
        description="Prefix of every market-state key and channel (`md:stats:{AAPL}`); one per market.",
    )
    mdc_recent_trades: int = Field(100, ge=1, le=1000, description="Recent trades kept per symbol.")
    mdc_minute_bars: int = Field(
        960, ge=1, le=100_000, description="Minute bars kept per symbol (960 = 04:00 to 20:00)."
    )
    mdc_feed_length: int = Field(
        200, ge=1, le=100_000, description="Entries kept in the `halts` and `alerts` feeds."
    )
    mdc_raw_events: int = Field(
        100, ge=1, le=100_000, description="Raw events kept per event type for inspection (`other`)."
    )
    mdc_raw_ttl_s: int = Field(300, ge=1, le=86_400, description="How long raw events are kept, seconds.")
    mdc_state_ttl_s: int = Field(
        3 * 86_400,
        ge=60,
        le=365 * 86_400,
        description="A symbol's keys expire this long after their last update, seconds.",
    )
    mdc_history_bars: int = Field(
        2000,
        ge=1,
        le=100_000,
        description="Minute bars of chart history kept per symbol (the day and the previous trading day, "
        "from the vendor's REST API).",
    )
    mdc_history_ttl_s: int = Field(
        3600,
        ge=60,
        le=7 * 86_400,
        description="A symbol's chart history is fetched again this long after it was, seconds.",
    )
    mdc_history_miss_ttl_s: int = Field(
        60,
        ge=1,
        le=86_400,
        description="A symbol the vendor has no bars for is not asked about again for this long, seconds.",
    )
    mdc_signal_recent: int = Field(
        20, ge=1, le=1000,
        description="Newest updates kept per `signals.*` channel for its snapshot.",
    )  # fmt: skip
    mdc_signal_ttl_s: int = Field(
        86_400, ge=1, le=30 * 86_400,
        description="How long a `signals.*` channel's newest updates are kept after the newest, seconds.",
    )  # fmt: skip


#: The trading day of each market, unless MDP_TIMEZONE / MDP_DAY_START say otherwise: (time zone, start).
#: Crypto trades around the clock (the UTC date); forex's day turns at 17:00 New York; the others' at 04:00
#: New York, the US pre-market (futures included: their exchanges' 18:00 session start is not used yet).
MARKET_DAYS: dict[str, tuple[str, str]] = {
    "crypto": ("UTC", "00:00"),
    "forex": ("America/New_York", "17:00"),
}
DEFAULT_DAY = ("America/New_York", "04:00")


class TradingDaySettings(MarketSettings):
    """The trading day (`mdc.tradingday`): where the processors reset the day stats, and which days of bars
    the gateways ask the vendor for as chart history. Its defaults follow MASSIVE_MARKET."""

    readers = "mdp, wds"

    mdp_timezone: str = Field(
        "",
        description="Time zone of the trading day (day stats reset at its start). Empty: the market's "
        "(MASSIVE_MARKET): `UTC` for crypto, `America/New_York` for the others.",
    )
    mdp_day_start: str = Field(
        "",
        description="Local time (HH:MM) the trading day starts; day stats reset then. Empty: the market's: "
        "`00:00` crypto, `17:00` forex, `04:00` the others.",
    )

    @field_validator("mdp_timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        if not v:
            return v
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("is not a known IANA time zone") from None
        return v

    @field_validator("mdp_day_start")
    @classmethod
    def _day_start(cls, v: str) -> str:
        if not v:
            return v
        try:
            dt.time.fromisoformat(v)
        except ValueError:
            raise ValueError("must be a time of day, HH:MM") from None
        return v

    @model_validator(mode="after")
    def _market_day(self) -> TradingDaySettings:
        """An empty MDP_TIMEZONE or MDP_DAY_START takes the market's (``MARKET_DAYS``)."""
        self.mdp_timezone, self.mdp_day_start = self.trading_day()
        return self

    def trading_day(self) -> tuple[str, str]:
        """(time zone, start) of the trading day: the settings', else the market's; also for settings
        made without validation (``model_construct``)."""
        timezone, start = MARKET_DAYS.get(self.massive_market, DEFAULT_DAY)
        return self.mdp_timezone or timezone, self.mdp_day_start or start


class MdpSettings(TradingDaySettings):
    """The processors (`mdpipe mdp`)."""

    readers = "mdp"

    mdp_classes: str = Field(
        ",".join(CLASS_NAMES),
        description="MDQ classes (`trades`) or shards (`trades.0`) to consume, comma-separated.",
    )
    mdp_prefetch: int = Field(
        64, ge=1, le=10_000, description="Unacknowledged messages per queue (held in memory at most)."
    )
    mdp_group_events: int = Field(
        10_000,
        ge=0,
        le=1_000_000,
        description="Messages already waiting in a queue are folded together up to this many events "
        "(0: one message at a time).",
    )
    mdp_http_host: str = Field("127.0.0.1", description="Address of `/metrics`, `/healthz`, `/readyz`.")
    mdp_http_port: int = Field(9102, ge=0, le=65535, description="Port of `/metrics`, `/healthz`, `/readyz`.")
    mdp_instance: str = Field("", max_length=100, description="Instance id in heartbeats; empty = host:pid.")
    mdp_leaders_n: int = Field(20, ge=1, le=500, description="Rows in each leaderboard.")
    mdp_leaders_interval_s: float = Field(
        1.0, ge=0.05, le=60, description="Leaderboards are published at most once per interval, all replicas."
    )
    mdp_max_symbols: int = Field(
        200_000,
        ge=1_000,
        le=10_000_000,
        description="Symbols whose state a processor holds in memory (about 2 KB each); past it the "
        "first loaded are dropped and loaded again from Redis when they come back.",
    )
    mdp_trade_exclude_conditions: str = Field(
        "2,7,13,15,16,20,21,22,29,32,37,52,53",
        description="Trade conditions that do not set last, high or low (volume still counts).",
    )
    mdp_halt_indicators: str = Field(
        "15", description="LULD indicators that mean trading is halted or paused."
    )
    mdp_alert_warmup_s: float = Field(
        300.0,
        ge=0,
        le=86_400,
        description="Event time after a symbol's first event of the day before "
        "new-high and new-low alerts, seconds.",
    )
    mdp_alert_cooldown_s: float = Field(
        60.0, ge=0, le=86_400, description="Least event time between two alerts of one kind for a symbol."
    )
    mdp_spike_ratio: float = Field(
        5.0, gt=1, le=1000, description="Volume-spike alert: minute volume over its running average."
    )
    mdp_spike_min_volume: int = Field(
        10_000, ge=0, le=10**12, description="Volume-spike alert: least minute volume."
    )
    mdp_plugins: str = Field(
        "momentum",
        description="Extra processors: entry points (`mdpipe.processors`) or `module:Class`, comma list.",
    )
    mdp_hydrate: bool = Field(
        True,
        description="Hydrate the state from the vendor's REST snapshot (at start, on a takeover, a vendor "
        "reconnect, lost messages and a new day); needs `MASSIVE_API_KEY`.",
    )
    mdp_hydrate_interval_s: float = Field(
        2.0,
        ge=0.1,
        le=3600,
        description="Least time between two hydrations of one processor, seconds (what asks for one "
        "meanwhile is served by the next).",
    )

    @field_validator("mdp_classes")
    @classmethod
    def _classes(cls, v: str) -> str:
        parts = [p.strip() for p in v.split(",") if p.strip()]
        bad = [p for p in parts if p.split(".")[0] not in CLASS_NAMES or not _shard_suffix_ok(p)]
        if bad or not parts:
            raise ValueError("must name classes among " + ", ".join(CLASS_NAMES) + " (or `class.N` shards)")
        return ",".join(parts)

    @field_validator("mdp_trade_exclude_conditions", "mdp_halt_indicators")
    @classmethod
    def _int_list(cls, v: str) -> str:
        if not all(p.strip().isdigit() for p in v.split(",") if p.strip()):
            raise ValueError("must be comma-separated integers")
        return v

    @field_validator("mdp_plugins")
    @classmethod
    def _plugins(cls, v: str) -> str:
        if not all(
            re.fullmatch(r"[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?", p.strip()) for p in v.split(",") if p.strip()
        ):
            raise ValueError("must be entry-point names or module:Class, comma-separated")
        return v

    @property
    def class_list(self) -> list[str]:
        return self.mdp_classes.split(",")

    @property
    def exclude_conditions(self) -> frozenset[int]:
        return _ints(self.mdp_trade_exclude_conditions)

    @property
    def halt_indicators(self) -> frozenset[int]:
        return _ints(self.mdp_halt_indicators)

    @property
    def plugin_names(self) -> list[str]:
        return [p.strip() for p in self.mdp_plugins.split(",") if p.strip()]


DEV_WDS_TOKEN_SECRET = "mdpipe-development-token-secret-not-for-production"  # noqa: S105 - refused in production


class WdsSettings(_Group):
    """The widget data service (`mdpipe wds`) and the tokens it accepts (`mdpipe token`, the SCP)."""

    readers = "wds, token, scp"
    dev_secrets = ("wds_token_secret",)

    wds_host: str = Field("127.0.0.1", description="Address WDS binds (`ws://HOST:PORT/ws`).")
    wds_port: int = Field(8780, ge=0, le=65535, description="WebSocket port.")
    wds_http_host: str = Field("127.0.0.1", description="Address of `/metrics`, `/healthz`, `/readyz`.")
    wds_http_port: int = Field(9103, ge=0, le=65535, description="Port of `/metrics`, `/healthz`, `/readyz`.")
    wds_instance: str = Field("", max_length=100, description="Instance id in heartbeats; empty = host:pid.")
    wds_token_algorithm: Literal["HS256", "RS256"] = Field(
        "HS256", description="Token signature: `HS256` (shared secret) or `RS256` (key pair)."
    )
    wds_token_secret: SecretStr = Field(
        SecretStr(DEV_WDS_TOKEN_SECRET),
        description="HS256 secret shared by the token issuers and WDS, at least 32 characters. "
        "Development default; production mode needs its own.",
    )
    wds_token_public_key: str = Field("", description="RS256: PEM public key file that verifies tokens.")
    wds_token_private_key: str = Field(
        "", description="RS256: path of the PEM private key that signs tokens (issuers only, never WDS)."
    )
    wds_token_audience: str = Field("mdpipe-wds", min_length=1, description="Token `aud` claim required.")
    wds_token_issuer: str = Field("mdpipe", min_length=1, description="Token `iss` claim required.")
    wds_token_ttl_s: int = Field(900, ge=10, le=86_400, description="Lifetime of minted tokens, seconds.")
    wds_token_max_ttl_s: int = Field(
        86_400, ge=10, le=31 * 86_400, description="Tokens living longer (`exp` - `iat`) are refused."
    )
    wds_auth_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Seconds a client without `?token=` has to send its auth frame."
    )
    wds_allowed_origins: str = Field(
        "http://127.0.0.1:8000,http://localhost:8000",
        description="Browser `Origin`s allowed, comma-separated; `*` = any. Clients without Origin (bots) "
        "are allowed.",
    )
    wds_max_frame_bytes: int = Field(
        16_384, ge=256, le=1_048_576, description="Largest frame accepted from a client, bytes."
    )
    wds_max_subscriptions: int = Field(500, ge=1, le=100_000, description="Channels per client.")
    wds_actions_per_s: float = Field(
        20.0, gt=0, le=10_000, description="Client actions per second (token bucket, burst of 2 s)."
    )
    wds_connections_per_token: int = Field(
        20, ge=1, le=100_000, description="Connections one token may hold open on one WDS process."
    )
    wds_ping_interval_s: float = Field(20.0, ge=1, le=600, description="Seconds between server pings.")
    wds_ping_timeout_s: float = Field(
        20.0, ge=1, le=600, description="A client that does not answer a ping this long is closed."
    )
    wds_client_buffer_bytes: int = Field(
        1_048_576,
        ge=65_536,
        le=256 * 1_048_576,
        description="Outbound bytes of updates queued per client (conflated per channel); beyond, or 16 "
        "times that with the snapshots and replies: closed.",
    )
    wds_slow_close_s: float = Field(
        10.0, gt=0, le=600, description="A client taking no data this long while some waits is closed."
    )
    wds_message_bytes: int = Field(
        65_536, ge=1024, le=16 * 1_048_576, description="Most bytes of updates in one outbound message."
    )
    wds_snapshot_minute_bars: int = Field(
        1920,
        ge=1,
        le=100_000,
        description="Minute bars in a `bars.SYM` snapshot (the newest, history included; 1920 = two days "
        "of 04:00 to 20:00).",
    )
    wds_history_wait_s: float = Field(
        3.0,
        ge=0,
        le=60,
        description="Longest wait for a symbol's chart history from the vendor before its `bars.SYM` "
        "snapshot goes without it (a fresh one follows when it comes), seconds.",
    )

    @field_validator("wds_token_secret")
    @classmethod
    def _secret(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return v

    @model_validator(mode="after")
    def _ttl_within_max(self) -> WdsSettings:
        if self.wds_token_ttl_s > self.wds_token_max_ttl_s:
            raise ValueError("wds_token_ttl_s: above WDS_TOKEN_MAX_TTL_S; minted tokens would be refused")
        return self

    def unused(self, name: str) -> bool:
        return name == "wds_token_secret" and self.wds_token_algorithm == "RS256"  # noqa: S105

    @property
    def origins(self) -> list[str] | None:
        """The allowed Origins, None for any."""
        items = [o.strip().rstrip("/") for o in self.wds_allowed_origins.split(",") if o.strip()]
        return None if "*" in items else items


DEV_SCP_SESSION_SECRET = "mdpipe-development-session-secret-not-for-production"  # noqa: S105 - refused in production


class ScpSettings(_Group):
    """The control plane (`mdpipe scp`): users, the dashboard and the REST API."""

    readers = "scp"
    dev_secrets = ("scp_session_secret",)

    scp_host: str = Field("127.0.0.1", description="Address SCP binds (`http://HOST:PORT/`).")
    scp_port: int = Field(8000, ge=0, le=65535, description="HTTP port of the dashboard and `/api`.")
    scp_workers: int = Field(2, ge=1, le=64, description="WSGI worker processes (gunicorn).")
    scp_threads: int = Field(4, ge=1, le=256, description="Threads per worker.")
    pydal_uri: SecretStr = Field(
        SecretStr("sqlite://scp.sqlite"),
        description="Users database (pyDAL URI): `sqlite://scp.sqlite` (in `SCP_DATA_DIR`), "
        "`postgres://user:pass@host/db`. The password is never logged.",
    )
    scp_data_dir: str = Field(
        ".mdpipe/scp", description="Writable folder: the SQLite file (if used) and py4web's working files."
    )
    scp_db_wait_s: float = Field(
        60.0, ge=0, le=3600, description="At start, wait this long for the database to answer, seconds."
    )
    scp_session_secret: SecretStr = Field(
        SecretStr(DEV_SCP_SESSION_SECRET),
        description="Signs session cookies, at least 32 characters. Development default; production mode "
        "needs its own.",
    )
    scp_session_ttl_s: int = Field(
        8 * 3600, ge=60, le=30 * 86_400, description="A login lasts this long without activity, seconds."
    )
    scp_secure_cookies: Literal["auto", "true", "false"] = Field(
        "auto", description="`Secure` session cookies (HTTPS only); `auto`: in production mode."
    )
    scp_registration: bool = Field(False, description="Open registration (new users are viewers).")
    scp_admin_email: str = Field("", description="First admin, created at start when no admin exists.")
    scp_admin_password: SecretStr = Field(
        SecretStr(""), description="Password of `SCP_ADMIN_EMAIL` (at least 12 characters)."
    )
    scp_admin_password_file: str = Field(
        "",
        description="A file holding the password of `SCP_ADMIN_EMAIL`, instead of `SCP_ADMIN_PASSWORD` "
        "(keeps it out of the environment; `mdpipe up` uses it).",
    )
    scp_login_attempts: int = Field(
        5,
        ge=1,
        le=1000,
        description="Failed logins per minute allowed per account and client address (5 times as many per "
        "address, whatever the account); never a lock of the account for every address.",
    )
    scp_trusted_proxies: str = Field(
        "",
        description="Addresses or CIDRs of reverse proxies (comma-separated) whose `X-Forwarded-For` gives "
        "the client's address; empty = the connection's peer is the client.",
    )
    scp_wds_url: str = Field(
        "", description="WebSocket URL browsers use for WDS; empty = `ws://<SCP's host>:WDS_PORT/ws`."
    )
    scp_viewer_channels: str = Field(
        "*", description="Channels (patterns, comma-separated) a viewer's WDS tokens allow; admins: `*`."
    )
    scp_viewer_token_max_s: int = Field(
        3600, ge=60, le=31 * 86_400, description="Longest WDS token a viewer may mint, seconds."
    )
    scp_api_token_max_days: int = Field(
        365, ge=1, le=3650, description="Longest lifetime of an API token, days."
    )
    scp_watchlist: str = Field(
        "AAPL,MSFT,NVDA,AMZN,TSLA", description="Default watchlist of the dashboard, comma-separated."
    )

    @field_validator("scp_session_secret")
    @classmethod
    def _session_secret(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return v

    @field_validator("scp_admin_password")
    @classmethod
    def _admin_password(cls, v: SecretStr) -> SecretStr:
        if v.get_secret_value() and len(v.get_secret_value()) < 12:
            raise ValueError("must be at least 12 characters")
        return v

    @field_validator("pydal_uri")
    @classmethod
    def _db_uri(cls, v: SecretStr) -> SecretStr:
        scheme = v.get_secret_value().partition("://")[0]
        if scheme not in ("sqlite", "postgres", "postgres:psycopg2", "postgres:pg8000", "mysql"):
            raise ValueError("must be a sqlite://, postgres:// or mysql:// pyDAL URI")
        return v

    @field_validator("scp_viewer_channels", "scp_watchlist")
    @classmethod
    def _list(cls, v: str) -> str:
        if not [p for p in v.split(",") if p.strip()]:
            raise ValueError("must name at least one")
        return v

    @field_validator("scp_trusted_proxies")
    @classmethod
    def _proxies(cls, v: str) -> str:
        for item in (p.strip() for p in v.split(",")):
            if item:
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(f"not an address or CIDR: {item[:60]}") from None
        return v

    @model_validator(mode="after")
    def _admin_pair(self) -> ScpSettings:
        if self.scp_admin_password_file and not self.scp_admin_password.get_secret_value():
            try:
                with open(self.scp_admin_password_file) as fh:
                    password = fh.read().strip()
            except OSError as exc:
                raise ValueError(f"scp_admin_password_file: cannot read it ({exc.strerror})") from None
            if len(password) < 12:
                raise ValueError("scp_admin_password_file: the password must be at least 12 characters")
            self.scp_admin_password = SecretStr(password)
        if bool(self.scp_admin_email) != bool(self.scp_admin_password.get_secret_value()):
            raise ValueError("scp_admin_email: give SCP_ADMIN_EMAIL and SCP_ADMIN_PASSWORD together")
        return self

    @property
    def viewer_channels(self) -> list[str]:
        return [p.strip() for p in self.scp_viewer_channels.split(",") if p.strip()]

    @property
    def watchlist(self) -> list[str]:
        return [p.strip() for p in self.scp_watchlist.split(",") if p.strip()]


def _ints(v: str) -> frozenset[int]:
    return frozenset(int(p) for p in v.split(",") if p.strip())


def _shard_suffix_ok(name: str) -> bool:
    _, dot, shard = name.partition(".")
    return not dot or (shard.isdigit() and int(shard) < 256)


_TICK_MS = (10, 20, 25, 50, 100, 125, 200, 250, 500, 1000)


class SimSettings(_Group):
    """The Massive emulator (`mdpipe sim`)."""

    readers = "sim"
    dev_secrets = ("sim_api_key",)

    sim_host: str = Field("127.0.0.1", description="Address the emulator binds (WebSocket and HTTP).")
    sim_port: int = Field(8765, ge=0, le=65535, description="WebSocket port (`ws://HOST:PORT/<market>`).")
    sim_http_port: int = Field(
        9100,
        ge=0,
        le=65535,
        description="HTTP port: `/metrics`, `/healthz`, `/readyz`, `/faults` and the vendor's REST API "
        "(`/v2/snapshot/...`, `/v2/aggs/...`, `/v1/marketstatus/now`).",
    )
    sim_api_key: SecretStr = Field(
        SecretStr(DEV_SIM_API_KEY),
        description="Key clients must send. Development default `sim`; production mode needs its own.",
    )
    sim_market: MarketName = Field(
        "stocks",
        description="Market path served, and the synthetic data of that market (stocks, options, crypto, "
        "forex, indices; the futures paths serve the stocks data): docs/emulator.md.",
    )
    sim_seed: int = Field(1, description="Random seed: the same seed and start give the same events.")
    sim_symbols: int = Field(3000, ge=1, le=20000, description="Number of symbols in the synthetic universe.")
    sim_rate: int = Field(
        5000,
        ge=0,
        le=2_000_000,
        description="Trades and quotes per second; `0` = flat-out (pre-encoded pool).",
    )
    sim_tick_ms: int = Field(50, description="Generation tick in ms (divides 1000).")
    sim_frame_events: int = Field(100, ge=1, le=10000, description="Most events in one frame.")
    sim_start: str = Field(
        "", description="Market clock start, ISO-8601 (e.g. `2026-11-20T14:30:00Z`); empty = now."
    )
    sim_send_ts: bool = Field(
        False, description="Add `_st` (emulator send time, ns) to every event, for latency measurement."
    )
    sim_auth_timeout: float = Field(10.0, gt=0, le=600, description="Seconds a client has to authenticate.")
    sim_max_connections: int = Field(
        1, ge=0, le=1000, description="Connections per market before the oldest is closed; `0` = unlimited."
    )
    sim_buffer_frames: int = Field(
        4096, ge=16, le=1_000_000, description="Frames a client may lag before `slow_consumer` and close."
    )
    sim_pool_events: int = Field(
        200_000, ge=1000, le=10_000_000, description="Events pre-generated for flat-out mode."
    )
    sim_replay: str = Field(
        "", description="Recording to replay instead of synthetic data; empty = synthetic."
    )
    sim_replay_speed: float = Field(
        1.0, ge=0, le=10000, description="Replay speed: 1 = real time, 0 = flat-out."
    )
    sim_max_client_frame: int = Field(
        65536, ge=1024, le=16 * 1024 * 1024, description="Largest frame accepted from a client, bytes."
    )
    sim_speed: float = Field(
        1.0,
        ge=1,
        le=1000,
        description="Synthetic paced market: market time runs this many times faster than wall time "
        "(`SIM_RATE` counts events per market second).",
    )
    sim_start_paused: bool = Field(
        False,
        description="Start with the paced market paused: nothing is generated until the `resume` fault "
        "(`POST /faults?name=resume`).",
    )
    sim_rest_rate: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="REST requests per minute per key (a minute's worth may come at once), then 429; "
        "`0` = no limit.",
    )

    @field_validator("sim_tick_ms")
    @classmethod
    def _tick(cls, v: int) -> int:
        if v not in _TICK_MS:
            raise ValueError("must divide 1000: one of " + ", ".join(map(str, _TICK_MS)))
        return v

    @field_validator("sim_start")
    @classmethod
    def _start(cls, v: str) -> str:
        if v:
            parse_start(v)
        return v

    @model_validator(mode="after")
    def _ring_holds_two_ticks(self) -> SimSettings:
        # A tick's frames land in the ring at once: a ring smaller than that would close every client
        # as a slow consumer, however fast it reads. Worst case per tick: the trades and quotes, plus
        # a second bar and a minute bar for every symbol.
        if self.sim_rate and not self.sim_replay:
            events = self.sim_rate * self.sim_tick_ms / 1000 + 2 * self.sim_symbols
            need = 2 * math.ceil(events / self.sim_frame_events)
            if self.sim_buffer_frames < need:
                raise ValueError(f"sim_buffer_frames: must hold two ticks of frames here, at least {need}")
        return self

    def start_ms(self, now_ms: int) -> int:
        """The market clock's start in epoch ms, floored to a whole second."""
        ms = parse_start(self.sim_start) if self.sim_start else now_ms
        return ms - ms % 1000


def parse_start(value: str) -> int:
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("must be an ISO-8601 date and time such as 2026-11-20T14:30:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def parse_nodes(value: str) -> list[tuple[str, int]]:
    """``"10.0.0.1:7000, redis-0.redis:6379"`` -> ``[("10.0.0.1", 7000), ("redis-0.redis", 6379)]``."""
    nodes = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        host, colon, port = item.rpartition(":")
        host = host.strip("[]")
        if not (colon and host and port.isdigit() and 0 < int(port) < 65536) or not re.fullmatch(
            r"[A-Za-z0-9.:_-]{1,253}", host
        ):
            raise ValueError(f"{item[:80]!r} is not host:port")
        nodes.append((host, int(port)))
    if len(nodes) > 64:
        raise ValueError("at most 64 seed nodes")
    return nodes


def _check_url(url: str, schemes: tuple[str, ...]) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in schemes or not (parts.hostname or parts.scheme == "unix"):
        raise ValueError(f"must be a {' or '.join(s + '://' for s in schemes)} URL with a host")


class UpSettings(_Group):
    """`mdpipe up`: the whole pipeline on one machine, each component a supervised child process."""

    readers = "up"

    up_mdp_replicas: int = Field(1, ge=1, le=16, description="MDP processes to run (`mdp-1` ...).")
    up_dir: str = Field(
        ".mdpipe/up", description="Folder of the admin login `mdpipe up` created (`admin.json`, mode 0600)."
    )
    up_private_services: Literal["auto", "never"] = Field(
        "auto",
        description="`auto`: when RabbitMQ or Redis does not answer at its URL and its server is installed, "
        "start a private one in a temporary folder; `never`: fail instead.",
    )
    up_restart_max_s: float = Field(
        30.0, ge=1, le=600, description="Longest wait before restarting a component that exited."
    )
    up_examples: bool = Field(
        False,
        description="Also run the example services of `examples/` (a checkout's): the breakouts signal "
        "worker, publishing as a Redis user of its own.",
    )


GROUPS: tuple[type[_Group], ...] = (
    CommonSettings,
    MarketSettings,
    MassiveKeySettings,
    MassiveSettings,
    MassiveRestSettings,
    MdqSettings,
    MdlSettings,
    MdcSettings,
    TradingDaySettings,
    MdpSettings,
    WdsSettings,
    ScpSettings,
    SimSettings,
    UpSettings,
)

G = TypeVar("G", bound=_Group)


def load(group: type[G], *, production: bool = False, **overrides: object) -> G:
    """Read ``group`` from the environment (``overrides`` win, None means not given), or raise ConfigError.

    ``production`` (from CommonSettings.mdpipe_env) refuses the development default of every secret.
    """
    try:
        settings = group(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(group, err) for err in exc.errors())) from None
    if production:
        for name in group.dev_secrets:
            default = group.model_fields[name].default
            if getattr(settings, name) == default and not settings.unused(name):
                raise ConfigError(f"invalid setting {name.upper()}: production mode needs a value of its own")
    return settings


def _describe(group: type[_Group], err: dict) -> str:
    loc = [str(x) for x in err.get("loc", ()) if x != "__root__"]
    msg = str(err.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    field = loc[0] if loc else ""
    value = err.get("input", _MISSING)
    if not field and ": " in msg:  # a model validator names its field first; its input is every field
        field, msg = msg.split(": ", 1)
        value = value.get(field, _MISSING) if isinstance(value, dict) else _MISSING
    name = field.upper() or group.__name__
    info = group.model_fields.get(field)
    secret = info is not None and "SecretStr" in str(info.annotation)
    shown = "" if secret or value is _MISSING else f"={_short(value)}"
    return f"invalid setting {name}{shown}: {msg}"


_MISSING = object()


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def markdown_table() -> str:
    """The README's configuration table, generated from the fields above."""
    lines = ["| Variable | Default | Read by | Meaning |", "| --- | --- | --- | --- |"]
    seen: set[str] = set()
    for group in GROUPS:
        for name, info in group.model_fields.items():
            if name in seen:  # inherited from a group listed before
                continue
            seen.add(name)
            default = info.default
            if isinstance(default, SecretStr):
                default = default.get_secret_value()
            if default is None or default == "":
                shown = "(empty)"
            else:
                shown = f"`{str(default).lower() if isinstance(default, bool) else default}`"
            if name in group.dev_secrets:
                shown += " (development only)"
            lines.append(f"| `{name.upper()}` | {shown} | {group.readers} | {info.description or ''} |")
    return "\n".join(lines) + "\n"


def describe(settings: _Group) -> dict[str, object]:
    """Current values with secrets masked and URL passwords removed, for `mdpipe settings`."""
    out: dict[str, object] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            raw = value.get_secret_value()
            value = mask_url(raw) if "://" in raw else "***"
        out[name.upper()] = value
    return out


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, in the user part and in a ``password=`` query."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query_secret = any(k.lower() == "password" for k, _ in pairs)
    if parts.password is None and not query_secret:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    query = "&".join(f"{k}=***" if k.lower() == "password" else f"{k}={v}" for k, v in pairs)
    return parts._replace(netloc=netloc, query=query if query_secret else parts.query).geturl()


def url_secrets(url: str) -> list[str]:
    """The passwords in ``url`` (user part and ``password=`` query), to keep out of the logs."""
    parts = urlsplit(url)
    found = [parts.password] if parts.password else []
    return found + [v for k, v in parse_qsl(parts.query) if k.lower() == "password" and v]
