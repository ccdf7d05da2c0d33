"""The emulator's Prometheus metrics (process-wide, as Prometheus expects)."""

from prometheus_client import Counter, Gauge

CLIENTS = Gauge("mdpipe_sim_clients", "Authenticated client connections")
CLIENTS_PEAK = Gauge(
    "mdpipe_sim_clients_peak", "Most authenticated client connections at once since the emulator started"
)
CONNECTIONS = Counter(
    "mdpipe_sim_connections_total",
    "Client connections by how they ended or were refused",
    ["outcome"],  # opened, auth_failed, auth_timeout, max_connections, slow_consumer, closed
)
CLIENT_ERRORS = Counter(
    "mdpipe_sim_client_errors_total", "Bad client frames answered with an error", ["reason"]
)
FRAMES_SENT = Counter("mdpipe_sim_frames_sent_total", "Data frames sent")
EVENTS_SENT = Counter("mdpipe_sim_events_sent_total", "Data events sent")
BYTES_SENT = Counter("mdpipe_sim_bytes_sent_total", "Data bytes sent")
FAULTS = Counter("mdpipe_sim_faults_total", "Faults injected", ["fault"])
REST_REQUESTS = Counter(
    "mdpipe_sim_rest_requests_total",
    "REST requests by route and answer",
    ["route", "status"],  # route: snapshot_all ... or invalid (400), unknown; status: the code or aborted
)
