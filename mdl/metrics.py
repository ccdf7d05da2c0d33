"""The listener's Prometheus metrics (process-wide, as Prometheus expects)."""

from prometheus_client import Counter, Gauge, Histogram

FRAMES = Counter("mdpipe_mdl_frames_total", "Frames read from the vendor connection")
EVENTS = Counter(
    "mdpipe_mdl_events_total", "Events read, by event type (`unknown` outside the table)", ["type"]
)
STATUS = Counter("mdpipe_mdl_status_events_total", "Status events from the vendor, by status", ["status"])
MALFORMED = Counter("mdpipe_mdl_malformed_frames_total", "Frames that were not a JSON array")
MALFORMED_EVENTS = Counter(
    "mdpipe_mdl_malformed_events_total", "Array elements that were not JSON objects (left out)"
)
MESSAGES = Counter("mdpipe_mdl_messages_published_total", "AMQP messages published, by class", ["class"])
PUBLISHED = Counter("mdpipe_mdl_events_published_total", "Events published, by class", ["class"])
DROPPED_FRAMES = Counter(
    "mdpipe_mdl_dropped_frames_total",
    "Frames dropped before publishing, by cause",
    ["cause"],  # handoff_full, expired, error (a routing bug), not_leader (the lease's deadline passed)
)
DROPPED_EVENTS = Counter(
    "mdpipe_mdl_dropped_events_total", "Events dropped after routing, by cause", ["cause"]
)  # broker_down: a publish failed part-way; not_leader: the lease's deadline passed part-way
RECONNECTS = Counter(
    "mdpipe_mdl_reconnects_total",
    "Vendor reconnects, by cause",
    ["cause"],  # connect_failed, closed, dropped, server_error, max_connections, slow_consumer, policy,
    # requested, error
)
CONNECTED = Gauge("mdpipe_mdl_connected", "1 while authenticated to the vendor")
BROKER_CONNECTED = Gauge("mdpipe_mdl_broker_connected", "1 while connected to RabbitMQ")
HANDOFF_FRAMES = Gauge("mdpipe_mdl_handoff_frames", "Frames waiting between reading and publishing")
HANDOFF_BYTES = Gauge("mdpipe_mdl_handoff_bytes", "Bytes waiting between reading and publishing")
PUBLISH_LATENCY = Histogram(
    "mdpipe_mdl_publish_latency_seconds",
    "From reading a frame to its message written to RabbitMQ",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CONTROL = Counter("mdpipe_mdl_control_total", "Control requests, by result", ["result"])
TAP_DROPPED = Counter("mdpipe_mdl_tap_dropped_frames_total", "Frames the raw tap could not write in time")
LEADER = Gauge("mdpipe_mdl_leader", "1 while this instance holds the lease (may connect and publish)")
TAKEOVERS = Counter("mdpipe_mdl_takeovers_total", "Times this instance took the lease and became the leader")
LEASE_LOST = Counter(
    "mdpipe_mdl_lease_lost_total",
    "Times this instance stopped leading, by cause",
    ["cause"],  # expired (renewals failed or the process was paused), taken, released (a clean stop)
)
