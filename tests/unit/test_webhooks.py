"""Webhook signatures and dispatcher settings (no processes)."""

import base64

import pytest

from runtime.config import ConfigError
from webhooks import signing
from webhooks.dispatcher import refused
from webhooks.settings import WebhookSettings

SECRET = signing.new_secret()
OTHER = signing.new_secret()


def test_a_signature_verifies_and_nothing_else_does() -> None:
    body = b'{"id":"r.1"}'
    headers = signing.headers(signing.keys(SECRET), "r.1", body, now=1_000_000)
    assert signing.verify(SECRET, headers, body, now=1_000_100) == "r.1"
    # Several signatures (a key rotation): any one may match.
    rotated = {**headers, signing.SIGNATURE_HEADER: "v1,AAAA " + headers[signing.SIGNATURE_HEADER]}
    assert signing.verify(SECRET, rotated, body, now=1_000_000) == "r.1"
    bad = [
        (SECRET, {**headers, signing.ID_HEADER: "r.2"}, body, 1_000_000),
        (SECRET, headers, body + b"x", 1_000_000),
        (OTHER, headers, body, 1_000_000),
        (SECRET, headers, body, 1_000_000 + signing.TOLERANCE + 1),
        (SECRET, {k: v for k, v in headers.items() if k != signing.TIMESTAMP_HEADER}, body, 0),
        (SECRET, {**headers, signing.TIMESTAMP_HEADER: "soon"}, body, 1_000_000),
    ]
    for secret, given, content, now in bad:
        with pytest.raises(signing.InvalidSignature):
            signing.verify(secret, given, content, now=now)


def test_the_key_is_the_decoded_secret_as_the_specification_says() -> None:
    """The example of the Standard Webhooks specification (its README and
    every official library's tests): this secret, id, timestamp and payload
    sign to this signature."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    headers = signing.headers(
        signing.keys(secret), "msg_p5jXN8AQM9LWM0D4loKWxJek", body, 1614265330
    )
    assert headers[signing.SIGNATURE_HEADER] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_two_secrets_sign_twice_for_a_rotation() -> None:
    body = b"{}"
    headers = signing.headers(signing.keys(f"{SECRET} {OTHER}"), "r.1", body, now=1_000_000)
    assert len(headers[signing.SIGNATURE_HEADER].split()) == 2
    for secret in (SECRET, OTHER):
        assert signing.verify(secret, headers, body, now=1_000_000) == "r.1"


def test_a_fresh_secret_is_32_random_bytes_in_the_standard_form() -> None:
    made = {signing.new_secret() for _ in range(5)}
    assert len(made) == 5
    for secret in made:
        assert secret.startswith("whsec_")
        assert len(signing.keys(secret)[0]) == 32


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("a-plain-secret-that-is-long-enough-0123456789", "signaling webhook-secret"),
        (f"{SECRET} plain-second-secret", "must be whsec_"),  # one of two is plain
        ("whsec_***", "not valid base64"),
        ("whsec_" + base64.b64encode(b"x" * 23).decode(), "24 to 64 bytes, not 23"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "24 to 64 bytes, not 65"),
        ("   ", "must be set"),
    ],
)
def test_a_secret_not_in_the_standard_form_is_refused_at_start(value: str, says: str) -> None:
    with pytest.raises(ConfigError) as refused_with:
        WebhookSettings.from_env({"WEBHOOK_URL": "https://x/h", "WEBHOOK_SECRET": value})
    message = str(refused_with.value)
    assert "WEBHOOK_SECRET" in message
    assert says in message
    assert all(part not in message for part in value.split())  # never echoed


def test_settings_need_a_url_and_a_secret() -> None:
    with pytest.raises(ConfigError) as missing:
        WebhookSettings.from_env({"WEBHOOK_URL": "https://x/h"})
    assert "signaling webhook-secret" in str(missing.value)
    with pytest.raises(ConfigError):
        WebhookSettings.from_env({"WEBHOOK_SECRET": SECRET})
    with pytest.raises(ConfigError):
        WebhookSettings.from_env({"WEBHOOK_URL": "ftp://x", "WEBHOOK_SECRET": SECRET})
    settings = WebhookSettings.from_env({"WEBHOOK_URL": "https://x/h", "WEBHOOK_SECRET": SECRET})
    assert SECRET not in repr(settings)
    assert settings.retry_for == 3600.0
    rotating = WebhookSettings.from_env(
        {"WEBHOOK_URL": "https://x/h", "WEBHOOK_SECRET": f"{SECRET} {OTHER}"}
    )
    assert OTHER not in repr(rotating)


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
