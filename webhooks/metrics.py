"""Prometheus metrics of a webhook dispatcher (served on ``METRICS_PORT``).

Labels come from fixed sets: the log partitions and the dead-letter reasons.
``pending`` is the same from every dispatcher (it comes from the shared
consumers); ``lag_seconds`` is reported by the dispatcher holding the
partition's oldest event and is 0 elsewhere: aggregate both with ``max``.
"""

from prometheus_client import Counter, Gauge

from bus_schema import subjects

GAVE_UP = "gave_up"
"""Retried for ``WEBHOOK_RETRY_FOR`` without a 2xx."""
REJECTED = "rejected_4xx"
"""The receiver answered a 4xx other than 408 and 429: retrying would not help."""
UNREADABLE = "unreadable"
"""The log entry did not decode."""

DELIVERED = Counter(
    "signaling_webhooks_delivered_total", "Events the receiver accepted (a 2xx answer)"
)
FAILED_ATTEMPTS = Counter(
    "signaling_webhooks_failed_attempts_total",
    "POSTs that failed: network error, timeout or a non-2xx answer",
)
DEAD_LETTERED = Counter(
    "signaling_webhooks_dead_lettered_total",
    "Events put in the SIGNALING_WEBHOOKS_DEAD stream, by reason",
    ["reason"],
)
PENDING = Gauge(
    "signaling_webhooks_pending",
    "Events of a log partition not delivered yet (its consumer's pending and "
    "unacknowledged events), read every WEBHOOK_METRICS_INTERVAL seconds",
    ["partition"],
)
LAG = Gauge(
    "signaling_webhooks_lag_seconds",
    "Age of the oldest event of a log partition not delivered yet, as seen by the "
    "dispatcher holding it (0 when it holds none)",
    ["partition"],
)

PARTITIONS = [str(partition) for partition in range(subjects.LOG_PARTITIONS)]

for _reason in (GAVE_UP, REJECTED, UNREADABLE):
    DEAD_LETTERED.labels(_reason)
