"""The whole system over TLS, with a CA made by the test: a 3-node cluster with
TLS client ports (mutual TLS) and TLS routes; workers, edges and a webhook
dispatcher connecting with ``tls://`` URLs. What has no certificate from that CA,
or speaks plaintext, is refused."""

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import trustme

from runtime.config import NatsCredentials, NatsTls
from runtime.natsconn import connect
from signaling.natsserver import ServerTls
from tests.harness import Api, System
from tests.system.test_nats_network import route_names, until_joined, until_logged
from tests.system.test_webhooks import FAST, Receiver
from tests.system.traffic import chat, open_rooms, stop_recorders, wait_delivered

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]


@dataclass(frozen=True)
class Pki:
    """A CA of the test's own and the files signed by it."""

    ca: Path
    server: tuple[Path, Path]
    """The nodes' certificate (127.0.0.1, localhost) and key."""
    client: tuple[Path, Path]
    """A certificate and key for the roles (mutual TLS)."""

    def server_tls(self, *, verify: bool = False) -> ServerTls:
        return ServerTls(cert=self.server[0], key=self.server[1], ca=self.ca, verify=verify)

    def client_tls(self) -> NatsTls:
        return NatsTls(
            ca_file=str(self.ca), cert_file=str(self.client[0]), key_file=str(self.client[1])
        )


def make_pki(folder: Path, name: str = "signaling test CA") -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name=name)
    files = {}
    for kind, identities in (("server", ("127.0.0.1", "localhost")), ("client", ("roles",))):
        issued = ca.issue_cert(*identities)
        cert, key = folder / f"{kind}.pem", folder / f"{kind}-key.pem"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        files[kind] = (cert, key)
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return Pki(ca=folder / "ca.pem", server=files["server"], client=files["client"])


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


async def start_tls_system(make_system: Callable[..., System], pki: Pki) -> System:
    system = make_system(KV_REPLICAS="3")
    system.server_tls = pki.server_tls(verify=True)
    system.route_tls = pki.server_tls()
    system.client_tls = pki.client_tls()
    system.start_cluster(3)
    return system


async def test_the_whole_system_runs_over_tls(make_system: Callable[..., System], pki: Pki) -> None:
    started = time.monotonic()
    system = await start_tls_system(make_system, pki)
    assert all(url.startswith("tls://") for url in system.nats_url.split(","))
    receiver = await Receiver().start()
    for _ in range(2):
        system.start_actor()
    edges = [system.start_edge() for _ in range(2)]
    system.start_webhooks(WEBHOOK_URL=receiver.url, **FAST)
    await system.wait_actors_ready(timeout=60)
    for edge in edges:
        await asyncio.to_thread(system.wait_edge_ready, edge, 60)
    api = Api(edges[0].url)
    try:
        # Two clients on two edges, so the room's events cross the TLS routes.
        rooms = await open_rooms(api, [e.ws_url for e in edges], rooms=1, size=2)
        await chat(rooms, 3)
        await wait_delivered(rooms, 3)
        await stop_recorders(rooms)
        await receiver.until(lambda: len(receiver.accepted()) >= 3)  # created, 2 joined
        # Every node has TLS routes to both others, and nothing in plaintext.
        for node in system.nodes:
            assert len(await route_names(node) - {""}) == 2
        connections = []
        async with httpx.AsyncClient(timeout=5) as http:
            for node in system.nodes:
                varz = (await http.get(f"{node.monitor_url}/varz")).json()
                assert (varz["tls_required"], varz["tls_verify"]) == (True, True)
                cluster = varz["cluster"]
                assert (cluster["tls_required"], cluster["tls_verify"]) == (True, True)
                connz = (await http.get(f"{node.monitor_url}/connz")).json()
                connections += connz["connections"] or []
        assert len(connections) >= 5  # 2 workers, 2 edges, 1 dispatcher
        assert all(c.get("tls_version") for c in connections), connections
    finally:
        await api.close()
        await receiver.stop()
    print(f"\nTLS system: up and a message exchanged in {time.monotonic() - started:.1f} s")


async def refused(system: System, **options: Any) -> Exception:
    """Connecting as admin with ``options`` fails; the error it fails with."""
    servers = [url.replace("tls://", "nats://") for url in system.nats_url.split(",")]
    try:
        nc = await nats.connect(
            servers,
            user="admin",
            password=system.users.passwords["admin"],
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=3,
            **options,
        )
    except (OSError, TimeoutError, nats.errors.Error) as e:
        return e
    await nc.close()
    raise AssertionError(f"connected with {options}")


async def plaintext_session(port: int, password: str) -> bytes:
    """Speak the NATS protocol without TLS: CONNECT as admin, PING; what the
    server answers until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        greeting = await asyncio.wait_for(reader.readline(), 10)  # after the TLS-first delay
        assert json.loads(greeting.partition(b" ")[2])["tls_required"]
        connect = {"user": "admin", "pass": password, "verbose": False, "protocol": 1}
        writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_what_has_no_certificate_from_the_ca_is_refused(
    make_system: Callable[..., System], pki: Pki, tmp_path: Path
) -> None:
    system = await start_tls_system(make_system, pki)
    other = make_pki(tmp_path / "other", "someone else's CA")
    # Trusting our CA, with our client certificate: in.
    nc = await system.connect()
    assert nc.is_connected
    await nc.close()
    # No client certificate (mutual TLS): refused by the server.
    await refused(system, tls=ssl.create_default_context(cafile=pki.ca))
    # A client certificate from another CA: refused by the server.
    foreign = ssl.create_default_context(cafile=pki.ca)
    foreign.load_cert_chain(other.client[0], other.client[1])
    await refused(system, tls=foreign)
    # Without our CA (the system's roots) the client refuses the servers.
    error = await refused(system)
    assert "certificate verify failed" in str(error) or isinstance(error, ssl.SSLError), error
    # Plaintext: the server wants TLS, answers no PING and closes the connection.
    port = int(system.nodes[0].url.rsplit(":", 1)[1])
    answer = await plaintext_session(port, system.users.passwords["admin"])
    assert b"PONG" not in answer
    assert answer in (b"", b"-ERR 'Secure Connection - TLS Required'\r\n"), answer  # closed


async def test_a_plaintext_or_foreign_route_into_the_tls_cluster_is_refused(
    make_system: Callable[..., System], pki: Pki, tmp_path: Path
) -> None:
    system = await start_tls_system(make_system, pki)
    # The route password alone is not enough: no TLS, no route.
    seed_log = system.nodes[0].log_file
    assert seed_log is not None
    system.stray_node("plain", route_password=system.route_password)
    await until_logged(seed_log, "first record does not look like a TLS handshake")
    other = make_pki(tmp_path / "other", "someone else's CA")
    system.stray_node(
        "foreign", route_password=system.route_password, cluster_tls=other.server_tls()
    )
    await until_logged(seed_log, "tls: bad certificate")
    for node in system.nodes:
        assert not {"plain", "foreign"} & await route_names(node)
    # The check can see a node join: one with a certificate from our CA does.
    system.stray_node("friend", route_password=system.route_password, cluster_tls=pki.server_tls())
    await until_joined(system, "friend")


async def test_a_client_is_not_talked_out_of_tls(pki: Pki) -> None:
    """A server that greets in plaintext without asking for TLS (as anyone on
    the network could forge) gets a TLS handshake, never the password."""
    password = "the-edge-password-never-in-plaintext"
    received = bytearray()
    greeted = asyncio.Event()

    async def fake_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = {"server_id": "fake", "version": "2.15.1", "auth_required": True}
        writer.write(b"INFO " + json.dumps(info).encode() + b"\r\n")
        with contextlib.suppress(ConnectionError, TimeoutError):
            await writer.drain()
            while chunk := await asyncio.wait_for(reader.read(4096), 2):
                received.extend(chunk)
                greeted.set()
        writer.close()

    server = await asyncio.start_server(fake_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    credentials = NatsCredentials(user="edge", password=password, tls=NatsTls(ca_file=str(pki.ca)))
    try:
        with pytest.raises(ConnectionError):
            await connect(
                [f"tls://127.0.0.1:{port}"],
                name="downgrade",
                role="edge",
                deadline=1.0,
                credentials=credentials,
            )
        await asyncio.wait_for(greeted.wait(), 5)
    finally:
        server.close()
    assert received[:1] == b"\x16", bytes(received[:40])  # a TLS handshake record
    assert password.encode() not in received
