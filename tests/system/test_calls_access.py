"""Who may use the Calls proxy, and what a body may name: through a real edge and
actor, against the Calls stand-in (issue: "a Calls proxy whose room check cannot
be sidestepped")."""

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import jwt
import nats.js.errors
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus_schema import buckets
from tests.harness import (
    JWT_SECRET,
    CallsCaller,
    CallsWorld,
    Member,
    WsClient,
    enter,
    system_with_calls,
)
from tools.fakecalls import sdp

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN_KEY = "admin-key-for-the-calls-access-tests-0123"


World = CallsWorld


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    folder = tmp_path_factory.mktemp("calls-access")
    async with system_with_calls(folder, ADMIN_API_KEY=ADMIN_KEY, RESUME_GRACE="1") as world:
        yield world


class Caller(CallsCaller):
    """A participant of a room using the proxy with its join token."""

    def __init__(self, world: World, token: str, participant_id: str) -> None:
        super().__init__(world.http, token, participant_id)
        self.world = world

    async def push(self, name: str) -> None:
        offer = sdp.offer([sdp.Media("audio", "0")])
        response = await self.call(
            "POST",
            f"/session/{self.session_id}/tracks/new",
            {
                "sessionDescription": {"type": "offer", "sdp": offer},
                "tracks": [{"location": "local", "mid": "0", "trackName": name}],
            },
        )
        assert response.status_code == 200, response.text


async def joined(world: World, room_id: str, name: str) -> Caller:
    """A token only: the WebSocket is not opened (an old client's order)."""
    answer = await world.api.join(room_id, name)
    return Caller(world, answer["token"], answer["participant_id"])


async def connected(world: World, room_id: str, name: str) -> tuple[Caller, Member]:
    member = await enter(world.api, world.system.edges[0].ws_url, room_id, name)
    return Caller(world, member.token, member.participant_id), member


def served_since(world: World, mark: int) -> list[Any]:
    return world.calls.served[mark:]


# --- the room rule, body by body ----------------------------------------------------------


@dataclass
class Rooms:
    attacker: Caller
    mate: Caller
    """In the attacker's room, with a pushed track."""
    victim: Caller
    """In another room, with a pushed track."""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def rooms(world: World) -> Rooms:
    ours = await world.api.create_room("ours")
    theirs = await world.api.create_room("theirs")
    attacker, mate, victim = (
        await joined(world, ours, "Mallory"),
        await joined(world, ours, "Mate"),
        await joined(world, theirs, "Victim"),
    )
    for caller, name in ((attacker, "m-audio"), (mate, "mate-audio"), (victim, "secret-audio")):
        await caller.create_session()
        await caller.push(name)
    return Rooms(attacker, mate, victim)


@pytest.mark.parametrize(
    ("label", "body", "status"),
    [
        # The reported hole: the web client's own shape, an offer beside the tracks.
        ("with an offer", {"sessionDescription": {"type": "offer", "sdp": "v=0"}}, 403),
        ("with any other key", {"autoDiscover": False, "x": [1, {"y": 2}]}, 403),
    ],
)
async def test_a_pull_of_another_rooms_session_is_refused_whatever_else_the_body_holds(
    world: World, rooms: Rooms, label: str, body: dict[str, Any], status: int
) -> None:
    mark = len(world.calls.served)
    pull = {
        **body,
        "tracks": [
            {
                "location": "remote",
                "sessionId": rooms.victim.session_id,
                "trackName": "secret-audio",
            }
        ],
    }
    response = await rooms.attacker.call(
        "POST", f"/session/{rooms.attacker.session_id}/tracks/new", pull
    )
    assert response.status_code == status, (label, response.text)
    assert response.json()["code"] == "session_outside_room"
    assert served_since(world, mark) == []


def victim_ref(rooms: Rooms) -> str:
    return rooms.victim.session_id


@pytest.mark.parametrize(
    ("route", "template", "status", "code"),
    [
        # No location: not local, so it is checked.
        ("tracks/new", '{"tracks":[{"sessionId":"%s","trackName":"t"}]}', 403, None),
        ("tracks/new", '{"tracks":[{"location":"Remote","sessionId":"%s"}]}', 403, None),
        ("tracks/new", '{"tracks":[{"location":"local","sessionId":"%s"}]}', 403, None),
        # Names Cloudflare might match without regard to case are refused outright.
        ("tracks/new", '{"tracks":[{"location":"remote","SessionId":"%s"}]}', 400, None),
        ("tracks/new", '{"Tracks":[{"location":"remote","sessionId":"%s"}]}', 400, None),
        ("tracks/new", '{"tracks":[{"location":"remote","\\u017fessionId":"%s"}]}', 400, None),
        # A duplicate key: what was checked is what is forwarded.
        (
            "tracks/new",
            '{"tracks":[{"location":"local","mid":"0","trackName":"a"}],'
            '"tracks":[{"location":"remote","sessionId":"%s"}]}',
            403,
            None,
        ),
        (
            "tracks/new",
            '{"tracks":[{"location":"remote","sessionId":"%s","sessionId":"x"}]}',
            403,
            None,
        ),
        # Unreadable checked fields: refused, never waved through.
        ("tracks/new", '{"tracks":{"location":"remote","sessionId":"%s"}}', 400, "invalid_body"),
        ("tracks/new", '{"tracks":["%s"]}', 400, "invalid_body"),
        ("tracks/new", '{"tracks":[{"location":["remote"],"sessionId":"%s"}]}', 400, None),
        ("tracks/new", '{"tracks":[{"location":"remote","sessionId":["%s"]}]}', 400, None),
        ("tracks/new", '["%s"]', 400, "invalid_body"),
        ("tracks/new", '{"tracks":[{"location":"remote"}]} %s', 400, "invalid_body"),
        ("tracks/new", '{"tracks":[{"location":"remote","trackName":"no-session"}]}', 400, None),
        # Every route that can name another session.
        (
            "tracks/update",
            '{"tracks":[{"location":"remote","mid":"1","sessionId":"%s"}]}',
            403,
            None,
        ),
        ("tracks/close", '{"tracks":[{"mid":"1","sessionId":"%s"}],"force":true}', 403, None),
        (
            "datachannels/new",
            '{"dataChannels":[{"location":"remote","sessionId":"%s","dataChannelName":"c"}]}',
            403,
            None,
        ),
        ("datachannels/new", '{"dataChannels":[{"dataChannelName":"no-session"}]}', 400, None),
        (
            "datachannels/establish",
            '{"dataChannel":{"location":"remote","sessionId":"%s","dataChannelName":"c"}}',
            403,
            None,
        ),
    ],
)
async def test_bodies_that_name_another_room_or_cannot_be_read_never_reach_calls(
    world: World, rooms: Rooms, route: str, template: str, status: int, code: str | None
) -> None:
    method = "PUT" if route in ("tracks/update", "tracks/close") else "POST"
    body = template.replace("%s", victim_ref(rooms)) if "%s" in template else template
    mark = len(world.calls.served)
    response = await rooms.attacker.call(
        method, f"/session/{rooms.attacker.session_id}/{route}", body
    )
    assert response.status_code == status, (body, response.text)
    assert response.json()["code"] == code or code is None
    assert served_since(world, mark) == []


async def test_pathological_bodies_get_a_400(world: World, rooms: Rooms) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for body in (deep, '{"tracks":' + deep + "}", '{"sessionDescription":' + deep + "}"):
        response = await rooms.attacker.call(
            "POST", f"/session/{rooms.attacker.session_id}/tracks/new", body
        )
        assert response.status_code == 400, response.text
    assert "Traceback" not in world.system.edges[0].log()


async def test_a_pull_within_the_room_still_works_and_the_query_string_stays_home(
    world: World, rooms: Rooms
) -> None:
    mark = len(world.calls.served)
    read = await rooms.attacker.call("GET", f"/session/{rooms.mate.session_id}?thirdparty=true")
    assert read.status_code == 200
    (seen,) = served_since(world, mark)
    assert (seen.path.endswith(rooms.mate.session_id), seen.query) == (True, "")
    puller = await joined(world, await world.api.create_room("pullers"), "Puller")
    del puller  # another room's participant, unused: only the attacker's room matters
    pulled = await rooms.attacker.call(
        "POST",
        f"/session/{rooms.attacker.session_id}/tracks/new",
        {
            "tracks": [
                {
                    "location": "remote",
                    "sessionId": rooms.mate.session_id,
                    "trackName": "mate-audio",
                }
            ]
        },
    )
    assert pulled.status_code == 200, pulled.text
    assert pulled.json()["tracks"][0]["mid"]
    sources = {
        t.session_id for t in world.calls.sessions[rooms.attacker.session_id].tracks.values()
    }
    assert rooms.mate.session_id in sources


# --- the property: no body shape smuggles a reference out of the room ---------------------


class Obj:
    """A JSON object written from its pairs, so a key may appear twice."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


def write(value: Any) -> str:
    if isinstance(value, Obj):
        return "{" + ",".join(f"{json.dumps(k)}:{write(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, list):
        return "[" + ",".join(write(v) for v in value) + "]"
    return json.dumps(value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
SESSION_KEYS = ["sessionId", "SessionId", "sessionid", "SESSIONID", "\u017fessionId", "session_id"]
LOCATION_KEYS = ["location", "Location", "LOCATION"]
LOCATIONS = ["remote", "Remote", "REMOTE", "local", "", None, 7, "elsewhere"]
LIST_KEYS = ["tracks", "Tracks", "TRACKS", "dataChannels", "datachannels", "dataChannel"]


@st.composite
def item(draw: st.DrawFn, refs: list[str]) -> Obj:
    """A track or data channel naming one of ``refs`` (maybe), in any shape."""
    pairs: list[tuple[str, Any]] = []
    if draw(st.booleans()):
        pairs.append((draw(st.sampled_from(LOCATION_KEYS)), draw(st.sampled_from(LOCATIONS))))
    for _ in range(draw(st.integers(0, 2))):
        pairs.append((draw(st.sampled_from(SESSION_KEYS)), draw(st.sampled_from(refs))))
    pairs.append(("trackName", draw(st.sampled_from(["secret-audio", "mate-audio", "t"]))))
    for _ in range(draw(st.integers(0, 2))):
        pairs.append((draw(st.text(max_size=8)), draw(json_values)))
    return Obj(draw(st.permutations(pairs)))


@st.composite
def bodies(draw: st.DrawFn, refs: list[str]) -> str:
    pairs: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(LIST_KEYS))
        items = draw(st.lists(item(refs), max_size=3))
        value: Any = items[0] if key == "dataChannel" and items else items
        if draw(st.integers(0, 9)) == 0:
            value = Obj([("nested", value)])  # where no one reads it
        pairs.append((key, value))
    if draw(st.booleans()):
        pairs.append(("sessionDescription", Obj([("type", "offer"), ("sdp", "v=0")])))
    for _ in range(draw(st.integers(0, 2))):
        pairs.append((draw(st.text(max_size=8)), draw(json_values)))
    return write(Obj(draw(st.permutations(pairs))))


class Pairs(list[tuple[str, Any]]):
    """A JSON object as its pairs, in order, repeated keys included."""


def read_leniently(raw: bytes) -> set[str]:
    """Every session a lenient reader of this body could take as referenced: field
    names matched without regard to case (as Go's encoding/json does), and every
    value of a repeated key."""
    if not raw.strip():
        return set()
    document = json.loads(raw, object_pairs_hook=Pairs)
    if not isinstance(document, Pairs):
        return set()
    found: set[str] = set()
    for key, value in document:
        if key.casefold() not in ("tracks", "datachannels", "datachannel"):
            continue
        listed = [value] if isinstance(value, Pairs) else value if isinstance(value, list) else []
        for candidate in listed:
            if isinstance(candidate, Pairs):
                found.update(
                    named
                    for field, named in candidate
                    if field.casefold() == "sessionid" and isinstance(named, str)
                )
    return found


PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY
@given(data=st.data())
async def test_no_body_shape_gets_a_cross_room_reference_to_calls(
    world: World, rooms: Rooms, data: st.DataObject
) -> None:
    victim = rooms.victim.session_id
    refs = [victim, rooms.mate.session_id, rooms.attacker.session_id]
    route = data.draw(st.sampled_from(["tracks/new", "tracks/update", "datachannels/new"]))
    body = data.draw(bodies(refs))
    mark = len(world.calls.served)
    method = "PUT" if route == "tracks/update" else "POST"
    response = await rooms.attacker.call(
        method, f"/session/{rooms.attacker.session_id}/{route}", body
    )
    assert response.status_code < 500, response.text
    for seen in served_since(world, mark):
        assert victim not in read_leniently(seen.raw), (body, seen.raw)
    pulled = world.calls.sessions[rooms.attacker.session_id].tracks.values()
    assert all(t.session_id != victim for t in pulled)
    channels = world.calls.sessions[rooms.attacker.session_id].channels.values()
    assert all(c.session_id != victim for c in channels)


# --- membership on every call --------------------------------------------------------------


async def test_a_fresh_token_works_before_its_socket_connects(world: World) -> None:
    room_id = await world.api.create_room("early")
    early = await joined(world, room_id, "Early")
    await early.create_session()
    await early.push("early-audio")
    ice = await early.call("GET", "/ice-servers")
    assert ice.status_code == 200


async def test_a_leaver_is_refused_on_every_route(world: World) -> None:
    room_id = await world.api.create_room("leave")
    ann, ann_socket = await connected(world, room_id, "Ann")
    _ben, ben_socket = await connected(world, room_id, "Ben")
    await ann_socket.recv_type("join")
    sid = await ann.create_session()
    await ann.push("ann-audio")
    await ann_socket.client.close()  # a clean close
    assert (await ben_socket.recv_type("leave"))["from"] == ann.pid
    for method, path, body in (
        ("POST", "/session", None),
        ("GET", f"/session/{sid}", None),
        ("POST", f"/session/{sid}/tracks/new", {"tracks": []}),
        (
            "PUT",
            f"/session/{sid}/renegotiate",
            {"sessionDescription": {"type": "answer", "sdp": ""}},
        ),
        ("PUT", f"/session/{sid}/tracks/close", {"tracks": [{"mid": "0"}], "force": True}),
        ("GET", "/ice-servers", None),
    ):
        refused = await ann.call(method, path, body)
        assert (refused.status_code, refused.json()["code"]) == (403, "not_in_room"), (
            method,
            path,
            refused.text,
        )
    # Its session is no longer the room's.
    bus = await world.system.bus()
    kv = await bus.js.key_value(buckets.CALLS_SESSIONS)
    try:
        entry = await kv.get(sid)
    except nats.js.errors.KeyNotFoundError:  # deleted keys raise it too
        entry = None
    assert entry is None or not entry.value
    state = await bus.room_state(room_id)
    assert state is not None
    assert sid not in state.calls_sessions
    await bus.close()
    await ben_socket.client.close()


async def test_resume_grace_then_timeout_removal_and_close(world: World) -> None:
    room_id = await world.api.create_room("grace")
    ann, ann_socket = await connected(world, room_id, "Ann")
    ben, ben_socket = await connected(world, room_id, "Ben")
    await ann_socket.recv_type("join")
    await ann.create_session()
    ben_socket.client.ws.transport.abort()  # a drop: Ben may come back within the grace
    assert (await ben.call("GET", "/ice-servers")).status_code == 200
    assert (await ann_socket.recv_type("leave", timeout=15))["from"] == ben.pid  # grace over
    assert (await ben.call("GET", "/ice-servers")).status_code == 403
    # Removed by an operator.
    cy, _cy_socket = await connected(world, room_id, "Cy")
    await ann_socket.recv_type("join")
    removed = await world.http.delete(
        f"/api/admin/rooms/{room_id}/participants/{cy.pid}",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert removed.status_code in (200, 204), removed.text
    assert (await ann_socket.recv_type("leave"))["from"] == cy.pid
    assert (await cy.call("POST", "/session")).status_code == 403
    # The room closed.
    closed = await world.http.delete(
        f"/api/admin/rooms/{room_id}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert closed.status_code in (200, 204), closed.text
    await ann_socket.client.closed()
    refused = await ann.call("GET", f"/session/{ann.session_id}")
    assert refused.status_code == 403


async def test_a_token_that_never_connected_expires_for_the_proxy(world: World) -> None:
    room_id = await world.api.create_room("stale")
    answer = await world.api.join(room_id, "Old")
    claims = jwt.decode(answer["token"], options={"verify_signature": False})
    claims["iat"] = int(time.time()) - 3600  # issued an hour ago, never connected
    stale = Caller(
        world, jwt.encode(claims, JWT_SECRET, algorithm="HS256"), answer["participant_id"]
    )
    refused = await stale.call("POST", "/session")
    assert (refused.status_code, refused.json()["code"]) == (403, "not_in_room")
    # Connecting makes it a member: the proxy is open to it again.
    socket = await WsClient.connect(world.system.edges[0].ws_url, stale.token)
    await socket.recv_type("welcome")
    assert (await stale.call("POST", "/session")).status_code == 201
    await socket.close()


async def test_calls_sessions_are_capped_per_participant(world: World) -> None:
    room_id = await world.api.create_room("cap")
    ann, socket = await connected(world, room_id, "Ann")
    for _ in range(8):
        await ann.create_session()
    mark = len(world.calls.served)
    ninth = await ann.call("POST", "/session")
    assert (ninth.status_code, ninth.json()["code"]) == (409, "calls_session_limit")
    assert served_since(world, mark) == []  # refused before anything is created upstream
    state = await (bus := await world.system.bus()).room_state(room_id)
    await bus.close()
    assert state is not None
    assert len(state.calls_sessions) == 8
    await socket.client.close()
