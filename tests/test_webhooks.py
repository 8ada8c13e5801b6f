"""Webhook signatures and dispatcher settings (no processes)."""

import pytest

from signaling.config import ConfigError
from webhooks import signing
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
