"""compose.yaml cannot run here (no Docker engine), so it is checked for
consistency: commands exist, every variable is one the configuration knows,
files exist, and the NATS cluster, users and load balancer agree with it."""

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from edge.settings import EdgeSettings
from room_actors.settings import ActorSettings
from signaling.cli import build_parser
from signaling.natsserver import binary
from webhooks.settings import WebhookSettings
from webhooks.signing import new_secret

Settings = type[EdgeSettings] | type[ActorSettings] | type[WebhookSettings]

ROOT = Path(__file__).parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def role(service: dict[str, Any]) -> str | None:
    command = service.get("command") or []
    return command[1] if command[:1] == ["signaling"] else None


def known_variables(settings: Settings) -> set[str]:
    seen: set[str] = set()
    environ = {"JWT_SECRET": "x" * 40, "WEBHOOK_URL": "http://x/", "WEBHOOK_SECRET": new_secret()}
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
    for services in (SERVICES, tls_services()):
        for name, service in services.items():
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


def nats_services(services: dict[str, dict[str, Any]]) -> set[str]:
    return {n for n, s in services.items() if str(s.get("image", "")).startswith("nats")}


def test_nats_cluster_routes_users_and_urls_agree() -> None:
    nats_services = {n for n, s in SERVICES.items() if str(s.get("image", "")).startswith("nats")}
    for name in nats_services:
        # Every route carries the route password (nats.conf reads them from NATS_ROUTES).
        routes = SERVICES[name]["environment"]["NATS_ROUTES"]
        hosts = re.findall(r"nats://route:\$\{ROUTE_NATS_PASSWORD\}@([\w-]+):6222", routes)
        assert set(hosts) == nats_services
        assert routes.count("://") == len(hosts)
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


NATS_ENV = {
    "SERVER_NAME": "nats-1",
    "EDGE_NATS_PASSWORD": "e1",
    "ACTORS_NATS_PASSWORD": "a1",
    "WEBHOOKS_NATS_PASSWORD": "w1",
    "ADMIN_NATS_PASSWORD": "n1",
    "ROUTE_NATS_PASSWORD": "r1",
    "NATS_ROUTES": "[nats://route:r1@nats-1:6222, nats://route:r1@nats-2:6222]",
}


def nats_server_accepts(config: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        [str(binary()), "-c", str(config), "-t"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_nats_conf_is_valid_for_nats_server() -> None:
    nats_server_accepts(ROOT / "nats.conf", NATS_ENV)


def test_the_tls_nats_conf_is_valid_for_nats_server(tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("nats-1", "nats-2", "nats-3")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "server-key.pem"))
    tls = {
        "NATS_TLS_CA": str(tmp_path / "ca.pem"),
        "NATS_TLS_CERT": str(tmp_path / "server.pem"),
        "NATS_TLS_KEY": str(tmp_path / "server-key.pem"),
        "NATS_TLS_VERIFY": "true",
    }
    nats_server_accepts(ROOT / "deploy" / "nats-tls.conf", {**NATS_ENV, **tls})


def cluster_block(config: str) -> list[str]:
    """The lines of a configuration's cluster block, without comments and
    without its tls block."""
    block = re.search(r"^cluster \{\n.*?^\}", config, re.DOTALL | re.MULTILINE)
    assert block is not None
    without_tls = re.sub(r"^  tls \{\n.*?^  \}\n", "", block.group(0), flags=re.DOTALL | re.M)
    lines = (line.split("#")[0].rstrip() for line in without_tls.splitlines())
    return [line for line in lines if line]


def test_routes_need_the_route_password_with_or_without_tls() -> None:
    plain = cluster_block((ROOT / "nats.conf").read_text())
    tls = (ROOT / "deploy" / "nats-tls.conf").read_text()
    assert cluster_block(tls) == plain  # the TLS file repeats the block: no drift
    assert "    user: route" in plain
    assert "    password: $ROUTE_NATS_PASSWORD" in plain
    assert "  routes: $NATS_ROUTES" in plain
    assert re.search(r"^cluster \{.*^  tls \{.*?ca_file: \$NATS_TLS_CA", tls, re.DOTALL | re.M)


def test_nats_publishes_no_port() -> None:
    """Client, route and monitoring ports stay on the compose network (the
    monitoring port has no authentication and names every room in use)."""
    for services in (SERVICES, tls_services()):
        for name in nats_services(services):
            assert "ports" not in services[name], name
        published = {p for s in services.values() for p in s.get("ports", [])}
        # The load balancer; Prometheus and Grafana (profile `monitoring`) on
        # the host's loopback only.
        assert published == {"8787:80", "127.0.0.1:9090:9090", "127.0.0.1:3000:3000"}


def tls_services() -> dict[str, dict[str, Any]]:
    """compose.yaml with deploy/compose.tls.yaml on top, merged as compose does
    for what the override uses: environments and lists add up, the rest replaces."""
    override = yaml.safe_load((ROOT / "deploy" / "compose.tls.yaml").read_text())
    assert set(override["services"]) <= set(SERVICES)
    services = {}
    for name, service in SERVICES.items():
        extra = override["services"].get(name, {})
        merged = {**service, **extra}
        merged["environment"] = {**service.get("environment", {}), **extra.get("environment", {})}
        for key in ("volumes", "secrets"):
            merged[key] = [*service.get(key, []), *extra.get(key, [])]
        services[name] = merged
    return services


def test_the_tls_override_wires_every_connection() -> None:
    override = yaml.safe_load((ROOT / "deploy" / "compose.tls.yaml").read_text())
    secrets = override["secrets"]
    services = tls_services()
    nodes = nats_services(services)

    def secret_path(service: dict[str, Any], variable: str) -> None:
        path = service["environment"][variable]
        assert path.startswith("/run/secrets/"), (variable, path)
        name = path.removeprefix("/run/secrets/")
        assert name in service["secrets"]
        assert name in secrets

    for name in nodes:
        node = services[name]
        config = node["command"][-1]
        mounted = {v.split(":")[1]: v.split(":")[0] for v in node["volumes"]}
        assert config in mounted
        assert (ROOT / mounted[config]).exists()
        assert mounted["/etc/nats/nats.conf"] == "./nats.conf"  # what it includes
        for variable in ("NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY"):
            secret_path(node, variable)
        assert node["environment"]["NATS_TLS_VERIFY"] == "${NATS_TLS_VERIFY:-false}"
    for name, service in services.items():
        if role(service):
            urls = service["environment"]["NATS_URL"].split(",")
            assert all(url.startswith("tls://") for url in urls), name
            assert {url.split("//")[1].split(":")[0] for url in urls} == nodes
            secret_path(service, "NATS_TLS_CA")


def test_the_load_balancer_knows_every_edge() -> None:
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    upstreams = set(re.findall(r"server ([\w-]+):(\d+)", nginx))
    edges = {(n, s["environment"]["EDGE_PORT"]) for n, s in SERVICES.items() if role(s) == "edge"}
    assert upstreams == edges
    assert "Upgrade $http_upgrade" in nginx  # WebSockets pass through
