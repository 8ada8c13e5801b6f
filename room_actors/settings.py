"""Settings of a room actor worker, each declared once (runtime/config.py
derives reading them, the repr and the README's table)."""

from runtime.config import CommonSettings, metrics_host
from runtime.settings import (
    integer,
    number,
    port_or_off,
    process_id,
    settings_class,
)


@settings_class
class ActorSettings(CommonSettings):
    worker_id: str = process_id("WORKER_ID", doc="this worker's id")
    room_ttl: float = number(
        "ROOM_TTL",
        default=7200.0,
        minimum=10.0,
        doc="seconds an unused room lives in KV (a room in use is refreshed)",
    )
    passivate_after: float = number(
        "ROOM_PASSIVATE_AFTER",
        default=300.0,
        minimum=1.0,
        doc="seconds before an idle, empty room leaves memory (its state stays in KV)",
    )
    kv_replicas: int = integer(
        "KV_REPLICAS",
        default=1,
        minimum=1,
        maximum=5,
        doc="replicas of the KV buckets (3 on a cluster)",
    )
    lease_ttl: float = number(
        "LEASE_TTL",
        default=2.0,
        minimum=1.0,
        maximum=60.0,
        doc="seconds a dead worker keeps its partitions (the failover time); renewed every TTL/4",
    )
    edge_timeout: float = number(
        "EDGE_TIMEOUT",
        default=3.0,
        minimum=0.5,
        maximum=600.0,
        doc="seconds without heartbeats after which an edge is dead and its participants leave",
    )
    resume_grace: float = number(
        "RESUME_GRACE",
        default=10.0,
        minimum=0.0,
        maximum=3600.0,
        doc="seconds a dropped connection keeps its place; reconnecting with the same token "
        "within it resumes silently",
    )
    mute_save_delay: float = number(
        "MUTE_SAVE_DELAY",
        default=1.0,
        minimum=0.0,
        maximum=60.0,
        doc="seconds a mute change may go unsaved (its event-log entry stands for it meanwhile)",
    )
    recent_commands: int = 64
    """How many applied command ids each room remembers for deduplication."""
    empty_timeout: float = number(
        "ROOM_EMPTY_TIMEOUT",
        default=7200.0,
        minimum=0.0,
        doc="default seconds a room nobody joins lives (the old service's 2 hours; 0: no "
        "limit but `ROOM_TTL`); per room at creation",
    )
    departure_timeout: float = number(
        "ROOM_DEPARTURE_TIMEOUT",
        default=300.0,
        minimum=0.0,
        doc="default seconds a room lives after its last participant left (0: no limit but "
        "`ROOM_TTL`); per room at creation",
    )
    calls_sessions_per_participant: int = integer(
        "CALLS_SESSIONS_PER_PARTICIPANT",
        default=8,
        minimum=1,
        maximum=64,
        doc="Calls sessions one participant may hold through the proxy (409 "
        "`calls_session_limit` past it)",
    )
    calls_sessions_per_room: int = integer(
        "CALLS_SESSIONS_PER_ROOM",
        default=400,
        minimum=1,
        maximum=2000,
        doc="Calls sessions one room may hold, all participants together (409 "
        "`calls_session_limit` past it)",
    )
    calls_preconnect_window: float = number(
        "CALLS_PRECONNECT_WINDOW",
        default=300.0,
        minimum=0.0,
        maximum=86400.0,
        doc="seconds a fresh token may use the Calls proxy before its WebSocket first "
        "connects (old clients create their session first)",
    )
    room_state_max_bytes: int = integer(
        "ROOM_STATE_MAX_BYTES",
        default=640 * 1024,
        minimum=64 * 1024,
        maximum=8 * 1024 * 1024,
        doc="a command that would make a room's stored state larger is refused "
        "(`room_state_full`); the defaults keep a full room under it",
    )
    log_max_age: float = number(
        "LOG_MAX_AGE",
        default=7 * 24 * 3600.0,
        minimum=60.0,
        doc="seconds the `SIGNALING_LOG` event stream keeps an event",
    )
    log_max_bytes: int = integer(
        "LOG_MAX_BYTES",
        default=1024**3,
        minimum=1024 * 1024,
        doc="bytes the `SIGNALING_LOG` event stream keeps at most (the oldest events go first)",
    )
    kv_max_bytes: int = integer(
        "KV_MAX_BYTES",
        default=1024**3,
        minimum=1024 * 1024,
        doc="bytes each KV bucket (`rooms`, `room_state`, `calls_sessions`, `actor_leases`) "
        "holds at most; a full bucket refuses writes and keeps what it has "
        "([docs/admin.md](docs/admin.md#storage-limits))",
    )
    metrics_host: str = metrics_host()
    metrics_port: int | None = port_or_off(
        "METRICS_PORT", default=9102, doc="Prometheus metrics port of a worker"
    )
