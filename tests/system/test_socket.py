"""WebSocket behaviour of docs/protocol.md against a real edge, worker and nats-server."""

import json
import time
import uuid

import jwt
import pytest
import websockets

from tests.harness import JWT_SECRET, Api, System, WsClient, enter
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def refused_status(url: str, **kwargs: object) -> tuple[int, dict[str, str]]:
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url, open_timeout=10, **kwargs)  # type: ignore[arg-type]
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"{}")


async def test_missing_token_is_401_before_upgrade(ws_url: str) -> None:
    assert await refused_status(ws_url) == (401, {"error": "Missing token"})


def forged(claims: dict[str, object], *, secret: str = JWT_SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=alg)


@pytest.mark.parametrize(
    "make_token",
    [
        lambda room, pid: "not-a-jwt",
        lambda room, pid: forged(
            {"room_id": room, "participant_id": pid, "exp": int(time.time()) + 60},
            secret="another-secret-that-is-also-long-enough-0123456789",
        ),
        lambda room, pid: forged(
            {"room_id": room, "participant_id": pid, "iat": 1, "exp": int(time.time()) - 3600}
        ),
        lambda room, pid: forged({"room_id": room, "participant_id": pid, "iat": 1}),
        lambda room, pid: forged(
            {"room_id": room, "participant_id": pid, "iat": 1, "exp": int(time.time()) + 60},
            secret=JWT_SECRET,
            alg="HS512",
        ),
        lambda room, pid: jwt.encode(
            {"room_id": room, "participant_id": pid, "iat": 1, "exp": int(time.time()) + 60},
            None,
            algorithm="none",
        ),
        lambda room, pid: forged(
            {
                "room_id": "a.b.>",
                "participant_id": pid,
                "participant_name": "x",
                "iat": 1,
                "exp": int(time.time()) + 60,
            }
        ),
    ],
    ids=["garbage", "wrong-secret", "expired", "no-exp", "hs512", "alg-none", "bad-room-id"],
)
async def test_invalid_tokens_are_401_before_upgrade(api: Api, ws_url: str, make_token) -> None:  # type: ignore[no-untyped-def]
    room_id = await api.create_room("auth")
    token = make_token(room_id, str(uuid.uuid4()))
    assert await refused_status(f"{ws_url}?token={token}") == (401, {"error": "Invalid token"})


async def test_token_as_subprotocol_is_accepted_and_selected(api: Api, ws_url: str) -> None:
    room_id = await api.create_room("subprotocol")
    joined = await api.join(room_id, "Sam")
    client = await WsClient.connect(ws_url, joined["token"], subprotocol=True)
    assert client.ws.subprotocol == joined["token"]
    welcome = await client.recv_type("welcome")
    assert welcome["participant_id"] == joined["participant_id"]
    await client.close()


async def test_welcome_snapshot_and_session_replay_for_newcomer(api: Api, ws_url: str) -> None:
    room_id = await api.create_room("snapshot")
    ann = await enter(api, ws_url, room_id, "Ann")
    ben = await enter(api, ws_url, room_id, "Ben")
    await ann.recv_type("join")
    tracks = [{"trackName": "ann-cam", "kind": "video"}, {"trackName": "ann-mic", "kind": "audio"}]
    await ann.send({"type": "cloudflare-session", "sessionId": "sess-ann", "tracks": tracks})
    await ben.recv_type("cloudflare-session")
    await ann.send({"type": "track-state", "kind": "audio", "enabled": False})
    await ben.recv_type("track-state")

    joined = await api.join(room_id, "Cy")
    cy = await WsClient.connect(ws_url, joined["token"])
    welcome = await cy.recv_type("welcome")
    assert welcome["room_id"] == room_id
    assert welcome["participant_id"] == joined["participant_id"]
    assert welcome["room_seq"] == 5  # join ann, join ben, session, track-state, join cy
    by_id = {p["id"]: p for p in welcome["participants"]}
    assert by_id[ann.participant_id] == {
        "id": ann.participant_id,
        "name": "Ann",
        "session": "sess-ann",
        "tracks": tracks,
        "audio": False,
    }
    assert by_id[ben.participant_id] == {"id": ben.participant_id, "name": "Ben"}
    assert by_id[joined["participant_id"]]["name"] == "Cy"
    replay = await cy.recv_type("cloudflare-session")
    assert replay == {
        "type": "cloudflare-session",
        "from": ann.participant_id,
        "roomId": room_id,
        "participantId": ann.participant_id,
        "participantName": "Ann",
        "sessionId": "sess-ann",
        "tracks": tracks,
    }
    join = await ann.recv_type("join")
    assert join == {
        "type": "join",
        "from": joined["participant_id"],
        "to": "all",
        "data": {"participant_id": joined["participant_id"], "participant_name": "Cy"},
        "room_seq": 5,
    }
    assert (await ben.recv_type("join"))["room_seq"] == 5
    for client in (ann.client, ben.client, cy):
        await client.close()


async def test_session_is_stamped_with_token_identity(api: Api, ws_url: str) -> None:
    room_id = await api.create_room("stamping")
    ann = await enter(api, ws_url, room_id, "Ann")
    ben = await enter(api, ws_url, room_id, "Ben")
    await ann.recv_type("join")
    await ben.send(
        {
            "type": "cloudflare-session",
            "roomId": str(uuid.uuid4()),
            "participantId": ann.participant_id,
            "participantName": "Not Ben",
            "from": ann.participant_id,
            "sessionId": "sess-ben",
            "tracks": [{"trackName": "t1", "kind": "video", "mid": "0"}],
            "room_seq": 999,
            "custom": {"kept": True},
        }
    )
    relayed = await ann.recv_type("cloudflare-session")
    assert relayed["roomId"] == room_id
    assert relayed["participantId"] == ben.participant_id
    assert relayed["participantName"] == "Ben"
    assert relayed["from"] == ben.participant_id
    assert relayed["tracks"] == [{"trackName": "t1", "kind": "video", "mid": "0"}]
    assert relayed["custom"] == {"kept": True}
    assert relayed["room_seq"] == 3


async def test_track_state_relay_and_no_echo(api: Api, ws_url: str) -> None:
    room_id = await api.create_room("mute")
    ann = await enter(api, ws_url, room_id, "Ann")
    ben = await enter(api, ws_url, room_id, "Ben")
    await ann.recv_type("join")
    await ann.send({"type": "track-state", "from": "spoofed", "kind": "video", "enabled": False})
    got = await ben.recv_type("track-state")
    assert got == {
        "type": "track-state",
        "from": ann.participant_id,
        "kind": "video",
        "enabled": False,
        "room_seq": 3,
    }
    # Ben's broadcast follows Ann's in the room's order: if Ann had received her
    # own message, it would come before Ben's.
    await ben.send({"type": "track-state", "kind": "audio", "enabled": True})
    assert (await ann.recv())["from"] == ben.participant_id


async def test_targeted_relay_reaches_only_the_target(api: Api, ws_url: str) -> None:
    room_id = await api.create_room("p2p")
    ann = await enter(api, ws_url, room_id, "Ann")
    ben = await enter(api, ws_url, room_id, "Ben")
    cy = await enter(api, ws_url, room_id, "Cy")
    await ann.recv_type("join")
    await ann.recv_type("join")
    await ben.recv_type("join")
    offer = {"type": "offer", "to": ben.participant_id, "sdp": "v=0...", "seq": 7}
    await ann.send(offer)
    got = await ben.recv_type("offer")
    assert got == {**offer, "from": ann.participant_id}
    assert "room_seq" not in got
    # Cy must not have seen the offer: the next thing Cy sees is Ben's broadcast.
    await ben.send({"type": "hello", "to": "all"})
    assert (await cy.recv())["type"] == "hello"


async def test_broadcast_to_all_and_without_to(api: Api, ws_url: str) -> None:
    room_id = await api.create_room("broadcast")
    ann = await enter(api, ws_url, room_id, "Ann")
    ben = await enter(api, ws_url, room_id, "Ben")
    cy = await enter(api, ws_url, room_id, "Cy")
    for member, joins in ((ann, 2), (ben, 1)):
        for _ in range(joins):
            await member.recv_type("join")
    await ann.send({"type": "chat", "to": "all", "text": "hi", "ts": 123})
    for member in (ben, cy):
        got = await member.recv_type("chat")
        assert got == {
            "type": "chat",
            "to": "all",
            "text": "hi",
            "ts": 123,
            "from": ann.participant_id,
            "room_seq": 4,
        }
    await ann.send({"type": "ping-all"})
    assert (await ben.recv_type("ping-all"))["room_seq"] == 5
    assert (await cy.recv_type("ping-all"))["from"] == ann.participant_id


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ("[1,2,3]", "invalid_message"),
        ('{"no_type": 1}', "invalid_message"),
        ('{"type": 5}', "invalid_message"),
        ('{"type": "join", "data": {}}', "reserved_type"),
        ('{"type": "welcome"}', "reserved_type"),
        ('{"type": "track-state", "kind": "screen", "enabled": true}', "invalid_message"),
        ('{"type": "track-state", "kind": "audio", "enabled": "yes"}', "invalid_message"),
        ('{"type": "cloudflare-session", "tracks": []}', "invalid_message"),
        (
            '{"type": "cloudflare-session", "sessionId": "s", "tracks": [{"kind": 1}]}',
            "invalid_message",
        ),
        ('{"type": "offer", "to": 12}', "invalid_message"),
        ('{"type": "offer", "to": "00000000-0000-4000-8000-000000000000"}', "unknown_participant"),
        ('{"type": "offer", "to": "a.b.>"}', "unknown_participant"),
    ],
)
async def test_bad_frames_get_an_error_and_the_connection_stays(
    api: Api, ws_url: str, frame: str, code: str
) -> None:
    room_id = await api.create_room("errors")
    ann = await enter(api, ws_url, room_id, "Ann")
    ben = await enter(api, ws_url, room_id, "Ben")
    await ann.recv_type("join")
    await ann.send(frame)
    error = await ann.recv_type("error")
    assert error["code"] == code
    assert error["message"]
    # Still connected, and nothing was relayed to Ben: his next message is Ann's ping.
    await ann.send({"type": "ping", "to": ben.participant_id})
    assert (await ben.recv())["type"] == "ping"


async def test_targeting_yourself_is_an_error(api: Api, ws_url: str) -> None:
    room_id = await api.create_room("self")
    ann = await enter(api, ws_url, room_id, "Ann")
    await ann.send({"type": "offer", "to": ann.participant_id})
    assert (await ann.recv_type("error"))["code"] == "unknown_participant"


async def test_leave_when_socket_closes(api: Api, ws_url: str) -> None:
    room_id = await api.create_room("leave")
    ann = await enter(api, ws_url, room_id, "Ann")
    ben = await enter(api, ws_url, room_id, "Ben")
    await ann.recv_type("join")
    await ben.client.close()
    leave = await ann.recv_type("leave")
    assert leave == {
        "type": "leave",
        "from": ben.participant_id,
        "to": "all",
        "data": {"participant_id": ben.participant_id},
        "room_seq": 3,
    }
    # Gone from the room: a newcomer's welcome lists only Ann and itself.
    cy = await enter(api, ws_url, room_id, "Cy")
    assert cy.participant_id
    joined = await api.join(room_id, "Dee")
    dee = await WsClient.connect(ws_url, joined["token"])
    names = sorted(p["name"] for p in (await dee.recv_type("welcome"))["participants"])
    assert names == ["Ann", "Cy", "Dee"]


async def test_room_full_on_connect_is_an_error_and_close(api: Api, ws_url: str) -> None:
    room_id = await api.create_room("full", max_participants=1)
    first = await api.join(room_id, "first")
    second = await api.join(room_id, "second")  # both got tokens while the room was empty
    one = await WsClient.connect(ws_url, first["token"])
    await one.recv_type("welcome")
    two = await WsClient.connect(ws_url, second["token"])
    error = await two.recv_type("error")
    assert error["code"] == "room_full"
    assert await two.closed() == (4009, "Room is full")
    await one.close()


async def test_same_token_twice_closes_the_older_socket(api: Api, ws_url: str) -> None:
    room_id = await api.create_room("twice")
    ann = await enter(api, ws_url, room_id, "Ann")
    ben = await enter(api, ws_url, room_id, "Ben")
    await ann.recv_type("join")
    again = await WsClient.connect(ws_url, ben.token)
    welcome = await again.recv_type("welcome")
    assert sorted(p["name"] for p in welcome["participants"]) == ["Ann", "Ben"]
    assert await ben.client.closed() == (4000, "Replaced by a newer connection")
    # No leave/join churn for Ann: her next message is Ben's broadcast from the new socket.
    await again.send({"type": "hi"})
    got = await ann.recv()
    assert (got["type"], got["from"]) == ("hi", ben.participant_id)


async def test_connect_to_deleted_room_is_refused(api: Api, ws_url: str) -> None:
    token = forged(
        {
            "room_id": str(uuid.uuid4()),
            "participant_id": str(uuid.uuid4()),
            "participant_name": "ghost",
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
        }
    )
    client = await WsClient.connect(ws_url, token)
    assert (await client.recv_type("error"))["code"] == "room_not_found"
    assert (await client.closed())[0] == 4004


async def test_refused_upgrades_log_no_error(system: System, api: Api, ws_url: str) -> None:
    """A stranger's refused handshakes (no token, a bad token) cannot fill the
    error log: uvicorn's own "ASGI callable returned without completing
    handshake" after each HTTP denial stays out of it (runtime.logs)."""
    edge = system.edges[0]
    start = len(edge.log())
    for n in range(20):
        url = ws_url if n % 2 else f"{ws_url}?token=not-a-jwt-{n}"
        assert (await refused_status(url))[0] == 401
    # A connection after them: once it is logged, so would their lines be.
    room_id = await api.create_room("after refusals")
    member = await enter(api, ws_url, room_id, "After")
    await eventually(
        lambda: member.participant_id in edge.log()[start:], timeout=10, message="never logged"
    )
    lines = edge.log()[start:].splitlines()
    assert [line for line in lines if '"level": "ERROR"' in line] == []
    assert sum('"WebSocket /ws' in line and " 401" in line for line in lines) == 20
    await member.client.close()
