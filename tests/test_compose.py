"""compose.yaml cannot run here (no Docker engine), so it is checked for
consistency: commands exist, every variable is one the configuration knows,
files exist, and the NATS cluster, users and load balancer agree with it."""

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.settings import EdgeSettings
from room_actors.settings import ActorSettings
from signaling.cli import build_parser
from signaling.natsserver import binary
from webhooks.settings import WebhookSettings

Settings = type[EdgeSettings] | type[ActorSettings] | type[WebhookSettings]

ROOT = Path(__file__).parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def role(service: dict[str, Any]) -> str | None:
    command = service.get("command") or []
    return command[1] if command[:1] == ["signaling"] else None


def known_variables(settings: Settings) -> set[str]:
    seen: set[str] = set()
    environ = {"JWT_SECRET": "x" * 40, "WEBHOOK_URL": "http://x/", "WEBHOOK_SECRET": "y" * 40}
    settings.from_env(environ, record=seen)
    return seen


def test_every_signaling_command_parses() -> None:
    roles = {name: role(s) for name, s in SERVICES.items() if role(s)}
    assert sorted(set(roles.values())) == ["actors", "edge", "webhooks"]
    for service in SERVICES.values():
        if role(service):
            build_parser().parse_args(service["command"][1:])


@pytest.mark.parametrize(
    ("kind", "settings"),
    [("edge", EdgeSettings), ("actors", ActorSettings), ("webhooks", WebhookSettings)],
)
def test_every_variable_is_known(kind: str, settings: Settings) -> None:
    known = known_variables(settings)
    for name, service in SERVICES.items():
        if role(service) == kind:
            unknown = set(service["environment"]) - known
            assert not unknown, (name, unknown)


def test_files_and_secrets_exist() -> None:
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    assert (ROOT / "Dockerfile").exists()
    for service in SERVICES.values():
        for secret in service.get("secrets", []):
            assert secret in COMPOSE["secrets"]


def test_nats_cluster_routes_users_and_urls_agree() -> None:
    conf = (ROOT / "nats.conf").read_text()
    routes = set(re.findall(r"nats://([\w-]+):6222", conf))
    nats_services = {n for n, s in SERVICES.items() if str(s.get("image", "")).startswith("nats")}
    assert routes == nats_services
    assert len(nats_services) == 3
    names = {s["environment"]["SERVER_NAME"] for n, s in SERVICES.items() if n in nats_services}
    assert names == nats_services
    auth = (ROOT / "signaling" / "nats_auth.conf").read_text()
    users = set(re.findall(r"user: (\w+)", auth))
    for service in SERVICES.values():
        if role(service):
            environment = service["environment"]
            assert environment["NATS_USER"] in users
            hosts = {url.split("//")[1].split(":")[0] for url in environment["NATS_URL"].split(",")}
            assert hosts == nats_services
    for role_name in ("actors", "edge"):
        assert {role(s) for s in SERVICES.values()} >= {role_name}
    assert sum(1 for s in SERVICES.values() if role(s) == "actors") >= 2
    assert sum(1 for s in SERVICES.values() if role(s) == "edge") >= 2


def test_nats_conf_is_valid_for_nats_server() -> None:
    env = {
        "SERVER_NAME": "nats-1",
        "EDGE_NATS_PASSWORD": "e1",
        "ACTORS_NATS_PASSWORD": "a1",
        "WEBHOOKS_NATS_PASSWORD": "w1",
        "ADMIN_NATS_PASSWORD": "n1",
    }
    result = subprocess.run(
        [str(binary()), "-c", str(ROOT / "nats.conf"), "-t"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_load_balancer_knows_every_edge() -> None:
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    upstreams = set(re.findall(r"server ([\w-]+):(\d+)", nginx))
    edges = {(n, s["environment"]["EDGE_PORT"]) for n, s in SERVICES.items() if role(s) == "edge"}
    assert upstreams == edges
    assert "Upgrade $http_upgrade" in nginx  # WebSockets pass through
