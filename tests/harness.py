"""Real processes for tests: nats-server, room actor workers and edges, each on
free loopback ports, and small clients to drive them."""

import asyncio
import json
import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import websockets
from nats.aio.client import Client as NatsClient
from websockets.asyncio.client import ClientConnection

from bus_schema import buckets, codec, ids, subjects
from bus_schema.commands import GetSnapshot
from bus_schema.state import RoomState
from bus_schema.status import WorkerStatus
from runtime.config import NatsTls
from runtime.natsconn import Role, inbox_prefix
from signaling.cli import wait_ready
from signaling.natsserver import NatsServer, NatsUsers, ServerTls, python_module, terminate

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-and-hs512-0123456789abcdef"
RECV_TIMEOUT = 10.0
RELAXED_LIMITS = {
    "ROOM_CREATIONS_PER_MINUTE": "100000",
    "JOINS_PER_MINUTE": "100000",
    "MAX_CONNECTIONS_PER_ADDRESS": "100000",
    "RATE_LIMIT_MESSAGES": "100000",
    "RATE_LIMIT_BURST": "100000",
    "RATE_LIMIT_BYTES": "1000000000",
    "RATE_LIMIT_BYTES_BURST": "1000000000",
    "DRAIN_DELAY": "0",
}


# The Calls stand-in's credentials in tests (the fixture is ``fake_calls``).
CALLS_APP_ID = "calls-app-1"
CALLS_APP_SECRET = "calls-app-secret-DO-NOT-LEAK-0123456789"
TURN_KEY = "turn-key-1"
TURN_TOKEN = "turn-api-token-DO-NOT-LEAK-987654321"


def calls_env(calls_url: str, **extra: str) -> dict[str, str]:
    """Edge settings pointing at the Calls stand-in at ``calls_url``."""
    return {
        "CLOUDFLARE_APP_ID": CALLS_APP_ID,
        "CLOUDFLARE_APP_SECRET": CALLS_APP_SECRET,
        "CALLS_API_URL": calls_url,
        "CLOUDFLARE_TURN_KEY_ID": TURN_KEY,
        "CLOUDFLARE_TURN_KEY_API_TOKEN": TURN_TOKEN,
        **extra,
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Proc:
    """A ``python -m <module>`` child process with its log file."""

    module: str
    env: dict[str, str]
    log_file: Path
    process: "subprocess.Popen[bytes] | None" = None

    def start(self) -> "Proc":
        self.process = python_module(self.module, self.env, self.log_file)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        assert self.process is not None
        return terminate(self.process, timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


@dataclass
class Edge(Proc):
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@dataclass
class System:
    """One nats-server, actor workers and edges, all real processes."""

    root: Path
    nats: NatsServer = field(init=False)
    """The first (or only) nats-server node."""
    nodes: list[NatsServer] = field(default_factory=list)
    """Every nats-server node (one unless ``start(cluster=3)``)."""
    actors: list[Proc] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    dispatchers: list[Proc] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    _counter: int = 0

    users: NatsUsers = field(default_factory=NatsUsers.generate)
    """The same NATS accounts and permissions as production (nats_auth.conf)."""
    route_password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    """What cluster nodes authenticate their routes with (as nats.conf)."""
    server_tls: ServerTls | None = None
    """TLS on every node's client port (then give ``client_tls``)."""
    route_tls: ServerTls | None = None
    """TLS on the routes between nodes."""
    client_tls: NatsTls | None = None
    """What every process (and `connect`) trusts and presents, as NATS_TLS_*."""
    strays: list[NatsServer] = field(default_factory=list)
    """Servers that are not the system's, started by `stray_node`."""

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.nats = NatsServer(
            data_dir=self.root / "nats",
            log_file=self.root / "nats.log",
            users=self.users,
            tls=self.server_tls,
        )

    def _next(self, kind: str) -> str:
        self._counter += 1
        return f"{kind}-{self._counter}"

    @property
    def nats_url(self) -> str:
        return ",".join(node.url for node in self.nodes) if self.nodes else self.nats.url

    def base_env(self) -> dict[str, str]:
        return {
            "NATS_URL": self.nats_url,
            "JWT_SECRET": JWT_SECRET,
            "LOG_LEVEL": "INFO",
            # Every test client comes from 127.0.0.1 and some send in bursts: the
            # abuse limits are raised here and tested on their own (test_limits).
            **RELAXED_LIMITS,
            **tls_env(self.client_tls),
            **self.extra_env,
        }

    def start_nats(self, port: int = -1) -> None:
        self.nats.port = port
        self.nats.start()
        if not self.nodes:
            self.nodes = [self.nats]

    def start_cluster(self, size: int = 3) -> None:
        """A nats-server cluster on loopback, with fixed ports so a node can be
        restarted where it was."""
        cluster_ports = [free_port() for _ in range(size)]
        routes = tuple(f"nats://127.0.0.1:{port}" for port in cluster_ports)
        self.nodes = [
            NatsServer(
                data_dir=self.root / f"nats-{i}",
                port=free_port(),
                name=f"n{i}",
                cluster_name="signaling",
                cluster_port=cluster_ports[i],
                routes=tuple(r for j, r in enumerate(routes) if j != i),
                route_password=self.route_password,
                log_file=self.root / f"nats-{i}.log",
                users=self.users,
                tls=self.server_tls,
                cluster_tls=self.route_tls,
            )
            for i in range(size)
        ]
        for node in self.nodes:
            node.start()
        self.nats = self.nodes[0]

    def stray_node(self, name: str, **options: Any) -> NatsServer:
        """A nats-server that is not ours, soliciting a route to the first
        node's cluster port as someone on the NATS network could (``options``:
        its route password, TLS...). Stopped with the system."""
        seed = self.nodes[0]
        assert seed.cluster_port is not None, "start_cluster first"
        stray = NatsServer(
            data_dir=self.root / name,
            name=name,
            cluster_name=seed.cluster_name,
            cluster_port=free_port(),
            routes=(f"nats://127.0.0.1:{seed.cluster_port}",),
            log_file=self.root / f"{name}.log",
            **options,
        )
        self.strays.append(stray)
        return stray.start()

    def start_actor(self, **env: str) -> Proc:
        name = self._next("actors")
        proc = Proc(
            "room_actors",
            {
                **self.base_env(),
                **self.users.client_env("actors"),
                "WORKER_ID": name,
                "METRICS_PORT": str(free_port()),
                **env,
            },
            self.root / f"{name}.log",
        ).start()
        self.actors.append(proc)
        return proc

    def start_webhooks(self, **env: str) -> Proc:
        """A webhook dispatcher (give it WEBHOOK_URL and WEBHOOK_SECRET)."""
        name = self._next("webhooks")
        proc = Proc(
            "webhooks",
            {
                **self.base_env(),
                **self.users.client_env("webhooks"),
                "DISPATCHER_ID": name,
                "METRICS_PORT": str(free_port()),
                **env,
            },
            self.root / f"{name}.log",
        ).start()
        self.dispatchers.append(proc)
        return proc

    def start_edge(self, **env: str) -> Edge:
        name = self._next("edge")
        port = free_port()
        edge = Edge(
            "edge",
            {
                **self.base_env(),
                **self.users.client_env("edge"),
                "EDGE_PORT": str(port),
                "EDGE_ID": name,
                **env,
            },
            self.root / f"{name}.log",
            port=port,
        )
        edge.start()
        self.edges.append(edge)
        return edge

    def wait_edge_ready(self, edge: Edge, timeout: float = 30.0) -> None:
        assert edge.process is not None
        try:
            wait_ready(edge.url, edge.process, timeout)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{e}:\n{edge.log()}") from None

    async def wait_actors_ready(self, timeout: float = 30.0) -> None:
        """Until every partition answers a command (an unknown room is fine)."""
        nc = await self.connect()
        try:
            pending = set(range(subjects.PARTITIONS))
            deadline = time.monotonic() + timeout
            while pending and time.monotonic() < deadline:
                for room_id in _rooms_covering(pending):
                    command = GetSnapshot(cmd_id=ids.new_token_id(), room_id=room_id)
                    try:
                        await nc.request(
                            subjects.room_command(room_id), codec.encode(command), timeout=0.5
                        )
                        pending.discard(subjects.partition_of(room_id))
                    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                        await asyncio.sleep(0.05)
            if pending:
                logs = "\n".join(a.log() for a in self.actors)
                raise TimeoutError(f"partitions without an owner: {sorted(pending)}\n{logs}")
        finally:
            await nc.close()

    async def start(self, *, actors: int = 1, edges: int = 1, cluster: int = 0) -> "System":
        if cluster:
            self.start_cluster(cluster)
        else:
            self.start_nats()
        for _ in range(actors):
            self.start_actor()
        new_edges = [self.start_edge() for _ in range(edges)]
        await self.wait_actors_ready()
        for edge in new_edges:
            await asyncio.to_thread(self.wait_edge_ready, edge)
        return self

    async def restart(self, *, actors: int = 1, edges: int = 1) -> "System":
        """Start everything again on the same JetStream folder (after stop or kills)."""
        self.stop()
        self.edges.clear()
        self.actors.clear()
        return await self.start(actors=actors, edges=edges)

    def stop(self) -> None:
        for dispatcher in self.dispatchers:
            if dispatcher.alive():
                dispatcher.stop()
        for edge in self.edges:
            if edge.alive():
                edge.stop()
        for actor in self.actors:
            if actor.alive():
                actor.stop()
        for node in [*(self.nodes or [self.nats]), *self.strays]:
            node.stop()

    def actor(self, worker_id: str) -> Proc:
        return next(a for a in self.actors if a.env["WORKER_ID"] == worker_id)

    async def connect(self, role: Role | None = None, **options: Any) -> NatsClient:
        """A NATS connection of the test's own, as ``role`` with its inbox
        prefix (by default ``admin``: anything, the default prefix)."""
        user = role or "admin"
        if role is not None:
            options.setdefault("inbox_prefix", inbox_prefix(role))
        if self.client_tls is not None:
            options.setdefault("tls", self.client_tls.context())
            options.setdefault("tls_handshake_first", self.client_tls.first)
        password = self.users.passwords[user]
        return await nats.connect(self.nats_url.split(","), user=user, password=password, **options)

    async def bus(self) -> "Bus":
        return Bus(await self.connect())

    def logs(self) -> str:
        every = [*self.actors, *self.edges, *self.dispatchers]
        parts = [f"--- {p.log_file.name}\n{p.log()}" for p in every]
        return "\n".join(parts)


class Bus:
    """A test's own NATS connection, to look at the system as an operator would."""

    def __init__(self, nc: nats.aio.client.Client) -> None:
        self.nc = nc
        self.js = nc.jetstream()

    async def close(self) -> None:
        await self.nc.close()

    async def partition_owner(self, partition: int) -> str | None:
        kv = await self.js.key_value(buckets.LEASES)
        try:
            entry = await kv.get(buckets.partition_key(partition))
        except nats.js.errors.KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return codec.partition_lease.decode(entry.value).worker_id

    async def room_owner(self, room_id: str) -> str | None:
        return await self.partition_owner(subjects.partition_of(room_id))

    async def status(self, worker_id: str) -> WorkerStatus:
        msg = await self.nc.request(subjects.worker_status(worker_id), b"", timeout=5)
        return msgspec.json.decode(msg.data, type=WorkerStatus)

    async def room_state(self, room_id: str, timeout: float = 30.0) -> RoomState | None:
        """The room's state in KV (retried while JetStream elects leaders)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                kv = await self.js.key_value(buckets.ROOM_STATE)
                entry = await kv.get(room_id)
            except nats.js.errors.KeyNotFoundError:
                return None
            except (nats.errors.Error, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
            return codec.room_state.decode(entry.value) if entry.value else None

    async def balanced(self, worker_ids: list[str], timeout: float = 30.0) -> dict[str, list[int]]:
        """Wait until the workers own every partition between them, evenly, and
        the ``actor_leases`` bucket says the same."""
        deadline = time.monotonic() + timeout
        while True:
            owned: dict[str, list[int]] = {}
            try:
                for worker_id in worker_ids:
                    owned[worker_id] = (await self.status(worker_id)).partitions
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                owned = {}
            counts = [len(p) for p in owned.values()]
            every = sorted(p for ps in owned.values() for p in ps)
            if (
                counts
                and every == list(range(subjects.PARTITIONS))
                and max(counts) - min(counts) <= 1
            ):
                return owned
            if time.monotonic() > deadline:
                raise TimeoutError(f"partitions not balanced: {owned}")
            await asyncio.sleep(0.1)


def tls_env(tls: NatsTls | None) -> dict[str, str]:
    """The NATS_TLS_* variables that give a process ``tls``."""
    if tls is None:
        return {}
    env = {"NATS_TLS_FIRST": "on" if tls.first else "off"}
    for name, value in (
        ("NATS_TLS_CA", tls.ca_file),
        ("NATS_TLS_CERT", tls.cert_file),
        ("NATS_TLS_KEY", tls.key_file),
    ):
        if value is not None:
            env[name] = value
    return env


def _rooms_covering(partitions: set[int]) -> list[str]:
    """One random room id per wanted partition."""
    found: dict[int, str] = {}
    while len(found) < len(partitions):
        room_id = ids.new_id()
        partition = subjects.partition_of(room_id)
        if partition in partitions:
            found.setdefault(partition, room_id)
    return list(found.values())


# --- clients ------------------------------------------------------------------


class Api:
    """The HTTP API of one edge."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.AsyncClient(base_url=base_url, timeout=10.0)

    async def close(self) -> None:
        await self.http.aclose()

    async def create_room(self, name: str = "room", **extra: Any) -> str:
        response = await self.http.post("/api/rooms", json={"name": name, **extra})
        assert response.status_code == 200, response.text
        room_id: str = response.json()["room_id"]
        return room_id

    async def join(self, room_id: str, name: str = "Guest") -> dict[str, Any]:
        response = await self.http.post(
            f"/api/rooms/{room_id}/join", json={"participant_name": name}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


class WsClient:
    """A real WebSocket client speaking JSON text frames."""

    def __init__(self, ws: ClientConnection, participant_id: str = "") -> None:
        self.ws = ws
        self.participant_id = participant_id

    @classmethod
    async def connect(
        cls, ws_url: str, token: str, *, participant_id: str = "", subprotocol: bool = False
    ) -> "WsClient":
        if subprotocol:
            ws = await websockets.connect(ws_url, subprotocols=[token], open_timeout=10)  # type: ignore[list-item]
        else:
            ws = await websockets.connect(f"{ws_url}?token={token}", open_timeout=10)
        return cls(ws, participant_id)

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        message: dict[str, Any] = json.loads(raw)
        return message

    async def recv_type(self, kind: str, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        message = await self.recv(timeout)
        assert message.get("type") == kind, message
        return message

    async def closed(self, timeout: float = RECV_TIMEOUT) -> tuple[int | None, str | None]:
        """Wait until the server closes the socket; drain whatever comes before."""

        async def drain() -> None:
            try:
                while True:
                    await self.ws.recv()
            except websockets.ConnectionClosed:
                return

        await asyncio.wait_for(drain(), timeout)
        return self.ws.close_code, self.ws.close_reason

    async def close(self) -> None:
        await self.ws.close()


@dataclass
class Member:
    """A participant: its join answer and its open socket."""

    token: str
    participant_id: str
    name: str
    client: WsClient

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        return await self.client.recv(timeout)

    async def recv_type(self, kind: str, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        return await self.client.recv_type(kind, timeout)

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.client.send(message)


async def enter(api: Api, ws_url: str, room_id: str, name: str) -> Member:
    """Join over HTTP, connect the WebSocket, consume the ``welcome``."""
    joined = await api.join(room_id, name)
    client = await WsClient.connect(
        ws_url, joined["token"], participant_id=joined["participant_id"]
    )
    member = Member(joined["token"], joined["participant_id"], name, client)
    welcome = await member.recv_type("welcome")
    assert welcome["participant_id"] == member.participant_id
    return member


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")
