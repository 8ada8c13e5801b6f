"""Settings: every process validates its environment with a clear message."""

import os
import subprocess
import sys

import pytest

from edge.settings import EdgeSettings
from room_actors.settings import ActorSettings
from signaling.config import ConfigError

SECRET = "x" * 40


def test_edge_defaults() -> None:
    settings = EdgeSettings.from_env({"JWT_SECRET": SECRET})
    assert (settings.host, settings.port) == ("127.0.0.1", 8787)
    assert settings.nats_servers == ("nats://127.0.0.1:4222",)
    assert settings.cors_origin == "*"
    assert not settings.calls_configured


def test_secrets_never_appear_in_repr() -> None:
    settings = EdgeSettings.from_env(
        {"JWT_SECRET": SECRET, "CLOUDFLARE_APP_ID": "app", "CLOUDFLARE_APP_SECRET": "calls-secret"}
    )
    assert SECRET not in repr(settings)
    assert "calls-secret" not in repr(settings)
    assert settings.calls_configured


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({}, "JWT_SECRET must be set"),
        ({"JWT_SECRET": "short"}, "at least 32 bytes"),
        ({"JWT_SECRET": SECRET, "EDGE_PORT": "eighty"}, "EDGE_PORT must be an integer"),
        (
            {"JWT_SECRET": SECRET, "EDGE_PORT": "70000"},
            "EDGE_PORT must be at least 0 and at most 65535",
        ),
        ({"JWT_SECRET": SECRET, "NATS_URL": "http://x"}, "NATS_URL"),
        ({"JWT_SECRET": SECRET, "EDGE_ID": "a.b"}, "EDGE_ID"),
        ({"JWT_SECRET": SECRET, "LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be one of"),
        ({"JWT_SECRET": SECRET, "DEFAULT_MAX_PARTICIPANTS": "500"}, "must not exceed"),
    ],
)
def test_edge_bad_values(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        EdgeSettings.from_env(env)


def test_actor_settings() -> None:
    settings = ActorSettings.from_env({"NATS_URL": "nats://a:1, nats://b:2", "ROOM_TTL": "60"})
    assert settings.nats_servers == ("nats://a:1", "nats://b:2")
    assert settings.room_ttl == 60.0
    with pytest.raises(ConfigError, match="ROOM_TTL must be a number"):
        ActorSettings.from_env({"ROOM_TTL": "soon"})


def test_edge_refuses_to_start_without_a_secret() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWT_SECRET")}
    result = subprocess.run(
        [sys.executable, "-m", "edge"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "JWT_SECRET must be set" in result.stderr
