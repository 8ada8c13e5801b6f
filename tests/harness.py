"""Real processes for tests (`System`: a `signaling.cluster.LocalCluster` with
the tests' settings) and small clients to drive them."""

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import msgspec
import nats
import websockets
from nats.aio.client import Client as NatsClient
from websockets.asyncio.client import ClientConnection

from bus_schema import buckets, codec, subjects
from bus_schema.state import RoomState
from bus_schema.status import WorkerStatus
from runtime.natsconn import Role, inbox_prefix
from signaling.cluster import Child as Proc
from signaling.cluster import LocalCluster, free_port
from tests.waiting import eventually
from tools.fakecalls import FakeCalls, FakeCallsConfig, FakeCallsServer

__all__ = ["Proc", "free_port"]

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


@contextlib.asynccontextmanager
async def calls_stand_in(*, rate_limit_per_second: int = 50) -> AsyncIterator[FakeCallsServer]:
    """The local stand-in for Cloudflare's Calls API (the only stand-in we use),
    knowing the tests' app and TURN key."""
    config = FakeCallsConfig(
        apps={CALLS_APP_ID: CALLS_APP_SECRET},
        turn_keys={TURN_KEY: TURN_TOKEN},
        rate_limit_per_second=rate_limit_per_second,
    )
    server = await FakeCallsServer(FakeCalls(config)).start()
    try:
        yield server
    finally:
        await server.stop()


@dataclass
class CallsWorld:
    """A system whose edges use a Calls stand-in, with clients of its first edge."""

    system: "System"
    server: FakeCallsServer
    api: "Api"
    http: httpx.AsyncClient
    """Plain HTTP to the first edge (the Calls proxy's routes)."""

    @property
    def calls(self) -> FakeCalls:
        return self.server.fake


@contextlib.asynccontextmanager
async def system_with_calls(folder: Path, **extra_env: str) -> AsyncIterator[CallsWorld]:
    """A `System` in ``folder`` pointed at a stand-in that never rate-limits
    (tests make many calls quickly), for a module or a test."""
    async with calls_stand_in(rate_limit_per_second=100_000) as server:
        system = System(folder, extra_env={**calls_env(server.base_url), **extra_env})
        try:
            await system.start()
            api = Api(system.edges[0].url)
            try:
                async with httpx.AsyncClient(base_url=system.edges[0].url, timeout=60) as http:
                    yield CallsWorld(system, server, api, http)
            finally:
                await api.close()
        finally:
            system.stop()


class CallsCaller:
    """A token's holder calling the Calls proxy with ``http`` (an edge's)."""

    def __init__(self, http: httpx.AsyncClient, token: str, participant_id: str) -> None:
        self.http = http
        self.token = token
        self.pid = participant_id
        self.session_id = ""

    async def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """``body``: JSON to encode, or text/bytes sent as they are."""
        content = body if isinstance(body, str | bytes) else None
        return await self.http.request(
            method,
            f"/cloudflare{path}",
            json=None if content is not None else body,
            content=content,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )

    async def create_session(self) -> str:
        response = await self.call("POST", "/session")
        assert response.status_code == 201, response.text
        self.session_id = response.json()["sessionId"]
        return self.session_id


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


_R = TypeVar("_R")
_opened: list[Callable[[], Awaitable[object]]] = []


def opened(resource: _R) -> _R:
    """Remember a connection a test opened (anything with an async ``close``
    or, as httpx clients, ``aclose``), so `close_leftovers` closes it after the
    test even if the test failed before closing it. A WebSocket is dropped
    rather than closed: a polite close waits for the server's close frame
    behind every message the test left unread."""
    if isinstance(resource, WsClient):
        _opened.append(_dropper(resource.ws))
    elif isinstance(resource, ClientConnection):
        _opened.append(_dropper(resource))
    else:
        _opened.append(getattr(resource, "aclose", None) or resource.close)  # type: ignore[attr-defined]
    return resource


def _dropper(ws: ClientConnection) -> Callable[[], Awaitable[None]]:
    async def drop() -> None:
        ws.transport.abort()

    return drop


def background(work: Coroutine[Any, Any, _R]) -> "asyncio.Task[_R]":
    """A task for a test's background work (a reader, a talker), cancelled after
    the test if it is still running."""
    task = asyncio.create_task(work)

    async def cancel() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    _opened.append(cancel)
    return task


def opened_count() -> int:
    """How many connections `opened` remembers: give it to `close_leftovers`
    to close only those opened later."""
    return len(_opened)


async def close_leftovers(since: int = 0) -> None:
    """Close, newest first, every connection `opened` remembered after the
    first ``since`` (closing twice is harmless for each kind); one that will
    not close within a few seconds is abandoned, never waited for."""
    while len(_opened) > since:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_opened.pop()(), 5)


@dataclass
class System(LocalCluster):
    """A whole system of real processes for a test (`LocalCluster` with the
    tests' settings), and the test's own ways into it."""

    extra_env: dict[str, str] = field(default_factory=dict)
    """Settings for every role, on top of the tests' defaults."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.env = {
            "JWT_SECRET": JWT_SECRET,
            "LOG_LEVEL": "INFO",
            # Every test client comes from 127.0.0.1 and some send in bursts: the
            # abuse limits are raised here and tested on their own (test_limits).
            **RELAXED_LIMITS,
            **self.extra_env,
        }

    def start_webhooks(self, **env: str) -> Proc:
        """A dispatcher with its metrics on a free port (give it WEBHOOK_URL and
        WEBHOOK_SECRET)."""
        return super().start_webhooks(**{"METRICS_PORT": str(free_port()), **env})

    async def wait_actors_ready(self, timeout: float = 30.0) -> None:
        """Until every partition is served: the live workers' service endpoints
        (``nats micro info signaling-actors``) cover them all."""
        pending = set(range(subjects.PARTITIONS))

        async def every_partition_served() -> bool:
            alive = sum(1 for a in self.actors if a.alive())
            replies: asyncio.Queue[bytes] = asyncio.Queue()

            async def collect(msg: nats.aio.msg.Msg) -> None:
                await replies.put(msg.data)

            inbox = nc.new_inbox()
            subscription = await nc.subscribe(inbox, cb=collect)
            try:
                await nc.publish("$SRV.INFO.signaling-actors", b"", reply=inbox)
                served: set[int] = set()
                with contextlib.suppress(TimeoutError):
                    for _ in range(alive):
                        data = await asyncio.wait_for(replies.get(), 1.0)
                        if not data:
                            break  # no responders: no worker yet
                        info = json.loads(data)
                        for endpoint in info.get("endpoints") or []:
                            partition = (endpoint.get("metadata") or {}).get("partition")
                            if partition is not None:
                                served.add(int(partition))
            finally:
                await subscription.unsubscribe()
            pending.difference_update(served)
            return not pending

        def unowned() -> str:
            logs = "\n".join(a.log() for a in self.actors)
            return f"partitions without an owner: {sorted(pending)}\n{logs}"

        nc = await self.connect()
        try:
            await eventually(every_partition_served, timeout=timeout, message=unowned)
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
        nc = await nats.connect(self.nats_url.split(","), user=user, password=password, **options)
        return opened(nc)

    async def bus(self) -> "Bus":
        return Bus(await self.connect())


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

        async def read() -> tuple[RoomState | None]:
            kv = await self.js.key_value(buckets.ROOM_STATE)
            try:
                entry = await kv.get(room_id)
            except nats.js.errors.KeyNotFoundError:
                return (None,)
            return (codec.room_state.decode(entry.value) if entry.value else None,)

        (state,) = await eventually(
            read,
            timeout=timeout,
            interval=0.2,
            message=f"room {room_id}: KV unreadable",
            retry_on=(nats.errors.Error, TimeoutError),
        )
        return state

    async def balanced(self, worker_ids: list[str], timeout: float = 30.0) -> dict[str, list[int]]:
        """Wait until the workers own every partition between them, evenly."""
        owned: dict[str, list[int]] = {}

        async def balance() -> dict[str, list[int]] | None:
            owned.clear()
            try:
                for worker_id in worker_ids:
                    owned[worker_id] = (await self.status(worker_id)).partitions
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                owned.clear()
            counts = [len(p) for p in owned.values()]
            every = sorted(p for ps in owned.values() for p in ps)
            if (
                counts
                and every == list(range(subjects.PARTITIONS))
                and max(counts) - min(counts) <= 1
            ):
                return dict(owned)
            return None

        return await eventually(
            balance,
            timeout=timeout,
            interval=0.1,
            message=lambda: f"partitions not balanced: {owned}",
        )


# --- clients ------------------------------------------------------------------


class Api:
    """The HTTP API of one edge."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.AsyncClient(base_url=base_url, timeout=10.0)
        opened(self)

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
        opened(self)

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


def admin_jwt(ttl: int = 3600) -> str:
    """A credential for the room service API: an admin JWT signed with the
    tests' ``JWT_SECRET`` (so it works on every test system, with or without
    ``ADMIN_API_KEY``)."""
    now = int(time.time())
    claims = {"admin": True, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


class RoomService:
    """The room service API (``/api/admin``) of one edge, called as an
    operator or the app's backend calls it (with an admin JWT)."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=f"{base_url}/api/admin",
            headers={"Authorization": f"Bearer {admin_jwt()}"},
            timeout=10.0,
        )
        opened(self)

    async def close(self) -> None:
        await self.http.aclose()

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer of a call that must succeed (200)."""
        response = await self.http.request(method, path, **kwargs)
        assert response.status_code == 200, (method, path, response.text)
        return response.json()

    async def mint(self, room_id: str, **body: Any) -> dict[str, Any]:
        """A participant token for ``room_id`` (``POST /rooms/{id}/tokens`` with
        ``body``: identity, name, grants, ttl): ``{"token", "participant_id",
        "expires_at"}``."""
        minted: dict[str, Any] = await self.ok("POST", f"/rooms/{room_id}/tokens", json=body)
        return minted


async def arrive(
    ws_url: str, token: str, participant_id: str, name: str = ""
) -> tuple[Member, dict[str, Any]]:
    """Connect with a token got any way (minted, joined, made offline) and
    consume the ``welcome``: the member and its welcome."""
    client = await WsClient.connect(ws_url, token, participant_id=participant_id)
    member = Member(token, participant_id, name, client)
    welcome = await member.recv_type("welcome")
    assert welcome["participant_id"] == participant_id, welcome
    return member, welcome


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")
