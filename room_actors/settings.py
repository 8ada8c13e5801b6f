"""Settings of a room actor worker, read once from the environment."""

from collections.abc import Mapping
from dataclasses import dataclass, field

from bus_schema.ids import is_token_id, new_token_id
from runtime.config import ConfigError, Env, NatsCredentials, nats_servers


@dataclass(frozen=True, slots=True)
class ActorSettings:
    nats_servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    worker_id: str = ""
    room_ttl: float = 7200.0
    """Seconds after which an idle room's metadata and state expire from KV."""
    passivate_after: float = 300.0
    """Seconds without a command after which an empty room leaves memory."""
    kv_replicas: int = 1
    lease_ttl: float = 2.0
    """Seconds a worker's lease lives without renewal: the failover time of a
    worker that dies without handing over (renewed every TTL/4)."""
    edge_timeout: float = 3.0
    """Seconds without a heartbeat after which an edge is dead and its
    connected participants leave."""
    resume_grace: float = 10.0
    """Seconds a participant whose connection dropped keeps its place."""
    recent_commands: int = 64
    """How many applied command ids each room remembers for deduplication."""
    empty_timeout: float = 7200.0
    """Default seconds a room nobody joins lives (0: until ``room_ttl``)."""
    departure_timeout: float = 300.0
    """Default seconds a room lives after its last participant left (0: until ``room_ttl``)."""
    calls_sessions_per_participant: int = 8
    """Calls sessions one participant may hold through the proxy."""
    calls_sessions_per_room: int = 400
    """Calls sessions a room may hold, all participants together."""
    calls_preconnect_window: float = 300.0
    """Seconds a fresh token may use the Calls proxy before its WebSocket first
    connects (old clients create their session first)."""
    room_state_max_bytes: int = 512 * 1024
    """A command that would make a room's stored state larger is refused."""
    log_max_age: float = 7 * 24 * 3600.0
    """Seconds the event log keeps an event."""
    log_max_bytes: int = 1024**3
    """Bytes the event log keeps at most (the oldest events go first)."""
    kv_max_bytes: int = 1024**3
    """Bytes each KV bucket (rooms, room_state, calls_sessions, actor_leases)
    holds at most; a full bucket refuses writes and keeps what it has."""
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9102
    """Prometheus metrics port; ``None`` (METRICS_PORT=off) serves none."""
    nats_credentials: NatsCredentials = field(default_factory=NatsCredentials)
    log_level: str = "INFO"
    log_format: str = "json"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], record: set[str] | None = None
    ) -> "ActorSettings":
        env = Env(environ, record)
        return cls(
            nats_servers=tuple(nats_servers(env.text("NATS_URL", "nats://127.0.0.1:4222"))),
            worker_id=_worker_id(env.text("WORKER_ID", new_token_id())),
            room_ttl=env.number("ROOM_TTL", 7200.0, minimum=10.0),
            passivate_after=env.number("ROOM_PASSIVATE_AFTER", 300.0, minimum=1.0),
            kv_replicas=env.integer("KV_REPLICAS", 1, minimum=1, maximum=5),
            lease_ttl=env.number("LEASE_TTL", 2.0, minimum=1.0, maximum=60.0),
            edge_timeout=env.number("EDGE_TIMEOUT", 3.0, minimum=0.5, maximum=600.0),
            resume_grace=env.number("RESUME_GRACE", 10.0, minimum=0.0, maximum=3600.0),
            empty_timeout=env.number("ROOM_EMPTY_TIMEOUT", 7200.0, minimum=0.0),
            departure_timeout=env.number("ROOM_DEPARTURE_TIMEOUT", 300.0, minimum=0.0),
            calls_sessions_per_participant=env.integer(
                "CALLS_SESSIONS_PER_PARTICIPANT", 8, minimum=1, maximum=64
            ),
            calls_sessions_per_room=env.integer(
                "CALLS_SESSIONS_PER_ROOM", 400, minimum=1, maximum=2000
            ),
            calls_preconnect_window=env.number(
                "CALLS_PRECONNECT_WINDOW", 300.0, minimum=0.0, maximum=86400.0
            ),
            room_state_max_bytes=env.integer(
                "ROOM_STATE_MAX_BYTES", 512 * 1024, minimum=64 * 1024, maximum=8 * 1024 * 1024
            ),
            log_max_age=env.number("LOG_MAX_AGE", 7 * 24 * 3600.0, minimum=60.0),
            log_max_bytes=env.integer("LOG_MAX_BYTES", 1024**3, minimum=1024 * 1024),
            kv_max_bytes=env.integer("KV_MAX_BYTES", 1024**3, minimum=1024 * 1024),
            metrics_host=env.text("METRICS_HOST", "127.0.0.1"),
            metrics_port=_port(env.text("METRICS_PORT", "9102")),
            nats_credentials=NatsCredentials.from_env(env),
            log_level=env.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            log_format=env.choice("LOG_FORMAT", "json", ("json", "text")),
        )


def _worker_id(value: str) -> str:
    if not is_token_id(value):
        raise ConfigError("WORKER_ID may contain only letters, digits, '-' and '_' (max 64)")
    return value


def _port(value: str) -> int | None:
    if value.lower() == "off":
        return None
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(f"METRICS_PORT must be a port number or off, got {value!r}") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"METRICS_PORT must be between 1 and 65535, got {port}")
    return port
