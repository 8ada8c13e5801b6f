"""Settings of a webhook dispatcher, read once from the environment."""

from collections.abc import Mapping
from dataclasses import dataclass, field

from bus_schema.ids import is_token_id, new_token_id
from runtime.config import ConfigError, Env, NatsCredentials, nats_servers

MIN_SECRET_LENGTH = 24


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    url: str
    secret: str
    nats_servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    dispatcher_id: str = ""
    timeout: float = 5.0
    """Seconds to wait for the receiver's answer to one POST."""
    retry_for: float = 3600.0
    """Seconds an event is retried while the receiver fails, before it goes to
    the dead-letter stream."""
    backoff_initial: float = 0.5
    backoff_max: float = 60.0
    ack_wait: float = 30.0
    """Seconds JetStream waits for a dispatcher that holds an event before it
    hands the event to another (a dispatcher that died); a live dispatcher
    keeps extending it while it retries."""
    dead_letter_max_age: float = 30 * 24 * 3600.0
    dead_letter_max_bytes: int = 256 * 1024**2
    """Bytes the dead-letter stream keeps at most (the oldest letters go first)."""
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9103
    """Prometheus metrics port; ``None`` (METRICS_PORT=off) serves none."""
    metrics_interval: float = 5.0
    """Seconds between two reads of the consumers' pending counts for the metrics."""
    nats_credentials: NatsCredentials = field(default_factory=NatsCredentials)
    log_level: str = "INFO"
    log_format: str = "json"

    def __repr__(self) -> str:
        return f"WebhookSettings(url={self.url!r}, dispatcher_id={self.dispatcher_id!r})"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], record: set[str] | None = None
    ) -> "WebhookSettings":
        env = Env(environ, record)
        url = env.optional("WEBHOOK_URL")
        if url is None or not url.startswith(("http://", "https://")):
            raise ConfigError("WEBHOOK_URL must be set to an http(s) URL")
        secret = env.secret("WEBHOOK_SECRET")
        if secret is None or len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"WEBHOOK_SECRET must be set, at least {MIN_SECRET_LENGTH} characters"
            )
        dispatcher_id = env.text("DISPATCHER_ID", new_token_id())
        if not is_token_id(dispatcher_id):
            raise ConfigError("DISPATCHER_ID may contain only letters, digits, '-' and '_'")
        initial = env.number("WEBHOOK_BACKOFF_INITIAL", 0.5, minimum=0.01, maximum=60.0)
        return cls(
            url=url,
            secret=secret,
            nats_servers=tuple(nats_servers(env.text("NATS_URL", "nats://127.0.0.1:4222"))),
            dispatcher_id=dispatcher_id,
            timeout=env.number("WEBHOOK_TIMEOUT", 5.0, minimum=0.1, maximum=120.0),
            retry_for=env.number("WEBHOOK_RETRY_FOR", 3600.0, minimum=0.0),
            backoff_initial=initial,
            backoff_max=env.number("WEBHOOK_BACKOFF_MAX", 60.0, minimum=initial),
            ack_wait=env.number("WEBHOOK_ACK_WAIT", 30.0, minimum=1.0, maximum=3600.0),
            dead_letter_max_age=env.number(
                "WEBHOOK_DEAD_LETTER_MAX_AGE", 30 * 24 * 3600.0, minimum=60.0
            ),
            dead_letter_max_bytes=env.integer(
                "WEBHOOK_DEAD_MAX_BYTES", 256 * 1024**2, minimum=1024
            ),
            metrics_host=env.text("METRICS_HOST", "127.0.0.1"),
            metrics_port=None
            if env.text("METRICS_PORT", "9103").lower() == "off"
            else env.integer("METRICS_PORT", 9103, minimum=1, maximum=65535),
            metrics_interval=env.number(
                "WEBHOOK_METRICS_INTERVAL", 5.0, minimum=0.1, maximum=300.0
            ),
            nats_credentials=NatsCredentials.from_env(env),
            log_level=env.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            log_format=env.choice("LOG_FORMAT", "json", ("json", "text")),
        )
