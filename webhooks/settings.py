"""Settings of a webhook dispatcher, each declared once (runtime/config.py
derives reading them, the repr that hides the secret, and the README's table)."""

from runtime.config import CommonSettings, metrics_host
from runtime.settings import (
    Invalid,
    http_url,
    integer,
    number,
    port_or_off,
    process_id,
    settings_class,
    text,
)
from webhooks import signing


def webhook_secret(value: str) -> str:
    """A check: one or more Standard Webhooks secrets (``whsec_<base64>``)."""
    try:
        signing.keys(value)
    except signing.BadSecret as e:
        raise Invalid(str(e)) from None
    return value


@settings_class
class WebhookSettings(CommonSettings):
    url: str = text(
        "WEBHOOK_URL",
        check=http_url,
        values="an http(s) URL",
        hint="an http(s) URL",
        doc="where events are POSTed",
    )
    secret: str = text(
        "WEBHOOK_SECRET",
        secret=True,
        check=webhook_secret,
        values="`whsec_` + base64 of 24-64 bytes; several separated by spaces while rotating",
        hint="a Standard Webhooks secret: make one with `signaling webhook-secret`",
        doc="the signing secret of the webhooks (Standard Webhooks)",
    )
    dispatcher_id: str = process_id("DISPATCHER_ID", doc="this dispatcher's id")
    timeout: float = number(
        "WEBHOOK_TIMEOUT",
        default=5.0,
        minimum=0.1,
        maximum=120.0,
        doc="seconds to wait for the receiver's answer to one POST",
    )
    retry_for: float = number(
        "WEBHOOK_RETRY_FOR",
        default=3600.0,
        minimum=0.0,
        doc="seconds an event is retried while the receiver fails, before it becomes a dead letter",
    )
    backoff_initial: float = number(
        "WEBHOOK_BACKOFF_INITIAL",
        default=0.5,
        minimum=0.01,
        maximum=60.0,
        doc="seconds before the first retry (doubled each time)",
    )
    backoff_max: float = number(
        "WEBHOOK_BACKOFF_MAX",
        default=60.0,
        minimum="WEBHOOK_BACKOFF_INITIAL",
        doc="seconds between two retries at most",
    )
    ack_wait: float = number(
        "WEBHOOK_ACK_WAIT",
        default=30.0,
        minimum=1.0,
        maximum=3600.0,
        doc="seconds before a dead dispatcher's event goes to another (a live dispatcher "
        "keeps extending it while it retries)",
    )
    dead_letter_max_age: float = number(
        "WEBHOOK_DEAD_LETTER_MAX_AGE",
        default=30 * 24 * 3600.0,
        minimum=60.0,
        doc="seconds the `SIGNALING_WEBHOOKS_DEAD` stream keeps a letter",
    )
    dead_letter_max_bytes: int = integer(
        "WEBHOOK_DEAD_MAX_BYTES",
        default=256 * 1024**2,
        minimum=1024,
        doc="bytes the `SIGNALING_WEBHOOKS_DEAD` stream keeps at most (the oldest letters "
        "go first)",
    )
    metrics_host: str = metrics_host()
    metrics_port: int | None = port_or_off(
        "METRICS_PORT",
        default=9103,
        doc="Prometheus metrics port of a dispatcher "
        "([docs/admin.md](docs/admin.md#webhook-metrics))",
    )
    metrics_interval: float = number(
        "WEBHOOK_METRICS_INTERVAL",
        default=5.0,
        minimum=0.1,
        maximum=300.0,
        doc="seconds between two reads of the pending events per log partition (metrics)",
    )
