"""Settings of an edge process, each declared once (runtime/config.py derives
reading them, the repr that hides secrets, and the README's table)."""

from bus_schema.ids import is_token_id, new_token_id
from runtime.config import CommonSettings
from runtime.settings import (
    Invalid,
    MinLength,
    flag,
    http_url,
    integer,
    listed,
    number,
    settings_class,
    text,
)

MIN_SECRET_BYTES = 32

SHUTDOWN_GRACE = 5
"""Seconds uvicorn gives the handlers, once it has closed every socket, to
finish before it cancels them (and logs each as an ERROR)."""
FAREWELL_WHILE_STOPPING = SHUTDOWN_GRACE - 1.5
"""Seconds a socket closed by the edge's own stop tries to tell its room: a
room without an owner then is left to the workers' edge-liveness sweep."""


def _edge_id(name: str) -> str:
    """The configured name plus a per-process suffix: a restarted edge is a new
    edge on the bus, so participants of the one that died are not taken for alive."""
    if not is_token_id(name) or len(name) > 48:
        raise Invalid("may contain only letters, digits, '-' and '_' (max 48)")
    return f"{name}-{new_token_id()[:8]}"


def _base_url(value: str) -> str:
    return http_url(value).rstrip("/")


@settings_class
class EdgeSettings(CommonSettings):
    jwt_secret: str = text(
        "JWT_SECRET",
        secret=True,
        check=MinLength(MIN_SECRET_BYTES, "bytes"),
        hint="signaling dev generates one for development",
        doc="HS256 secret for join tokens (`signaling dev` generates one)",
    )
    jwt_secret_previous: str | None = text(
        "JWT_SECRET_PREVIOUS",
        default=None,
        secret=True,
        check=MinLength(MIN_SECRET_BYTES, "bytes"),
        doc="the previous secret, still accepted during a rotation",
    )
    host: str = text("EDGE_HOST", default="127.0.0.1", doc="where the edge listens")
    port: int = integer(
        "EDGE_PORT", default=8787, minimum=0, maximum=65535, doc="the port the edge listens on"
    )
    edge_id: str = text(
        "EDGE_ID",
        default="edge",
        check=_edge_id,
        shown="`edge`",
        values="letters, digits, `-`, `_` (at most 48)",
        doc="this edge's name on the bus; each process adds a random suffix",
    )
    cors_origin: str = text("CORS_ORIGIN", default="*", doc="allowed CORS origin")
    calls_app_id: str | None = text("CLOUDFLARE_APP_ID", default=None, doc="Calls app id")
    calls_app_secret: str | None = text(
        "CLOUDFLARE_APP_SECRET", default=None, secret=True, doc="Calls app secret"
    )
    calls_api_url: str = text(
        "CALLS_API_URL",
        default="https://rtc.live.cloudflare.com/v1",
        check=_base_url,
        values="an http(s) URL",
        doc="Calls API base URL (the TURN endpoint hangs off it too)",
    )
    calls_proxy_auth: bool = flag(
        "CALLS_PROXY_AUTH",
        default=True,
        doc="`off` restores the old open proxy (no token, no ownership checks) for legacy clients",
    )
    calls_timeout: float = number(
        "CALLS_TIMEOUT",
        default=10.0,
        minimum=0.1,
        maximum=120.0,
        doc="seconds per upstream Calls API call",
    )
    calls_retries: int = integer(
        "CALLS_RETRIES",
        default=2,
        minimum=0,
        maximum=5,
        doc="retries of an upstream Calls call that is safe to retry",
    )
    turn_key_id: str | None = text(
        "CLOUDFLARE_TURN_KEY_ID",
        default=None,
        doc="TURN key id: join responses then carry TURN credentials",
    )
    turn_key_token: str | None = text(
        "CLOUDFLARE_TURN_KEY_API_TOKEN",
        default=None,
        secret=True,
        doc="the TURN key's API token",
    )
    turn_ttl: int = integer(
        "TURN_CREDENTIALS_TTL",
        default=3600,
        minimum=10,
        maximum=48 * 3600,
        doc="lifetime of each participant's TURN credentials, seconds; members renew them "
        "through `/cloudflare/ice-servers`",
    )
    stun_urls: tuple[str, ...] = listed(
        "STUN_URLS",
        default=("stun:stun.cloudflare.com:3478",),
        schemes=("stun:", "stuns:"),
        may_be_empty=True,
        doc="STUN servers in join responses (none for a LAN or loopback-only setup)",
    )
    token_ttl: int = integer(
        "TOKEN_TTL", default=24 * 3600, minimum=60, doc="join token lifetime, seconds"
    )
    max_participants_limit: int = integer(
        "MAX_PARTICIPANTS_LIMIT",
        default=200,
        minimum=1,
        doc="largest room size a creator may ask for",
    )
    default_max_participants: int = integer(
        "DEFAULT_MAX_PARTICIPANTS",
        default=10,
        minimum=1,
        maximum="MAX_PARTICIPANTS_LIMIT",
        doc="room size when the creator gives none",
    )
    max_frame_bytes: int = integer(
        "MAX_FRAME_BYTES",
        default=64 * 1024,
        minimum=1024,
        doc="largest WebSocket frame (bigger: close 1009)",
    )
    max_broadcast_bytes: int = integer(
        "MAX_BROADCAST_BYTES",
        default=16 * 1024,
        minimum=256,
        maximum="MAX_FRAME_BYTES",
        doc='largest frame to the whole room (`"to":"all"`, `cloudflare-session`, '
        "`track-state`) as relayed; bigger: `error` `too_large` (a targeted frame such "
        "as an SDP offer may take `MAX_FRAME_BYTES`)",
    )
    max_body_bytes: int = integer(
        "MAX_BODY_BYTES", default=256 * 1024, minimum=1024, doc="largest HTTP body (bigger: 413)"
    )
    max_name_length: int = integer(
        "MAX_NAME_LENGTH",
        default=100,
        minimum=1,
        maximum=1000,
        doc="longest room / participant name",
    )
    send_queue_bytes: int = integer(
        "SEND_QUEUE_BYTES",
        default=1024 * 1024,
        minimum=64 * 1024,
        doc="unsent output per socket before a slow client is dropped (close 4008), counted "
        "beyond its `welcome` and session replays",
    )
    command_attempt_timeout: float = number(
        "COMMAND_ATTEMPT_TIMEOUT",
        default=2.0,
        minimum=0.05,
        doc="seconds per room command attempt",
    )
    command_deadline: float = number(
        "COMMAND_DEADLINE",
        default=10.0,
        minimum=0.1,
        doc="seconds a room command is retried before the client gets an error",
    )
    messages_per_second: float = number(
        "RATE_LIMIT_MESSAGES",
        default=20.0,
        minimum=0.1,
        doc="WebSocket messages per second per connection",
    )
    messages_burst: float = number(
        "RATE_LIMIT_BURST",
        default=50.0,
        minimum=1.0,
        doc="burst of WebSocket messages per connection",
    )
    bytes_per_second: float = number(
        "RATE_LIMIT_BYTES",
        default=64 * 1024,
        minimum=1024.0,
        doc="WebSocket bytes per second per connection (every frame counts, valid or not); "
        "over it: `error` `rate_limited`",
    )
    bytes_burst: float = number(
        "RATE_LIMIT_BYTES_BURST",
        default=512 * 1024,
        minimum="MAX_FRAME_BYTES",  # a frame the burst cannot hold could never be sent
        doc="burst of WebSocket bytes per connection: a mesh newcomer's offers to a dozen "
        "peers fit in it",
    )
    max_strikes: float = number(
        "MAX_STRIKES",
        default=10.0,
        minimum=1.0,
        doc="refused messages (invalid, rate limited) a connection may send before close 1008",
    )
    strikes_per_minute: float = number(
        "STRIKES_PER_MINUTE",
        default=12.0,
        minimum=0.0,
        doc="strikes a connection regains per minute",
    )
    max_connections_per_address: int = integer(
        "MAX_CONNECTIONS_PER_ADDRESS",
        default=100,
        minimum=1,
        doc="WebSockets per client address (more: 429)",
    )
    room_creations_per_minute: int = integer(
        "ROOM_CREATIONS_PER_MINUTE",
        default=30,
        minimum=1,
        doc="room creations per client address (more: 429)",
    )
    joins_per_minute: int = integer(
        "JOINS_PER_MINUTE",
        default=300,
        minimum=1,
        doc="join tokens per client address (more: 429): a whole office behind one address "
        "joining a big call fits; each join may cost a TURN API call",
    )
    client_ip_header: str | None = text(
        "CLIENT_IP_HEADER",
        default=None,
        check=str.lower,
        doc="behind a trusted proxy, the header with the client address (e.g. `x-forwarded-for`)",
    )
    heartbeat_interval: float = number(
        "HEARTBEAT_INTERVAL",
        default=1.0,
        minimum=0.1,
        maximum=60.0,
        doc="seconds between the edge's heartbeats (workers' `EDGE_TIMEOUT` should be "
        "several of these)",
    )
    drain_delay: float = number(
        "DRAIN_DELAY",
        default=1.0,
        minimum=0.0,
        maximum=300.0,
        doc="seconds `/ready` answers 503 (and new sockets are refused) after SIGTERM "
        "before sockets close with 1012",
    )
    admin_api_key: str | None = text(
        "ADMIN_API_KEY",
        default=None,
        secret=True,
        check=MinLength(24),
        doc="bearer key for `/api/admin` (admin JWTs work without it)",
    )

    @property
    def calls_configured(self) -> bool:
        return bool(self.calls_app_id and self.calls_app_secret)

    @property
    def turn_configured(self) -> bool:
        return bool(self.turn_key_id and self.turn_key_token)
