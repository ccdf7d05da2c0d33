"""The processors' Prometheus metrics (process-wide, as Prometheus expects)."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("mdpipe_mdp_events_total", "Events applied to Redis, by fold", ["fold"])
INVALID = Counter(
    "mdpipe_mdp_invalid_events_total", "Events refused (dead-lettered), by MDQ class", ["class"]
)
MESSAGES = Counter(
    "mdpipe_mdp_messages_total",
    "MDQ messages, by result",
    ["result"],  # applied, duplicate (already applied: a redelivery), retried, stale, malformed, failed
)
DEAD_LETTERS = Counter(
    "mdpipe_mdp_dead_letters_total",
    "Messages or parts of messages sent to the dead-letter queue, by reason",
    ["reason"],  # malformed (not an MDQ message), invalid_events, failed (a processor error)
)
DEAD_LETTERS_LOST = Counter(
    "mdpipe_mdp_dead_letters_lost_total", "Invalid events that could not be dead-lettered (broker away)"
)
SYMBOLS_HELD = Gauge("mdpipe_mdp_symbols_held", "Symbols whose state this processor holds in memory")
SYMBOLS_LOADED = Counter(
    "mdpipe_mdp_symbols_loaded_total",
    "Symbols whose state was loaded from Redis (a start, a takeover, a reload after a failed write)",
)
PUBLISHED = Counter("mdpipe_mdp_updates_published_total", "Updates published on per-symbol channels")
REDIS_ERRORS = Counter("mdpipe_mdp_redis_errors_total", "Redis calls that failed, by kind", ["kind"])
GROUP_MESSAGES = Histogram(
    "mdpipe_mdp_group_messages",
    "Messages folded together into one group (one Redis transaction)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
BATCH_SECONDS = Histogram(
    "mdpipe_mdp_batch_seconds",
    "From a group of messages planned to its Redis writes done",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
MESSAGE_AGE = Histogram(
    "mdpipe_mdp_message_age_seconds",
    "From the listener reading the first event of a message to the processor writing it",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LEADERS = Counter("mdpipe_mdp_leaderboards_published_total", "Leaderboards published by this replica")
PLUGIN_ERRORS = Gauge(
    "mdpipe_mdp_plugin_errors", "Plug-in failures and refused outputs, by plug-in", ["plugin"]
)
BROKER_CONNECTED = Gauge("mdpipe_mdp_broker_connected", "1 while connected to RabbitMQ")
REDIS_OK = Gauge("mdpipe_mdp_redis_ok", "1 while the last Redis call succeeded")
UNREPLICATED = Counter(
    "mdpipe_mdp_unreplicated_groups_total",
    "Groups written on a Redis Cluster that some master acknowledged before a replica held them (its WAIT "
    "timed out, or it had no replica): a kill -9 of that master before it replicates may lose them",
)

#: The children the hot path counts with, looked up once (``labels()`` costs a dictionary and a lock).
APPLIED = MESSAGES.labels("applied")
EVENTS_BY_FOLD = {
    fold: EVENTS.labels(fold) for fold in ("trades", "quotes", "aggregates", "halts", "values", "raw")
}
HYDRATIONS = Counter(
    "mdpipe_mdp_hydrations_total", "Hydrations from the vendor's REST snapshot, by outcome", ["outcome"]
)
HYDRATIONS_WANTED = Counter(
    "mdpipe_mdp_hydrations_wanted_total",
    "Why a hydration was asked for",
    ["why"],  # session, gap, stale, restart, reconnect, day
)
HYDRATION_SECONDS = Histogram(
    "mdpipe_mdp_hydration_seconds",
    "Time of one hydration: the REST snapshot, then merging and writing it",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
HYDRATED_SYMBOLS = Counter("mdpipe_mdp_hydrated_symbols_total", "Symbols merged from a REST snapshot")
HYDRATION_STALE = Counter(
    "mdpipe_mdp_hydration_stale_total",
    "Symbols whose REST snapshot was older than what the stream had merged (sums only grew)",
)
