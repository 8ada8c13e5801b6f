"""Access control (issue 16, docs/access.md) against real processes: join
policies, minted and offline tokens, grants checked on every frame, hidden
participants, one participant per identity, room admins, bans, revocation,
secret rotation and bad input. All on the shared system; each test its own rooms."""

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
import websockets

from bus_schema.closecodes import CloseCode
from tests.harness import (
    JWT_SECRET,
    Api,
    Member,
    RoomService,
    System,
    WsClient,
    arrive,
    enter,
)
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

UNKNOWN_ROOM = "00000000-0000-4000-8000-000000000000"
STRIKES = 10
"""MAX_STRIKES by default: refused frames a socket may send before close 1008."""


@pytest_asyncio.fixture(loop_scope="session")
async def service(system: System) -> AsyncIterator[RoomService]:
    room_service = RoomService(system.edges[0].url)
    try:
        yield room_service
    finally:
        await room_service.close()


# --- helpers --------------------------------------------------------------------------------


async def create(api: Api, name: str, policy: str) -> dict[str, Any]:
    response = await api.http.post("/api/rooms", json={"name": name, "join_policy": policy})
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


async def join(api: Api, room_id: str, **body: Any) -> httpx.Response:
    return await api.http.post(f"/api/rooms/{room_id}/join", json=body)


async def minted_member(
    service: RoomService, ws_url: str, room_id: str, **body: Any
) -> tuple[Member, dict[str, Any]]:
    """Mint a token with ``body`` and connect with it: the member and its welcome."""
    minted = await service.mint(room_id, **body)
    name = body.get("name") or body.get("identity") or "Guest"
    return await arrive(ws_url, minted["token"], minted["participant_id"], name)


async def refused_entry(ws_url: str, token: str) -> tuple[str, int | None]:
    """Connect with a token the room refuses: the ``error`` code the socket is
    told, and the code it is then closed with."""
    client = await WsClient.connect(ws_url, token)
    error = await client.recv_type("error")
    code, _ = await client.closed()
    return error["code"], code


async def upgrade_status(ws_url: str, token: str) -> int:
    """The HTTP status of a refused upgrade."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"{ws_url}?token={token}", open_timeout=10)
    status: int = refused.value.response.status_code
    return status


def offline_token(room_id: str, **claims: Any) -> tuple[str, str]:
    """A token made with PyJWT from the documented claims: (token, participant id)."""
    now = int(time.time())
    participant_id = str(uuid.uuid4())
    body = {
        "room_id": room_id,
        "participant_id": participant_id,
        "participant_name": "Offline",
        "iat": now,
        "exp": now + 600,
        **claims,
    }
    return jwt.encode(body, JWT_SECRET, algorithm="HS256"), participant_id


def claims_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def without_date(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in response.headers.items() if k.lower() != "date"}
    return response.status_code, headers, response.content


async def people(service: RoomService, room_id: str) -> dict[str, dict[str, Any]]:
    """The room's participants as the room service API lists them, by id."""
    room = await service.ok("GET", f"/rooms/{room_id}")
    return {p["id"]: p for p in room["participants"]}


# --- join policies ----------------------------------------------------------------------------


async def test_a_secret_room_lets_in_only_holders_of_its_secret_and_looks_unknown_to_others(
    api: Api, ws_url: str, service: RoomService
) -> None:
    created = await create(api, "private", "secret")
    room_id, secret = created["room_id"], created["join_secret"]
    assert len(secret) >= 40  # 256 random bits
    camel = await api.http.post("/api/rooms", json={"name": "camel", "joinPolicy": "secret"})
    assert camel.json()["join_secret"] != secret
    assert "join_secret" not in (await api.http.post("/api/rooms", json={"name": "o"})).json()
    bad = await api.http.post("/api/rooms", json={"name": "x", "join_policy": "closed"})
    assert bad.status_code == 400

    # The secret gets a token (either spelling); the token gets in.
    answer = await join(api, room_id, participant_name="Ann", join_secret=secret)
    assert answer.status_code == 200, answer.text
    ann, _ = await arrive(ws_url, answer.json()["token"], answer.json()["participant_id"], "Ann")
    camel_join = await join(api, room_id, participantName="Bob", joinSecret=secret)
    assert camel_join.status_code == 200, camel_join.text

    # No secret, a wrong one: 403 join_secret_required, and nobody got in.
    missing = await join(api, room_id, participant_name="Eve")
    wrong = await join(api, room_id, participant_name="Eve", join_secret="x" * len(secret))
    for refused in (missing, wrong):
        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == "join_secret_required"
    # A wrong secret for this room and any secret for no room: the same bytes.
    nowhere = await join(api, UNKNOWN_ROOM, participant_name="Eve", join_secret="x" * len(secret))
    assert without_date(nowhere) == without_date(wrong)
    plain_unknown = await join(api, UNKNOWN_ROOM, participant_name="Eve")
    assert (plain_unknown.status_code, plain_unknown.json()["code"]) == (404, "room_not_found")

    # Its name and creator are its members' business: 404 exactly as no room.
    shown = await api.http.get(f"/api/rooms/{room_id}")
    unknown = await api.http.get(f"/api/rooms/{UNKNOWN_ROOM}")
    assert shown.status_code == 404
    assert without_date(shown) == without_date(unknown)
    room = await service.ok("GET", f"/rooms/{room_id}")
    assert room["join_policy"] == "secret"
    assert [p["id"] for p in room["participants"]] == [ann.participant_id]
    await ann.client.close()


async def test_a_token_room_is_invite_only_and_a_minted_token_gets_in(
    api: Api, ws_url: str, service: RoomService
) -> None:
    created = await create(api, "invite only", "token")
    room_id = created["room_id"]
    assert "join_secret" not in created
    refused = await join(api, room_id, participant_name="Eve")
    assert (refused.status_code, refused.json()["code"]) == (403, "invite_only")
    assert (await api.http.get(f"/api/rooms/{room_id}")).status_code == 404

    minted = await service.mint(room_id, identity="user-ann", name="Ann", ttl=120)
    claims = claims_of(minted["token"])
    assert (claims["room_id"], claims["participant_id"]) == (room_id, minted["participant_id"])
    assert (claims["identity"], claims["participant_name"]) == ("user-ann", "Ann")
    assert claims["exp"] - claims["iat"] == 120
    assert minted["expires_at"].endswith("Z")
    ann, welcome = await arrive(ws_url, minted["token"], minted["participant_id"], "Ann")
    assert welcome["room_id"] == room_id
    # The name defaults to the identity, then to Guest.
    bob, _ = await minted_member(service, ws_url, room_id, identity="user-bob")
    assert (await ann.recv_type("join"))["data"]["participant_name"] == "user-bob"
    guest, _ = await minted_member(service, ws_url, room_id)
    assert (await ann.recv_type("join"))["data"]["participant_name"] == "Guest"

    room = await service.ok("GET", f"/rooms/{room_id}")
    assert room["join_policy"] == "token"
    seen = {p["id"]: p["identity"] for p in room["participants"]}
    assert seen == {
        ann.participant_id: "user-ann",
        bob.participant_id: "user-bob",
        guest.participant_id: None,
    }
    for member in (ann, bob, guest):
        await member.client.close()


async def test_rotating_the_join_secret_refuses_the_old_one_and_keeps_who_is_in(
    api: Api, ws_url: str, service: RoomService
) -> None:
    created = await create(api, "rotated", "secret")
    room_id, old = created["room_id"], created["join_secret"]
    ann_answer = (await join(api, room_id, participant_name="Ann", join_secret=old)).json()
    ann, _ = await arrive(ws_url, ann_answer["token"], ann_answer["participant_id"], "Ann")
    # Got with the old secret, not used yet: the leaked-link case.
    unused = (await join(api, room_id, participant_name="Late", join_secret=old)).json()

    rotated = await service.ok("POST", f"/rooms/{room_id}/join-secret")
    new = rotated["join_secret"]
    assert new != old
    refused = await join(api, room_id, participant_name="Eve", join_secret=old)
    assert (refused.status_code, refused.json()["code"]) == (403, "join_secret_required")
    assert await refused_entry(ws_url, unused["token"]) == ("token_revoked", CloseCode.NOT_IN_ROOM)
    answer = await join(api, room_id, participant_name="Bob", join_secret=new)
    assert answer.status_code == 200, answer.text
    bob, welcome = await arrive(ws_url, answer.json()["token"], answer.json()["participant_id"])
    # Ann stayed: she is in Bob's welcome, and hears him come (the next thing she hears).
    assert ann.participant_id in {p["id"] for p in welcome["participants"]}
    assert (await ann.recv_type("join"))["from"] == bob.participant_id
    assert set(await people(service, room_id)) == {ann.participant_id, bob.participant_id}

    # Only secret rooms have a secret to rotate.
    open_room = await api.create_room("open")
    not_secret = await service.http.post(f"/rooms/{open_room}/join-secret")
    assert (not_secret.status_code, not_secret.json()["code"]) == (400, "invalid_body")
    assert (await service.http.post(f"/rooms/{UNKNOWN_ROOM}/join-secret")).status_code == 404
    for member in (ann, bob):
        await member.client.close()


# --- tokens -----------------------------------------------------------------------------------

BAD_MINTS = [
    pytest.param({"grants": {"can_fly": True}}, id="unknown grant"),
    pytest.param({"grants": {"can_send": "no"}}, id="grant of another type"),
    pytest.param({"grants": ["can_send"]}, id="grants not an object"),
    pytest.param({"identity": "x" * 129}, id="identity of 129 characters"),
    pytest.param({"identity": ""}, id="empty identity"),
    pytest.param({"identity": "a\nb"}, id="identity with a control character"),
    pytest.param({"identity": "ann", "role": "admin"}, id="unknown body field"),
    pytest.param({"ttl": 0}, id="ttl 0"),
    pytest.param({"ttl": 7 * 24 * 3600 + 1}, id="ttl past a week"),
    pytest.param({"ttl": "60"}, id="ttl as a string"),
    pytest.param({"grants": {"can_send": 0}}, id="grant as a number"),
    pytest.param({"grants": {"hidden": "true"}}, id="grant as a string"),
    pytest.param({"name": "x\u0000"}, id="name with a control character"),
]


@pytest.mark.parametrize("body", BAD_MINTS)
async def test_minting_refuses_bad_input_with_400(
    api: Api, service: RoomService, body: dict[str, Any]
) -> None:
    room_id = await api.create_room("mint")
    before = await service.ok("GET", f"/rooms/{room_id}")
    response = await service.http.post(f"/rooms/{room_id}/tokens", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_body"
    assert "Traceback" not in response.text
    assert await service.ok("GET", f"/rooms/{room_id}") == before


async def test_minting_edges_unknown_rooms_and_credentials(api: Api, service: RoomService) -> None:
    room_id = await api.create_room("mint edges")
    longest = await service.mint(room_id, identity="x" * 128, name="Long", ttl=7 * 24 * 3600)
    assert claims_of(longest["token"])["identity"] == "x" * 128
    for room in (UNKNOWN_ROOM, "not-a-room"):
        missing = await service.http.post(f"/rooms/{room}/tokens", json={})
        assert (missing.status_code, missing.json()["code"]) == (404, "room_not_found")
    # Only the room service may mint: not a participant's token, not nobody.
    participant = (await api.join(room_id, "Ann"))["token"]
    for headers, status in (({}, 401), ({"Authorization": f"Bearer {participant}"}, 403)):
        response = await api.http.post(
            f"/api/admin/rooms/{room_id}/tokens", json={}, headers=headers
        )
        assert response.status_code == status, response.text


async def test_an_identity_of_128_characters_is_minted_without_a_name(
    api: Api, ws_url: str, service: RoomService
) -> None:
    """The name defaults to the identity, and an identity may be longer than a
    name may: the longest identity must still mint (and connect)."""
    room_id = await api.create_room("long identity")
    member, _ = await minted_member(service, ws_url, room_id, identity="x" * 128)
    assert (await people(service, room_id))[member.participant_id]["identity"] == "x" * 128
    await member.client.close()


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"grants": {"can_fly": True}}, id="unknown grant"),
        pytest.param({"grants": {"can_send": "no"}}, id="grant of another type"),
        pytest.param({"grants": {"room_admin": 1}}, id="grant as a number"),
        pytest.param({"grants": ["room_admin"]}, id="grants not an object"),
        pytest.param({"identity": "x" * 129}, id="identity of 129 characters"),
        pytest.param({"identity": ""}, id="empty identity"),
        pytest.param({"identity": 42}, id="identity not a string"),
        pytest.param({"participant_id": "not-a-uuid"}, id="participant id not a UUID"),
    ],
)
async def test_a_hand_made_token_with_bad_claims_is_refused_before_the_upgrade(
    api: Api, ws_url: str, claims: dict[str, Any]
) -> None:
    room_id = await api.create_room("forged")
    token, _ = offline_token(room_id, **claims)
    assert await upgrade_status(ws_url, token) == 401


async def test_an_offline_token_with_the_documented_claims_connects_and_its_grants_hold(
    api: Api, ws_url: str, service: RoomService
) -> None:
    room_id = (await create(api, "offline", "token"))["room_id"]
    ann, _ = await minted_member(service, ws_url, room_id, identity="ann", name="Ann")
    token, pid = offline_token(
        room_id,
        participant_name="Moderator",
        identity="mod-1",
        grants={"can_send": False, "room_admin": True},
    )
    moderator, welcome = await arrive(ws_url, token, pid, "Moderator")
    assert welcome["room_id"] == room_id
    assert (await ann.recv_type("join"))["data"]["participant_name"] == "Moderator"
    # can_send=false holds...
    await moderator.send({"type": "chat", "text": "hello"})
    assert (await moderator.recv_type("error"))["code"] == "grant_denied"
    # ...and so does room_admin.
    await moderator.send({"type": "mute", "participant_id": ann.participant_id, "kind": "audio"})
    for member in (ann, moderator):
        muted = await member.recv_type("track-state")
        assert (muted["from"], muted["enabled"], muted["by"]) == (ann.participant_id, False, pid)
    seen = (await people(service, room_id))[pid]
    assert (seen["identity"], seen["grants"]) == ("mod-1", {"can_send": False, "room_admin": True})
    for member in (ann, moderator):
        await member.client.close()


async def test_old_join_tokens_keep_full_rights_in_open_rooms(api: Api, ws_url: str) -> None:
    room_id = await api.create_room("as before")
    ann = await enter(api, ws_url, room_id, "Ann")
    bob = await enter(api, ws_url, room_id, "Bob")
    await ann.recv_type("join")
    claims = claims_of(ann.token)
    assert "identity" not in claims
    assert "grants" not in claims
    frames: list[dict[str, Any]] = [
        {"type": "cloudflare-session", "sessionId": "ann-session", "tracks": []},
        {"type": "track-state", "kind": "audio", "enabled": False},
        {"type": "chat", "text": "to everyone"},
        {"type": "offer", "to": bob.participant_id, "sdp": "v=0"},
    ]
    for frame in frames:
        await ann.send(frame)
        heard = await bob.recv()
        assert (heard["type"], heard["from"]) == (frame["type"], ann.participant_id)
    # Full rights are not a room admin's.
    await ann.send({"type": "mute", "participant_id": bob.participant_id, "kind": "audio"})
    assert (await ann.recv_type("error"))["code"] == "grant_denied"
    for member in (ann, bob):
        await member.client.close()


async def test_one_identity_is_in_a_room_at_most_once(
    api: Api, ws_url: str, service: RoomService
) -> None:
    room_id = await api.create_room("one each")
    first, _ = await minted_member(service, ws_url, room_id, identity="user-1", name="Laptop")
    cy = await enter(api, ws_url, room_id, "Cy")
    await first.recv_type("join")
    second, welcome = await minted_member(service, ws_url, room_id, identity="user-1", name="Phone")
    # The older socket is closed (4000, do not reconnect); the others see it go, then come.
    code, _ = await first.client.closed()
    assert code == CloseCode.REPLACED
    left, joined = await cy.recv_type("leave"), await cy.recv_type("join")
    assert left["from"] == first.participant_id
    assert joined["from"] == second.participant_id
    assert joined["room_seq"] == left["room_seq"] + 1
    assert first.participant_id not in {p["id"] for p in welcome["participants"]}
    assert set(await people(service, room_id)) == {second.participant_id, cy.participant_id}
    for member in (second, cy):
        await member.client.close()


# --- grants, frame by frame -----------------------------------------------------------------


async def test_grants_are_checked_on_every_frame_and_a_refusal_keeps_the_socket(
    api: Api, ws_url: str, service: RoomService
) -> None:
    room_id = await api.create_room("grants")
    ann = await enter(api, ws_url, room_id, "Ann")
    viewer, _ = await minted_member(
        service, ws_url, room_id, name="Viewer", grants={"can_publish": False}
    )
    quiet, _ = await minted_member(
        service, ws_url, room_id, name="Quiet", grants={"can_send": False}
    )
    await ann.recv_type("join")
    await ann.recv_type("join")
    await viewer.recv_type("join")

    # More refusals than a socket has strikes: a grant refusal is no misbehaviour.
    denied = 0
    for _ in range(STRIKES):
        await viewer.send({"type": "cloudflare-session", "sessionId": "v-session", "tracks": []})
        await viewer.send({"type": "track-state", "kind": "audio", "enabled": False})
        await quiet.send({"type": "chat", "text": "to all"})
        await quiet.send({"type": "offer", "to": ann.participant_id, "sdp": "v=0"})
        denied += 2
    for member in (viewer, quiet):
        for _ in range(denied):
            assert (await member.recv_type("error"))["code"] == "grant_denied"
    # Both sockets still work for what they may do, and nothing refused was relayed:
    # the first thing Ann hears is what was allowed.
    await viewer.send({"type": "chat", "text": "the viewer speaks"})
    heard = await ann.recv_type("chat")
    assert (heard["from"], heard["text"]) == (viewer.participant_id, "the viewer speaks")
    await quiet.send({"type": "track-state", "kind": "video", "enabled": False})
    heard = await ann.recv_type("track-state")
    assert (heard["from"], heard["enabled"]) == (quiet.participant_id, False)
    assert heard["room_seq"] == (await viewer.recv_type("track-state"))["room_seq"]
    room = await people(service, room_id)
    assert room[viewer.participant_id]["audio"] is None  # its refused mute changed nothing
    assert room[quiet.participant_id]["video"] is False
    for member in (ann, viewer, quiet):
        await member.client.close()


# --- room admins ------------------------------------------------------------------------------


async def test_a_room_admin_mutes_and_removes_from_its_socket(
    api: Api, ws_url: str, service: RoomService
) -> None:
    room_id = (await create(api, "moderated", "token"))["room_id"]
    mod, _ = await minted_member(
        service, ws_url, room_id, identity="mod", grants={"room_admin": True}
    )
    ann, _ = await minted_member(service, ws_url, room_id, identity="ann")
    bob, _ = await minted_member(service, ws_url, room_id, identity="bob")
    cy, _ = await minted_member(service, ws_url, room_id, identity="cy")
    for member, joins in ((mod, 3), (ann, 2), (bob, 1)):
        for _ in range(joins):
            await member.recv_type("join")
    everyone = [mod, ann, bob, cy]

    # Mute: the target and everyone else hear it, saying by whom.
    await mod.send({"type": "mute", "participant_id": ann.participant_id, "kind": "audio"})
    for member in everyone:
        muted = await member.recv_type("track-state")
        assert (muted["from"], muted["kind"], muted["enabled"]) == (
            ann.participant_id,
            "audio",
            False,
        )
        assert muted["by"] == mod.participant_id
    await mod.send(
        {"type": "mute", "participant_id": ann.participant_id, "kind": "audio", "muted": False}
    )
    for member in everyone:
        assert (await member.recv_type("track-state"))["enabled"] is True

    # Remove: told with by whom, closed 4003, the others see the leave; the token is dead.
    await mod.send({"type": "remove", "participant_id": bob.participant_id})
    kicked = await bob.recv_type("kicked")
    assert (kicked["room_id"], kicked["by"]) == (room_id, mod.participant_id)
    assert (await bob.client.closed())[0] == CloseCode.NOT_IN_ROOM
    for member in (mod, ann, cy):
        assert (await member.recv_type("leave"))["from"] == bob.participant_id
    assert await refused_entry(ws_url, bob.token) == ("kicked", CloseCode.NOT_IN_ROOM)
    # Without a ban the identity may come back with a new token.
    bob_again, _ = await minted_member(service, ws_url, room_id, identity="bob")
    for member in (mod, ann, cy):
        assert (await member.recv_type("join"))["from"] == bob_again.participant_id

    # Remove with a ban: no fresh token of that identity gets in.
    await mod.send({"type": "remove", "participant_id": cy.participant_id, "ban": True})
    assert (await cy.recv_type("kicked"))["by"] == mod.participant_id
    assert (await cy.client.closed())[0] == CloseCode.NOT_IN_ROOM
    for member in (mod, ann, bob_again):
        assert (await member.recv_type("leave"))["from"] == cy.participant_id
    fresh = await service.mint(room_id, identity="cy")
    assert await refused_entry(ws_url, fresh["token"]) == ("banned", CloseCode.NOT_IN_ROOM)
    room = await service.ok("GET", f"/rooms/{room_id}")
    assert room["banned"] == ["cy"]
    assert {p["id"] for p in room["participants"]} == {
        mod.participant_id,
        ann.participant_id,
        bob_again.participant_id,
    }
    # Someone not (or no longer) in the room.
    await mod.send({"type": "remove", "participant_id": cy.participant_id})
    assert (await mod.recv_type("error"))["code"] == "unknown_participant"
    for member in (mod, ann, bob_again):
        await member.client.close()


async def test_only_a_room_admin_may_moderate(api: Api, ws_url: str, service: RoomService) -> None:
    room_id = await api.create_room("no moderators")
    ann = await enter(api, ws_url, room_id, "Ann")
    bob, _ = await minted_member(service, ws_url, room_id, identity="bob", name="Bob")
    await ann.recv_type("join")
    for frame in (
        {"type": "mute", "participant_id": bob.participant_id, "kind": "audio"},
        {"type": "remove", "participant_id": bob.participant_id},
        {"type": "remove", "participant_id": bob.participant_id, "ban": True},
    ):
        await ann.send(frame)
        assert (await ann.recv_type("error"))["code"] == "grant_denied"
    # Nothing happened to Bob: the next thing he hears is Ann's chat, and he is still in.
    await ann.send({"type": "chat", "text": "sorry"})
    assert (await bob.recv_type("chat"))["from"] == ann.participant_id
    room = await service.ok("GET", f"/rooms/{room_id}")
    assert room["banned"] == []
    assert {p["id"]: p["audio"] for p in room["participants"]} == {
        ann.participant_id: None,
        bob.participant_id: None,
    }
    for member in (ann, bob):
        await member.client.close()


# --- hidden participants ----------------------------------------------------------------------


async def test_a_hidden_recorder_hears_the_room_and_is_never_seen(
    api: Api, ws_url: str, service: RoomService
) -> None:
    room_id = await api.create_room("recorded")
    ann = await enter(api, ws_url, room_id, "Ann")
    mod, _ = await minted_member(service, ws_url, room_id, name="Mod", grants={"room_admin": True})
    seq = (await ann.recv_type("join"))["room_seq"]
    recorder, own_welcome = await minted_member(
        service,
        ws_url,
        room_id,
        identity="recorder-1",
        grants={"hidden": True, "can_publish": False, "can_send": False},
    )
    assert {p["id"] for p in own_welcome["participants"]} == {
        ann.participant_id,
        mod.participant_id,
        recorder.participant_id,
    }
    answer = await api.join(room_id, "Bob")
    bob, bob_welcome = await arrive(ws_url, answer["token"], answer["participant_id"], "Bob")
    # Not in Bob's welcome; Bob's arrival is the next number after Mod's: the
    # recorder took none, and told nobody it came.
    visible = {ann.participant_id, mod.participant_id, bob.participant_id}
    assert {p["id"] for p in bob_welcome["participants"]} == visible
    seq += 1
    assert bob_welcome["room_seq"] == seq
    for member in (ann, mod, recorder):
        joined = await member.recv_type("join")
        assert (joined["from"], joined["room_seq"]) == (bob.participant_id, seq)
    # Operators see it.
    room = await people(service, room_id)
    assert set(room) == visible | {recorder.participant_id}
    assert room[recorder.participant_id]["grants"]["hidden"] is True
    assert room[recorder.participant_id]["identity"] == "recorder-1"

    # It hears broadcasts and track states of the others.
    await bob.send({"type": "chat", "text": "hello"})
    seq += 1
    for member in (ann, mod, recorder):
        chat = await member.recv_type("chat")
        assert (chat["from"], chat["room_seq"]) == (bob.participant_id, seq)
    await ann.send({"type": "track-state", "kind": "video", "enabled": False})
    seq += 1
    for member in (mod, bob, recorder):
        state = await member.recv_type("track-state")
        assert (state["from"], state["room_seq"]) == (ann.participant_id, seq)

    # Nobody can address it or moderate it: for them it is not there.
    await bob.send({"type": "offer", "to": recorder.participant_id, "sdp": "v=0"})
    assert (await bob.recv_type("error"))["code"] == "unknown_participant"
    for frame in (
        {"type": "mute", "participant_id": recorder.participant_id, "kind": "audio"},
        {"type": "remove", "participant_id": recorder.participant_id},
    ):
        await mod.send(frame)
        assert (await mod.recv_type("error"))["code"] == "unknown_participant"

    # It hears Bob leave; its own leaving is told to nobody.
    await bob.client.close()
    seq += 1
    for member in (ann, mod, recorder):
        left = await member.recv_type("leave")
        assert (left["from"], left["room_seq"]) == (bob.participant_id, seq)
    await recorder.client.close()

    async def recorder_gone() -> bool:
        return recorder.participant_id not in await people(service, room_id)

    await eventually(recorder_gone, timeout=10, message="the recorder never left")
    cy = await enter(api, ws_url, room_id, "Cy")
    seq += 1
    for member in (ann, mod):
        joined = await member.recv_type("join")  # not a leave of the recorder first
        assert (joined["from"], joined["room_seq"]) == (cy.participant_id, seq)
    for member in (ann, mod, cy):
        await member.client.close()


async def test_a_hidden_participant_cannot_send_to_one_participant(
    api: Api, ws_url: str, service: RoomService
) -> None:
    """Nobody could check a sender they cannot see: even with can_send, a `to`
    from a hidden participant is refused at its own edge."""
    room_id = await api.create_room("hidden bot")
    ann = await enter(api, ws_url, room_id, "Ann")
    bot, _ = await minted_member(service, ws_url, room_id, name="Bot", grants={"hidden": True})
    bob = await enter(api, ws_url, room_id, "Bob")
    await ann.recv_type("join")
    await bot.recv_type("join")
    await bot.send({"type": "offer", "to": ann.participant_id, "sdp": "v=0"})
    assert (await bot.recv_type("error"))["code"] == "grant_denied"
    await bob.send({"type": "offer", "to": ann.participant_id, "sdp": "from Bob"})
    heard = await ann.recv_type("offer")  # the first thing Ann hears: not the bot's
    assert (heard["from"], heard["sdp"]) == (bob.participant_id, "from Bob")
    for member in (ann, bot, bob):
        await member.client.close()


# --- bans and revocation ----------------------------------------------------------------------


async def test_bans_by_the_room_service_hold_for_the_identity_until_lifted(
    api: Api, ws_url: str, service: RoomService
) -> None:
    room_id = (await create(api, "banning", "token"))["room_id"]
    ann, _ = await minted_member(service, ws_url, room_id, identity="ann")
    mallory, _ = await minted_member(service, ws_url, room_id, identity="mallory")
    trudy, _ = await minted_member(service, ws_url, room_id, identity="trudy")
    await ann.recv_type("join")
    await ann.recv_type("join")
    await mallory.recv_type("join")

    # Remove with ban=true: kicked (no "by": the operator), 4003, gone for good.
    await service.ok("DELETE", f"/rooms/{room_id}/participants/{mallory.participant_id}?ban=true")
    kicked = await mallory.recv_type("kicked")
    assert "by" not in kicked
    assert (await mallory.client.closed())[0] == CloseCode.NOT_IN_ROOM
    for member in (ann, trudy):
        assert (await member.recv_type("leave"))["from"] == mallory.participant_id
    # Ban an identity: its participant present is removed too.
    await service.ok("POST", f"/rooms/{room_id}/bans", json={"identity": "trudy"})
    await trudy.recv_type("kicked")
    assert (await trudy.client.closed())[0] == CloseCode.NOT_IN_ROOM
    assert (await ann.recv_type("leave"))["from"] == trudy.participant_id
    # Ban one who is not there yet.
    await service.ok("POST", f"/rooms/{room_id}/bans", json={"identity": "eve"})
    assert (await service.ok("GET", f"/rooms/{room_id}"))["banned"] == ["mallory", "trudy", "eve"]
    for identity in ("mallory", "trudy", "eve"):
        fresh = await service.mint(room_id, identity=identity)
        assert await refused_entry(ws_url, fresh["token"]) == ("banned", CloseCode.NOT_IN_ROOM)

    # Lifted: a token of it gets in again.
    await service.ok("DELETE", f"/rooms/{room_id}/bans/eve")
    eve, _ = await minted_member(service, ws_url, room_id, identity="eve")
    assert (await ann.recv_type("join"))["from"] == eve.participant_id
    assert (await service.ok("GET", f"/rooms/{room_id}"))["banned"] == ["mallory", "trudy"]

    for body in ({"identity": "x" * 129}, {"identity": ""}, {"who": "eve"}, {}):
        bad = await service.http.post(f"/rooms/{room_id}/bans", json=body)
        assert (bad.status_code, bad.json()["code"]) == (400, "invalid_body"), body
    assert (await service.http.delete(f"/rooms/{room_id}/bans/{'x' * 129}")).status_code == 400
    unknown = await service.http.post(f"/rooms/{UNKNOWN_ROOM}/bans", json={"identity": "eve"})
    assert unknown.status_code == 404
    for member in (ann, eve):
        await member.client.close()


async def test_a_ban_without_an_identity_holds_for_that_participant_only(
    api: Api, ws_url: str, service: RoomService
) -> None:
    """Join tokens carry no identity: why removal is only final in secret
    rooms (after a rotation) and token rooms."""
    room_id = await api.create_room("open door")
    ann = await enter(api, ws_url, room_id, "Ann")
    bob = await enter(api, ws_url, room_id, "Bob")
    await ann.recv_type("join")
    await service.ok("DELETE", f"/rooms/{room_id}/participants/{bob.participant_id}?ban=true")
    await bob.recv_type("kicked")
    await bob.client.closed()
    assert (await ann.recv_type("leave"))["from"] == bob.participant_id
    assert await refused_entry(ws_url, bob.token) == ("kicked", CloseCode.NOT_IN_ROOM)
    assert (await service.ok("GET", f"/rooms/{room_id}"))["banned"] == []
    back = await enter(api, ws_url, room_id, "Bob")  # a new join token: a new participant
    assert (await ann.recv_type("join"))["from"] == back.participant_id
    for member in (ann, back):
        await member.client.close()


async def test_revoking_a_rooms_tokens_closes_every_socket_and_new_tokens_work_at_once(
    system: System, api: Api, ws_url: str, service: RoomService
) -> None:
    room_id = await api.create_room("revoked")
    ann = await enter(api, ws_url, room_id, "Ann")
    bob, _ = await minted_member(service, ws_url, room_id, identity="bob")
    await ann.recv_type("join")
    waiting = await service.mint(room_id, identity="late")  # never connected
    done = await service.ok("POST", f"/rooms/{room_id}/revoke-tokens")
    assert done["room_id"] == room_id
    for member in (ann, bob):
        assert (await member.client.closed())[0] == CloseCode.NOT_IN_ROOM
    for token in (ann.token, bob.token, waiting["token"]):
        assert await refused_entry(ws_url, token) == ("token_revoked", CloseCode.NOT_IN_ROOM)

    bus = await system.bus()
    state = await bus.room_state(room_id)
    await bus.close()
    assert state is not None
    assert state.participants == {}
    revoked_at = state.tokens_revoked_at
    assert revoked_at >= int(time.time()) - 60
    # Issued now, maybe in the very second of the revocation: dated after it, let in.
    joined = await api.join(room_id, "Ann again")
    minted = await service.mint(room_id, identity="bob")
    for token in (joined["token"], minted["token"]):
        assert claims_of(token)["iat"] > revoked_at
    ann_again, _ = await arrive(ws_url, joined["token"], joined["participant_id"])
    bob_again, welcome = await arrive(ws_url, minted["token"], minted["participant_id"])
    assert {p["id"] for p in welcome["participants"]} == {
        ann_again.participant_id,
        bob_again.participant_id,
    }
    unknown = await service.http.post(f"/rooms/{UNKNOWN_ROOM}/revoke-tokens")
    assert unknown.status_code == 404
    for member in (ann_again, bob_again):
        await member.client.close()
