"""Webhook signatures and dispatcher settings (no processes)."""

import pytest

from runtime.config import ConfigError
from webhooks import signing
from webhooks.dispatcher import refused
from webhooks.settings import WebhookSettings

SECRET = "s" * 32


def test_a_signature_verifies_and_nothing_else_does() -> None:
    body = b'{"id":"r.1"}'
    headers = signing.headers(SECRET, "r.1", body, now=1_000_000)
    assert signing.verify(SECRET, headers, body, now=1_000_100) == "r.1"
    # Several signatures (a key rotation): any one may match.
    rotated = {**headers, signing.SIGNATURE_HEADER: "v1,AAAA " + headers[signing.SIGNATURE_HEADER]}
    assert signing.verify(SECRET, rotated, body, now=1_000_000) == "r.1"
    bad = [
        (SECRET, {**headers, signing.ID_HEADER: "r.2"}, body, 1_000_000),
        (SECRET, headers, body + b"x", 1_000_000),
        ("t" * 32, headers, body, 1_000_000),
        (SECRET, headers, body, 1_000_000 + signing.TOLERANCE + 1),
        (SECRET, {k: v for k, v in headers.items() if k != signing.TIMESTAMP_HEADER}, body, 0),
        (SECRET, {**headers, signing.TIMESTAMP_HEADER: "soon"}, body, 1_000_000),
    ]
    for secret, given, content, now in bad:
        with pytest.raises(signing.InvalidSignature):
            signing.verify(secret, given, content, now=now)


def test_settings_need_a_url_and_a_long_secret() -> None:
    with pytest.raises(ConfigError):
        WebhookSettings.from_env({"WEBHOOK_SECRET": SECRET})
    with pytest.raises(ConfigError):
        WebhookSettings.from_env({"WEBHOOK_URL": "ftp://x", "WEBHOOK_SECRET": SECRET})
    with pytest.raises(ConfigError):
        WebhookSettings.from_env({"WEBHOOK_URL": "http://x/", "WEBHOOK_SECRET": "short"})
    settings = WebhookSettings.from_env({"WEBHOOK_URL": "https://x/h", "WEBHOOK_SECRET": SECRET})
    assert SECRET not in repr(settings)
    assert settings.retry_for == 3600.0


def test_only_a_final_4xx_is_refused_for_good() -> None:
    for status in (400, 401, 403, 404, 409, 410, 413, 422, 451, 499):
        assert refused(status), status
    # Timeouts, rate limits, server errors, redirects: retried with backoff.
    for status in (408, 429, 500, 502, 503, 504, 301, 302, 100, 200):
        assert not refused(status), status


def test_settings_bound_the_dead_letters_and_serve_metrics() -> None:
    base = {"WEBHOOK_URL": "https://x/h", "WEBHOOK_SECRET": SECRET}
    settings = WebhookSettings.from_env(base)
    assert settings.dead_letter_max_bytes == 256 * 1024**2
    assert (settings.metrics_host, settings.metrics_port) == ("127.0.0.1", 9103)
    assert settings.metrics_interval == 5.0
    assert WebhookSettings.from_env({**base, "METRICS_PORT": "off"}).metrics_port is None
    custom = WebhookSettings.from_env(
        {**base, "WEBHOOK_DEAD_MAX_BYTES": "4096", "METRICS_PORT": "9200"}
    )
    assert (custom.dead_letter_max_bytes, custom.metrics_port) == (4096, 9200)
    for name, value in (
        ("WEBHOOK_DEAD_MAX_BYTES", "100"),
        ("WEBHOOK_DEAD_MAX_BYTES", "lots"),
        ("METRICS_PORT", "70000"),
        ("METRICS_PORT", "none"),
        ("WEBHOOK_METRICS_INTERVAL", "0"),
    ):
        with pytest.raises(ConfigError, match=name):
            WebhookSettings.from_env({**base, name: value})
