"""Access control at the Calls proxy (issue 16, docs/access.md): grants on every
call (a pull needs can_subscribe, a push can_publish, a session one of them),
and membership on every call (banned, revoked, removed: 403), through a real
edge and actor against the Calls stand-in. Signaling of a participant the
proxy refuses keeps working."""

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio

from bus_schema.closecodes import CloseCode
from tests.harness import (
    JWT_SECRET,
    Api,
    CallsCaller,
    Member,
    RoomService,
    System,
    arrive,
    enter,
    system_with_calls,
)
from tests.waiting import eventually
from tools.fakecalls import FakeCalls, sdp

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class World:
    system: System
    calls: FakeCalls
    api: Api
    service: RoomService
    http: httpx.AsyncClient

    @property
    def ws_url(self) -> str:
        return self.system.edges[0].ws_url

    def served_since(self, mark: int, *session_ids: str) -> list[str]:
        """The upstream paths the stand-in served since ``mark`` that create a
        session or touch one of ``session_ids`` (not the cleanup of earlier
        tests' leavers, which may reach it meanwhile)."""
        return [
            s.path
            for s in self.calls.served[mark:]
            if s.path.endswith("/sessions/new")
            or any(sid and f"/sessions/{sid}" in s.path for sid in session_ids)
        ]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """One system and one Calls stand-in for the whole module: each test its own rooms."""
    async with system_with_calls(tmp_path_factory.mktemp("access-calls")) as calls_world:
        service = RoomService(calls_world.system.edges[0].url)
        try:
            yield World(
                calls_world.system, calls_world.calls, calls_world.api, service, calls_world.http
            )
        finally:
            await service.close()


class Caller(CallsCaller):
    """A token's holder using the proxy (and, once connected, its socket)."""

    def __init__(self, world: World, token: str, participant_id: str) -> None:
        super().__init__(world.http, token, participant_id)
        self.world = world
        self.member: Member | None = None

    @property
    def socket(self) -> Member:
        assert self.member is not None, "not connected"
        return self.member

    async def connect(self, replays: int = 0) -> dict[str, Any]:
        """Open the WebSocket; the welcome. ``replays``: the sessions of others
        announced before, replayed after the welcome (consumed here)."""
        self.member, welcome = await arrive(self.world.ws_url, self.token, self.pid)
        for _ in range(replays):
            await self.member.recv_type("cloudflare-session")
        return welcome

    async def push(self, name: str) -> httpx.Response:
        offer = sdp.offer([sdp.Media("audio", "0")])
        return await self.call(
            "POST",
            f"/session/{self.session_id}/tracks/new",
            {
                "sessionDescription": {"type": "offer", "sdp": offer},
                "tracks": [{"location": "local", "mid": "0", "trackName": name}],
            },
        )

    async def pull(self, publisher: "Caller", name: str) -> httpx.Response:
        return await self.call(
            "POST",
            f"/session/{self.session_id}/tracks/new",
            {
                "tracks": [
                    {"location": "remote", "sessionId": publisher.session_id, "trackName": name}
                ]
            },
        )

    async def channel(self, publisher: "Caller", location: str = "remote") -> httpx.Response:
        item = {"location": location, "dataChannelName": "chat"}
        if location == "remote":
            item["sessionId"] = publisher.session_id
        return await self.call(
            "POST", f"/session/{self.session_id}/datachannels/new", {"dataChannels": [item]}
        )


async def minted(world: World, room_id: str, **body: Any) -> Caller:
    """A minted token, not connected."""
    answer = await world.service.mint(room_id, **body)
    return Caller(world, answer["token"], answer["participant_id"])


async def joined(world: World, room_id: str, name: str) -> Caller:
    """A join token (no identity, every grant), not connected."""
    answer = await world.api.join(room_id, name)
    return Caller(world, answer["token"], answer["participant_id"])


async def publisher(world: World, room_id: str, name: str) -> Caller:
    """A connected participant with a session and a pushed track ``<name>-audio``,
    announced to the room (and known to it before this returns)."""
    caller = await joined(world, room_id, name)
    await caller.connect()
    await caller.create_session()
    assert (await caller.push(f"{name}-audio")).status_code == 200
    track = {"trackName": f"{name}-audio", "kind": "audio"}
    await caller.socket.send(
        {"type": "cloudflare-session", "sessionId": caller.session_id, "tracks": [track]}
    )

    async def announced() -> bool:
        room = await world.service.ok("GET", f"/rooms/{room_id}")
        return any(p["session_id"] == caller.session_id for p in room["participants"])

    await eventually(announced, timeout=10, message=f"{name}'s session never announced")
    return caller


def refusal(response: httpx.Response) -> tuple[int, str]:
    code: str = response.json().get("code", "")
    return response.status_code, code


GRANT_DENIED = (403, "grant_denied")


# --- grants -----------------------------------------------------------------------------------


async def test_without_can_subscribe_a_pull_is_refused_and_signaling_still_works(
    world: World,
) -> None:
    room_id = await world.api.create_room("no pulls")
    ann = await publisher(world, room_id, "Ann")  # an old join token: every grant
    viewer = await minted(world, room_id, name="Viewer", grants={"can_subscribe": False})
    await viewer.connect(replays=1)
    assert (await ann.socket.recv_type("join"))["from"] == viewer.pid
    await viewer.create_session()  # it may publish: it needs a session

    mark = len(world.calls.served)
    assert refusal(await viewer.pull(ann, "Ann-audio")) == GRANT_DENIED
    assert refusal(await viewer.channel(ann)) == GRANT_DENIED
    mixed = await viewer.call(
        "POST",
        f"/session/{viewer.session_id}/tracks/new",
        {
            "tracks": [
                {"location": "local", "mid": "0", "trackName": "viewer-audio"},
                {"location": "remote", "sessionId": ann.session_id, "trackName": "Ann-audio"},
            ]
        },
    )
    assert refusal(mixed) == GRANT_DENIED
    # Refused before Cloudflare hears of it.
    assert world.served_since(mark, viewer.session_id) == []
    pulled = world.calls.sessions[viewer.session_id].tracks.values()
    assert not any(t.location == "remote" for t in pulled)

    # What it may do still works: push, and signal.
    assert (await viewer.push("viewer-audio")).status_code == 200
    await viewer.socket.send(
        {
            "type": "cloudflare-session",
            "sessionId": viewer.session_id,
            "tracks": [{"trackName": "viewer-audio", "kind": "audio"}],
        }
    )
    assert (await ann.socket.recv_type("cloudflare-session"))["sessionId"] == viewer.session_id
    await viewer.socket.send({"type": "track-state", "kind": "audio", "enabled": False})
    assert (await ann.socket.recv_type("track-state"))["from"] == viewer.pid
    await viewer.socket.send({"type": "chat", "text": "I can only watch... nothing"})
    assert (await ann.socket.recv_type("chat"))["from"] == viewer.pid
    await viewer.socket.send({"type": "answer", "to": ann.pid, "sdp": "v=0"})
    assert (await ann.socket.recv_type("answer"))["from"] == viewer.pid
    # The same pull with every grant goes through.
    bob = await joined(world, room_id, "Bob")
    await bob.create_session()
    assert (await bob.channel(ann)).status_code == 200
    assert (await bob.pull(ann, "Ann-audio")).status_code == 200
    for caller in (ann, viewer):
        await caller.socket.client.close()


@pytest.mark.parametrize(
    ("grants", "location"),
    [
        pytest.param({"can_subscribe": False}, "remote", id="remote without can_subscribe"),
        pytest.param({"can_publish": False}, "local", id="local without can_publish"),
    ],
)
async def test_datachannels_establish_obeys_the_grants_as_datachannels_new_does(
    world: World, grants: dict[str, bool], location: str
) -> None:
    """``datachannels/establish`` may name another session (the proxy checks
    that it is in the room): a remote item naming one subscribes, a local one
    publishes, as in ``datachannels/new``."""
    room_id = await world.api.create_room("establish")
    ann = await publisher(world, room_id, "Ann")
    caller = await minted(world, room_id, grants=grants)
    await caller.create_session()
    item = {"location": location, "dataChannelName": "chat"}
    if location == "remote":
        item["sessionId"] = ann.session_id
    mark = len(world.calls.served)
    established = await caller.call(
        "POST", f"/session/{caller.session_id}/datachannels/establish", {"dataChannel": item}
    )
    assert refusal(established) == GRANT_DENIED
    assert world.served_since(mark, caller.session_id) == []
    await ann.socket.client.close()


async def test_without_can_publish_a_push_is_refused_and_a_pull_works(world: World) -> None:
    room_id = await world.api.create_room("no pushes")
    ann = await publisher(world, room_id, "Ann")
    viewer = await minted(world, room_id, name="Viewer", grants={"can_publish": False})
    await viewer.connect(replays=1)
    await viewer.create_session()  # it may subscribe: it needs a session

    mark = len(world.calls.served)
    assert refusal(await viewer.push("viewer-audio")) == GRANT_DENIED
    assert refusal(await viewer.channel(ann, location="local")) == GRANT_DENIED
    assert world.served_since(mark, viewer.session_id) == []
    assert (await viewer.pull(ann, "Ann-audio")).status_code == 200
    await viewer.socket.send({"type": "cloudflare-session", "sessionId": viewer.session_id})
    assert (await viewer.socket.recv_type("error"))["code"] == "grant_denied"
    for caller in (ann, viewer):
        await caller.socket.client.close()


async def test_a_token_with_neither_publish_nor_subscribe_gets_no_session(world: World) -> None:
    room_id = await world.api.create_room("no media")
    texter = await minted(world, room_id, grants={"can_publish": False, "can_subscribe": False})
    mark = len(world.calls.served)
    assert refusal(await texter.call("POST", "/session")) == GRANT_DENIED
    assert world.served_since(mark) == []  # no session created
    # Still a member: its TURN credentials, its socket.
    assert (await texter.call("GET", "/ice-servers")).status_code == 200
    await texter.connect()
    await texter.socket.client.close()


async def test_a_hidden_recorder_pulls_every_track_unseen(world: World) -> None:
    room_id = await world.api.create_room("recorded call")
    ann = await publisher(world, room_id, "Ann")
    recorder = await minted(
        world, room_id, identity="recorder", grants={"hidden": True, "can_publish": False}
    )
    welcome = await recorder.connect()
    assert ann.pid in {p["id"] for p in welcome["participants"]}
    assert (await recorder.socket.recv_type("cloudflare-session"))["sessionId"] == ann.session_id
    await recorder.create_session()
    assert (await recorder.pull(ann, "Ann-audio")).status_code == 200
    # Nobody heard of it: the next thing Ann hears is Bob.
    bob = await enter(world.api, world.ws_url, room_id, "Bob")
    assert (await ann.socket.recv_type("join"))["from"] == bob.participant_id
    for member in (ann.socket, recorder.socket, bob):
        await member.client.close()


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"grants": {"can_fly": True}}, id="unknown grant"),
        pytest.param({"grants": {"can_subscribe": "yes"}}, id="grant of another type"),
        pytest.param({"identity": "x" * 129}, id="identity of 129 characters"),
    ],
)
async def test_a_hand_made_token_with_bad_claims_is_refused_by_the_proxy(
    world: World, claims: dict[str, Any]
) -> None:
    room_id = await world.api.create_room("forged")
    now = int(time.time())
    body = {
        "room_id": room_id,
        "participant_id": str(uuid.uuid4()),
        "participant_name": "Forger",
        "iat": now,
        "exp": now + 600,
        **claims,
    }
    forged = Caller(world, jwt.encode(body, JWT_SECRET, algorithm="HS256"), body["participant_id"])
    mark = len(world.calls.served)
    assert refusal(await forged.call("POST", "/session")) == (401, "invalid_token")
    assert world.served_since(mark) == []  # no session created


# --- membership: bans, revocation, removal ---------------------------------------------------


async def test_a_revoked_token_is_refused_by_the_proxy_and_a_new_one_works_at_once(
    world: World,
) -> None:
    room_id = await world.api.create_room("revoked")
    ann = await publisher(world, room_id, "Ann")
    early = await minted(world, room_id, identity="early")  # fresh, never connected
    assert (await early.call("GET", "/ice-servers")).status_code == 200
    await world.service.ok("POST", f"/rooms/{room_id}/revoke-tokens")
    assert (await ann.socket.client.closed())[0] == CloseCode.NOT_IN_ROOM

    creates = sum(1 for s in world.calls.served if s.path.endswith("/sessions/new"))
    for caller, method, path in (
        (ann, "GET", f"/session/{ann.session_id}"),
        (ann, "POST", "/session"),
        (ann, "GET", "/ice-servers"),
        (early, "POST", "/session"),
        (early, "GET", "/ice-servers"),
    ):
        refused = await caller.call(method, path)
        assert refusal(refused) == (403, "token_revoked"), (method, path, refused.text)
    assert sum(1 for s in world.calls.served if s.path.endswith("/sessions/new")) == creates

    # Tokens issued after it work at once, before their socket connects too.
    fresh = await minted(world, room_id, identity="early")
    await fresh.create_session()
    again = await joined(world, room_id, "Ann again")
    await again.create_session()
    assert (await again.push("again-audio")).status_code == 200
    await fresh.connect()
    pulled = await fresh.pull(again, "again-audio")
    assert pulled.status_code == 200, pulled.text
    assert pulled.json()["tracks"][0]["mid"]
    await fresh.socket.client.close()


async def test_a_banned_identity_is_refused_by_the_proxy_until_the_ban_is_lifted(
    world: World,
) -> None:
    room_id = await world.api.create_room("banned")
    ann = await publisher(world, room_id, "Ann")
    mallory = await minted(world, room_id, identity="mallory")
    await mallory.connect(replays=1)
    await mallory.create_session()
    assert (await ann.socket.recv_type("join"))["from"] == mallory.pid

    await world.service.ok("POST", f"/rooms/{room_id}/bans", json={"identity": "mallory"})
    await mallory.socket.recv_type("kicked")
    assert (await mallory.socket.client.closed())[0] == CloseCode.NOT_IN_ROOM
    fresh = await minted(world, room_id, identity="mallory")  # never connected
    mark = len(world.calls.served)
    for caller, method, path in (
        (mallory, "GET", f"/session/{ann.session_id}"),
        (mallory, "POST", f"/session/{mallory.session_id}/tracks/new"),
        (mallory, "POST", "/session"),
        (fresh, "POST", "/session"),
        (fresh, "GET", "/ice-servers"),
    ):
        body: dict[str, Any] | None = {"tracks": []} if path.endswith("tracks/new") else None
        refused = await caller.call(method, path, body)
        assert refusal(refused) == (403, "banned"), (method, path, refused.text)
    assert world.served_since(mark, ann.session_id) == []
    # Others are not affected.
    assert (await ann.call("GET", f"/session/{ann.session_id}")).status_code == 200

    await world.service.ok("DELETE", f"/rooms/{room_id}/bans/mallory")
    forgiven = await minted(world, room_id, identity="mallory")
    await forgiven.create_session()
    await ann.socket.client.close()


async def test_a_participant_removed_by_a_room_admin_is_refused_by_the_proxy(
    world: World,
) -> None:
    room_id = await world.api.create_room("moderated")
    mod = await minted(world, room_id, name="Mod", grants={"room_admin": True})
    await mod.connect()
    bob = await publisher(world, room_id, "Bob")
    await mod.socket.recv_type("join")
    await mod.socket.send({"type": "remove", "participant_id": bob.pid})
    assert (await bob.socket.recv_type("kicked"))["by"] == mod.pid
    assert (await bob.socket.client.closed())[0] == CloseCode.NOT_IN_ROOM
    for method, path in (("GET", f"/session/{bob.session_id}"), ("POST", "/session")):
        assert refusal(await bob.call(method, path)) == (403, "not_in_room"), path
    await mod.socket.client.close()
