"""Prometheus metrics of an edge (``GET /metrics``).

Label values come from small fixed sets: client message types other than the
protocol's own are counted as ``other``, so a client cannot create series.
"""

from prometheus_client import Counter, Gauge, Histogram

from runtime.metrics import child as child  # re-exported: `metrics.child(...)`

CONNECTIONS = Gauge("signaling_edge_connections", "Open WebSocket connections")
ROOMS = Gauge("signaling_edge_rooms", "Rooms with at least one client on this edge")
NATS_CONNECTED = Gauge(
    "signaling_edge_nats_connected", "1 while this edge is connected to NATS, else 0"
)
MESSAGES_IN = Counter(
    "signaling_edge_messages_in_total", "Client messages received, by type", ["type"]
)
MESSAGES_OUT = Counter(
    "signaling_edge_messages_out_total", "Messages sent to clients, by type", ["type"]
)
ERRORS = Counter("signaling_edge_errors_total", "Errors sent to clients, by code", ["code"])
PEER_FRAMES_DROPPED = Counter(
    "signaling_edge_peer_frames_dropped_total",
    "Targeted frames from other edges not delivered: malformed, a type or sender an edge "
    "never relays, a server-only field, too many while the room's members were unknown, "
    "or sent before the connection it would go to was opened (held by the network)",
    ["reason"],
)
RELAY_SECONDS = Histogram(
    "signaling_edge_relay_seconds",
    "From a client message's arrival to its relay being published (acknowledged by the "
    "room's actor for ordered messages)",
    ["route"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SLOW_CONSUMERS = Counter(
    "signaling_edge_slow_consumers_total",
    "Sockets cut off (close 4008) for not reading their output: past SEND_QUEUE_BYTES, or "
    "still behind after BACKPRESSURE_STALL seconds while their room's senders waited",
)
BACKPRESSURE_WAITS = Counter(
    "signaling_edge_backpressure_waits_total",
    "Times a socket's next frame was not read because its room was congested on this edge",
)
BACKPRESSURE_SECONDS = Counter(
    "signaling_edge_backpressure_seconds_total",
    "Seconds sockets' reading was held back by congested rooms",
)
RELAY_FALLBACKS = Counter(
    "signaling_edge_relay_fallbacks_total",
    "Relayed messages whose event did not come back while their room was silent "
    "(or was refused as moving): sent again as ordinary commands",
)
JOINS_ABANDONED = Counter(
    "signaling_edge_joins_abandoned_total",
    "Joins given up because their socket closed before the welcome (no retry for a gone socket)",
)
CALLS_REQUESTS = Counter(
    "signaling_edge_calls_requests_total",
    "Calls proxy requests, by route and answered status",
    ["route", "status"],
)

KNOWN_TYPES = frozenset(
    {
        "cloudflare-session",
        "track-state",
        "offer",
        "answer",
        "ice-candidate",
        "welcome",
        "join",
        "leave",
        "error",
    }
)


def kind(message_type: str) -> str:
    return message_type if message_type in KNOWN_TYPES else "other"


BUS_OUTAGES = Counter(
    "signaling_edge_bus_outages_total",
    "Episodes in which room commands or KV reads failed because NATS or JetStream "
    "was unavailable; clients got 503 with Retry-After meanwhile",
    ["operation"],
)
BUS_FAILURES = Counter(
    "signaling_edge_bus_failures_total",
    "Room commands and KV reads that failed, after retries, because the bus was unavailable",
    ["operation"],
)
