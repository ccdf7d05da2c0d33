"""The gateway's Prometheus metrics (process-wide, as Prometheus expects)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class FlushHistogram:
    """A histogram the writer fills once per flush, ``count`` observations of one value at a time (the
    messages of a flush that share their oldest update), without the lock ``Histogram.observe`` takes
    for each; exposed as an ordinary Prometheus histogram."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.sum = 0.0
        REGISTRY.register(self)

    def observe(self, value: float, count: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += count  # a bucket counts values <= its bound
        self.sum += value * count

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            cumulative.append((floatToGoString(bound), total))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=self.sum)


CONNECTIONS = Gauge("mdpipe_wds_connections", "Authenticated client connections open")
CONNECTS = Counter(
    "mdpipe_wds_connects_total",
    "Connection attempts past the handshake, by result",
    ["result"],  # accepted, auth_failed, auth_timeout, token_expired, too_many
)
SUBSCRIPTIONS = Gauge("mdpipe_wds_subscriptions", "Client subscriptions (one per client and channel)")
CHANNELS = Gauge("mdpipe_wds_channels", "Channels subscribed on Redis (one per channel, all clients)")
UPDATES_IN = Counter("mdpipe_wds_updates_in_total", "MDC updates received from Redis")
MALFORMED = Counter("mdpipe_wds_updates_malformed_total", "Redis messages that are not an MDC envelope")
DELIVERIES = Counter("mdpipe_wds_deliveries_total", "Updates sent to clients (one per client)")
MESSAGES_OUT = Counter("mdpipe_wds_messages_out_total", "WebSocket messages sent")
BYTES_OUT = Counter("mdpipe_wds_bytes_out_total", "WebSocket bytes sent (whole frames)")
INPUT_CONFLATED = Counter(
    "mdpipe_wds_input_conflated_total",
    "Updates from Redis replaced by a newer one of their channel before fan-out (WDS behind on its input)",
)
CONFLATED = Counter(
    "mdpipe_wds_conflated_total", "Updates replaced by a newer one before the client took them"
)
DROPPED = Counter("mdpipe_wds_dropped_total", "Updates queued for a client closed before taking them")
SNAPSHOTS = Counter("mdpipe_wds_snapshots_total", "Snapshots sent, by kind", ["kind"])  # subscribe, resync
CLOSES = Counter("mdpipe_wds_closes_total", "Connections closed by the server, by close code", ["code"])
ERRORS = Counter("mdpipe_wds_errors_total", "Error events sent to clients, by code", ["code"])
FRAMES_IN = Counter("mdpipe_wds_frames_in_total", "Frames received from clients")
LATENCY = FlushHistogram(
    "mdpipe_wds_delivery_latency_seconds",
    "From an update's event time to its message written to a client (the oldest update of the message)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SNAPSHOT_SECONDS = Histogram(
    "mdpipe_wds_snapshot_seconds",
    "Reading a subscribe action's snapshots from Redis",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
REDIS_CONNECTED = Gauge("mdpipe_wds_redis_connected", "1 while the Redis subscription is up")
HISTORY = Counter(
    "mdpipe_wds_history_total",
    "Chart history of bars.SYM subscriptions, by result",
    # cached (stored or known missing), asked (of the processors), off (nobody serves), busy (too many
    # asked at once), unanswered, late (the snapshot went before it); the fetches: mdpipe_history_*
    ["result"],
)
