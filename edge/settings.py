"""Settings of an edge process, read once from the environment."""

from collections.abc import Mapping
from dataclasses import dataclass, field

from bus_schema.ids import is_token_id, new_token_id
from runtime.config import ConfigError, Env, NatsCredentials, nats_servers

MIN_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    jwt_secret: str
    jwt_secret_previous: str | None = None
    """Still accepted when verifying tokens, during a key rotation."""
    nats_servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    host: str = "127.0.0.1"
    port: int = 8787
    edge_id: str = ""
    cors_origin: str = "*"
    calls_app_id: str | None = None
    calls_app_secret: str | None = None
    calls_api_url: str = "https://rtc.live.cloudflare.com/v1"
    calls_proxy_auth: bool = True
    """Off restores the old open proxy (no token, no ownership checks)."""
    calls_timeout: float = 10.0
    calls_retries: int = 2
    turn_key_id: str | None = None
    turn_key_token: str | None = None
    turn_ttl: int = 3600
    """Seconds a participant's TURN credentials live; members renew them
    through ``/cloudflare/ice-servers``."""
    token_ttl: int = 24 * 3600
    default_max_participants: int = 10
    max_participants_limit: int = 200
    max_frame_bytes: int = 64 * 1024
    max_broadcast_bytes: int = 16 * 1024
    """Largest frame, as relayed, that fans out to the whole room (``"to":"all"``,
    ``cloudflare-session``, ``track-state``): a large frame (an SDP offer) goes to
    one participant."""
    max_body_bytes: int = 256 * 1024
    max_name_length: int = 100
    send_queue_bytes: int = 1024 * 1024
    """A client whose unsent output passes this is disconnected (slow consumer)."""
    command_attempt_timeout: float = 2.0
    command_deadline: float = 10.0
    stun_urls: tuple[str, ...] = ("stun:stun.cloudflare.com:3478",)
    messages_per_second: float = 20.0
    messages_burst: float = 50.0
    bytes_per_second: float = 64 * 1024
    """Client bytes per second per connection (every frame counts, valid or not)..."""
    bytes_burst: float = 512 * 1024
    """...and the burst: a mesh newcomer's offers to a dozen peers fit in it."""
    max_strikes: float = 10.0
    """Refused messages (invalid, rate limited) a connection may send..."""
    strikes_per_minute: float = 12.0
    """...regaining this many per minute; out of strikes: close 1008."""
    max_connections_per_address: int = 100
    room_creations_per_minute: int = 30
    joins_per_minute: int = 300
    """Join tokens per client address per minute (a whole office behind one
    address joining a big call fits; each join may cost a TURN API call)."""
    client_ip_header: str | None = None
    """Behind a trusted proxy: the header carrying the client address."""
    heartbeat_interval: float = 1.0
    """Seconds between heartbeats; workers' EDGE_TIMEOUT should be several of these."""
    drain_delay: float = 1.0
    """On SIGTERM: seconds answering /ready 503 (and refusing new sockets)
    before the sockets are closed with 1012 and the edge exits."""
    admin_api_key: str | None = None
    """Bearer key for the room service API (``/api/admin``); admin JWTs work too."""
    nats_credentials: NatsCredentials = field(default_factory=NatsCredentials)
    log_level: str = "INFO"
    log_format: str = "json"

    @property
    def calls_configured(self) -> bool:
        return bool(self.calls_app_id and self.calls_app_secret)

    @property
    def turn_configured(self) -> bool:
        return bool(self.turn_key_id and self.turn_key_token)

    def __repr__(self) -> str:
        # Never print secrets, not even by accident in a traceback.
        return f"EdgeSettings(edge_id={self.edge_id!r}, host={self.host!r}, port={self.port})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str], record: set[str] | None = None) -> "EdgeSettings":
        env = Env(environ, record)
        secret = env.secret("JWT_SECRET")
        if secret is None:
            raise ConfigError(
                "JWT_SECRET must be set (signaling dev generates one for development)"
            )
        previous = env.secret("JWT_SECRET_PREVIOUS")
        for name, value in (("JWT_SECRET", secret), ("JWT_SECRET_PREVIOUS", previous)):
            if value is not None and len(value.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(f"{name} must be at least {MIN_SECRET_BYTES} bytes long")
        # The configured name plus a per-process suffix: a restarted edge is a new
        # edge on the bus, so participants of the one that died are not taken
        # for alive.
        name = env.text("EDGE_ID", "edge")
        if not is_token_id(name) or len(name) > 48:
            raise ConfigError("EDGE_ID may contain only letters, digits, '-' and '_' (max 48)")
        edge_id = f"{name}-{new_token_id()[:8]}"
        default_max = env.integer("DEFAULT_MAX_PARTICIPANTS", 10, minimum=1)
        limit = env.integer("MAX_PARTICIPANTS_LIMIT", 200, minimum=1)
        if default_max > limit:
            raise ConfigError("DEFAULT_MAX_PARTICIPANTS must not exceed MAX_PARTICIPANTS_LIMIT")
        max_frame = env.integer("MAX_FRAME_BYTES", 64 * 1024, minimum=1024)
        return cls(
            jwt_secret=secret,
            jwt_secret_previous=previous,
            nats_servers=tuple(nats_servers(env.text("NATS_URL", "nats://127.0.0.1:4222"))),
            host=env.text("EDGE_HOST", "127.0.0.1"),
            port=env.integer("EDGE_PORT", 8787, minimum=0, maximum=65535),
            edge_id=edge_id,
            cors_origin=env.text("CORS_ORIGIN", "*"),
            calls_app_id=env.optional("CLOUDFLARE_APP_ID"),
            calls_app_secret=env.secret("CLOUDFLARE_APP_SECRET"),
            calls_api_url=_url(env.text("CALLS_API_URL", "https://rtc.live.cloudflare.com/v1")),
            calls_proxy_auth=env.flag("CALLS_PROXY_AUTH", True),
            calls_timeout=env.number("CALLS_TIMEOUT", 10.0, minimum=0.1, maximum=120.0),
            calls_retries=env.integer("CALLS_RETRIES", 2, minimum=0, maximum=5),
            stun_urls=_stun_urls(env.text("STUN_URLS", "stun:stun.cloudflare.com:3478")),
            turn_key_id=env.optional("CLOUDFLARE_TURN_KEY_ID"),
            turn_key_token=env.secret("CLOUDFLARE_TURN_KEY_API_TOKEN"),
            turn_ttl=env.integer("TURN_CREDENTIALS_TTL", 3600, minimum=10, maximum=48 * 3600),
            token_ttl=env.integer("TOKEN_TTL", 24 * 3600, minimum=60),
            default_max_participants=default_max,
            max_participants_limit=limit,
            max_frame_bytes=max_frame,
            max_broadcast_bytes=env.integer(
                "MAX_BROADCAST_BYTES", min(16 * 1024, max_frame), minimum=256, maximum=max_frame
            ),
            max_body_bytes=env.integer("MAX_BODY_BYTES", 256 * 1024, minimum=1024),
            max_name_length=env.integer("MAX_NAME_LENGTH", 100, minimum=1, maximum=1000),
            send_queue_bytes=env.integer("SEND_QUEUE_BYTES", 1024 * 1024, minimum=64 * 1024),
            command_attempt_timeout=env.number("COMMAND_ATTEMPT_TIMEOUT", 2.0, minimum=0.05),
            command_deadline=env.number("COMMAND_DEADLINE", 10.0, minimum=0.1),
            messages_per_second=env.number("RATE_LIMIT_MESSAGES", 20.0, minimum=0.1),
            messages_burst=env.number("RATE_LIMIT_BURST", 50.0, minimum=1.0),
            bytes_per_second=env.number("RATE_LIMIT_BYTES", 64 * 1024, minimum=1024.0),
            # A frame the burst cannot hold could never be sent.
            bytes_burst=env.number(
                "RATE_LIMIT_BYTES_BURST", max(512 * 1024, max_frame), minimum=max_frame
            ),
            max_strikes=env.number("MAX_STRIKES", 10.0, minimum=1.0),
            strikes_per_minute=env.number("STRIKES_PER_MINUTE", 12.0, minimum=0.0),
            max_connections_per_address=env.integer("MAX_CONNECTIONS_PER_ADDRESS", 100, minimum=1),
            room_creations_per_minute=env.integer("ROOM_CREATIONS_PER_MINUTE", 30, minimum=1),
            joins_per_minute=env.integer("JOINS_PER_MINUTE", 300, minimum=1),
            client_ip_header=(env.optional("CLIENT_IP_HEADER") or "").lower() or None,
            heartbeat_interval=env.number("HEARTBEAT_INTERVAL", 1.0, minimum=0.1, maximum=60.0),
            drain_delay=env.number("DRAIN_DELAY", 1.0, minimum=0.0, maximum=300.0),
            admin_api_key=_admin_key(env.secret("ADMIN_API_KEY")),
            nats_credentials=NatsCredentials.from_env(env),
            log_level=env.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            log_format=env.choice("LOG_FORMAT", "json", ("json", "text")),
        )


def _admin_key(value: str | None) -> str | None:
    if value is not None and len(value) < 24:
        raise ConfigError("ADMIN_API_KEY must be at least 24 characters")
    return value


def _stun_urls(value: str) -> tuple[str, ...]:
    urls = tuple(url.strip() for url in value.split(",") if url.strip())
    for url in urls:
        if not url.startswith(("stun:", "stuns:")):
            raise ConfigError(f"STUN_URLS must be stun: or stuns: URLs, got {url!r}")
    return urls


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"CALLS_API_URL must be an http(s) URL, got {value!r}")
    return value.rstrip("/")
