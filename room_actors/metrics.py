"""Prometheus metrics of a room actor worker (served on ``METRICS_PORT``)."""

from prometheus_client import Counter, Gauge, Histogram

from runtime.metrics import child as child  # re-exported: `metrics.child(...)`

ROOMS_ACTIVE = Gauge("signaling_actor_rooms_active", "Rooms in this worker's memory")
PARTITIONS_OWNED = Gauge("signaling_actor_partitions_owned", "Partitions this worker serves")
COMMANDS = Counter(
    "signaling_actor_commands_total",
    "Room commands handled, by type and outcome",
    ["type", "outcome"],
)
COMMAND_SECONDS = Histogram(
    "signaling_actor_command_seconds",
    "From a command's arrival to its answer (queueing, KV write, publish included)",
    ["type"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
OWNERSHIP_CHANGES = Counter(
    "signaling_actor_ownership_changes_total",
    "Partitions acquired, released or lost",
    ["change"],
)
TAKEOVER_ROOMS_READ = Counter(
    "signaling_actor_takeover_rooms_read_total",
    "Rooms read from KV when partitions were taken over: the active_rooms index's "
    "(occupied or closing) and, for a partition it did not cover yet, every stored room",
    ["source"],
)
FENCED = Counter(
    "signaling_actor_fenced_total",
    "Turns refused because this worker no longer owned the room (writes not made)",
)

LOG_APPENDED = Counter(
    "signaling_actor_log_appended_total", "Events appended to the SIGNALING_LOG stream"
)
LOG_FAILED = Counter(
    "signaling_actor_log_failed_total",
    "Events that could not be appended to the event log after retries",
)
ROOMS_CLOSED = Counter("signaling_actor_rooms_closed_total", "Rooms closed, by reason", ["reason"])
BUS_OUTAGES = Counter(
    "signaling_actor_bus_outages_total",
    "Episodes in which an operation failed because NATS or JetStream was unavailable "
    "(a nats-server node died and JetStream was electing leaders, or the link was down)",
    ["operation"],
)
BUS_FAILURES = Counter(
    "signaling_actor_bus_failures_total",
    "Operations that failed because the bus was unavailable: room turns (answered "
    "`retry`, the edge tries again), event log appends, lease renewals",
    ["operation"],
)
