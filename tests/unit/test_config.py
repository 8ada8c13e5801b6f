"""Settings: every process validates its environment with a clear message."""

import ssl
from pathlib import Path

import pytest
import trustme

from edge.settings import EdgeSettings
from room_actors.settings import ActorSettings
from runtime.config import ConfigError, NatsTls

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


def test_nats_tls_settings_are_read_once_for_every_role(tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("roles")
    ca_file, cert, key = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    env = {"NATS_TLS_CA": str(ca_file), "NATS_TLS_CERT": str(cert), "NATS_TLS_KEY": str(key)}
    edge = EdgeSettings.from_env({"JWT_SECRET": SECRET, **env}).nats_credentials.tls
    actors = ActorSettings.from_env(env).nats_credentials.tls
    assert edge == actors == NatsTls(str(ca_file), str(cert), str(key), first=True)
    assert edge.enabled(["nats://a:1"])
    assert edge.context().verify_mode == ssl.CERT_REQUIRED
    assert not NatsTls().enabled(["nats://a:1"])
    assert NatsTls().enabled(["tls://a:1"])
    assert not ActorSettings.from_env({**env, "NATS_TLS_FIRST": "off"}).nats_credentials.tls.first


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"NATS_TLS_CERT": "/x.pem"}, "NATS_TLS_CERT and NATS_TLS_KEY go together"),
        ({"NATS_TLS_CA": "/nonexistent/ca.pem"}, "NATS_TLS_CA: cannot load /nonexistent/ca.pem"),
        ({"NATS_TLS_CA": __file__}, "NATS_TLS_CA: cannot load"),
        ({"NATS_TLS_CERT": __file__, "NATS_TLS_KEY": __file__}, "NATS_TLS_CERT / NATS_TLS_KEY"),
        ({"NATS_TLS_FIRST": "maybe"}, "NATS_TLS_FIRST must be true or false"),
    ],
)
def test_bad_nats_tls_settings(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        ActorSettings.from_env(env)
