"""Settings: every process validates its environment with a clear message."""

import dataclasses
import ssl
from pathlib import Path

import pytest
import trustme

from edge.settings import EdgeSettings
from room_actors.settings import ActorSettings
from runtime.config import ConfigError, NatsTls
from runtime.settings import Settings, integer, settings_class
from webhooks.settings import WebhookSettings

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
    assert (
        edge
        == actors
        == NatsTls(ca_file=str(ca_file), cert_file=str(cert), key_file=str(key), first=True)
    )
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


def test_every_secret_is_hidden_in_repr_and_everything_else_shown() -> None:
    secrets = {
        "JWT_SECRET": "j" * 40,
        "JWT_SECRET_PREVIOUS": "p" * 40,
        "CLOUDFLARE_APP_SECRET": "calls-secret",
        "CLOUDFLARE_TURN_KEY_API_TOKEN": "turn-token",
        "ADMIN_API_KEY": "a" * 30,
        "NATS_USER": "edge",
        "NATS_PASSWORD": "nats-password",
        "WEBHOOK_SECRET": "whsec_d2ViaG9vay1zZWNyZXQtZm9yLXRlc3RzLTAxMjM0NTY=",
    }
    shown = {"WEBHOOK_URL": "https://x/h", "WEBHOOK_TIMEOUT": "7", "EDGE_PORT": "9999"}
    for settings in (
        EdgeSettings.from_env({**secrets, **shown}),
        ActorSettings.from_env({**secrets, **shown}),
        WebhookSettings.from_env({**secrets, **shown}),
    ):
        text = repr(settings)
        assert not [value for value in secrets.values() if value in text and value != "edge"]
        assert "user='edge'" in text
    assert "port=9999" in repr(EdgeSettings.from_env({**secrets, **shown}))
    assert "timeout=7.0" in repr(WebhookSettings.from_env({**secrets, **shown}))


def test_secrets_may_be_read_from_files(tmp_path: Path) -> None:
    (tmp_path / "jwt").write_text(SECRET + "\n")
    settings = EdgeSettings.from_env({"JWT_SECRET_FILE": str(tmp_path / "jwt")})
    assert settings.jwt_secret == SECRET
    with pytest.raises(ConfigError, match="JWT_SECRET_FILE: cannot read"):
        EdgeSettings.from_env({"JWT_SECRET_FILE": str(tmp_path / "missing")})


def test_a_default_follows_the_variable_that_bounds_it() -> None:
    small = EdgeSettings.from_env({"JWT_SECRET": SECRET, "MAX_PARTICIPANTS_LIMIT": "5"})
    assert (small.default_max_participants, small.max_participants_limit) == (5, 5)
    bigger = EdgeSettings.from_env({"JWT_SECRET": SECRET, "MAX_PARTICIPANTS_LIMIT": "500"})
    assert bigger.default_max_participants == 10


def test_empty_stun_urls_mean_none() -> None:
    assert EdgeSettings.from_env({"JWT_SECRET": SECRET, "STUN_URLS": ""}).stun_urls == ()
    assert EdgeSettings.from_env({"JWT_SECRET": SECRET}).stun_urls == (
        "stun:stun.cloudflare.com:3478",
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HEARTBEAT_INTERVAL": "nan"}, "HEARTBEAT_INTERVAL must be a number, got 'nan'"),
        ({"JWT_SECRET": "short"}, "JWT_SECRET must be at least 32 bytes long"),
        ({"ADMIN_API_KEY": "short"}, "ADMIN_API_KEY must be at least 24 characters long"),
        (
            {"MAX_FRAME_BYTES": "4096", "MAX_BROADCAST_BYTES": "8192"},
            "MAX_BROADCAST_BYTES must not exceed MAX_FRAME_BYTES (4096), got 8192",
        ),
        ({"CALLS_API_URL": "ftp://x"}, "CALLS_API_URL must be an http(s) URL"),
        ({"CALLS_PROXY_AUTH": "maybe"}, "CALLS_PROXY_AUTH must be true or false, got 'maybe'"),
    ],
)
def test_messages_name_the_variable_and_never_a_secret(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        EdgeSettings.from_env({"JWT_SECRET": SECRET, **env})
    assert str(raised.value) == message


def test_declarations_are_checked_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="LOW: its bound HIGH is not declared before it"):

        @settings_class
        class Unordered(Settings):
            low: int = integer("LOW", default=1, maximum="HIGH", doc="low")
            high: int = integer("HIGH", default=2, doc="high")

    with pytest.raises(TypeError, match="its default 0 is outside its bounds"):

        @settings_class
        class Outside(Settings):
            size: int = integer("SIZE", default=0, minimum=1, doc="size")

    with pytest.raises(TypeError, match="a default made by a factory needs `shown`"):

        @settings_class
        class Unshown(Settings):
            name: str = dataclasses.field(
                default_factory=str,
                metadata=dataclasses.fields(ActorSettings)[0].metadata,
            )
