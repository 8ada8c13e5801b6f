"""The room service API, room lifecycle timeouts and the durable event log,
against real processes, seen by real WebSocket clients."""

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import msgspec
import pytest
from nats.js.api import DeliverPolicy

from bus_schema import buckets, codec, log, subjects
from bus_schema.closecodes import CloseCode
from bus_schema.events import ParticipantLeft, RoomClosed
from bus_schema.log import LogEntry
from tests.harness import JWT_SECRET, Api, Member, System, WsClient, enter
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN_KEY = "admin-key-for-tests-0123456789-abcdef"


def admin_jwt(**claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"admin": True, "iat": now, "exp": now + 600, **claims}, JWT_SECRET, "HS256")


class Admin:
    def __init__(self, base_url: str, credential: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=f"{base_url}/api/admin",
            headers={"Authorization": f"Bearer {credential}"},
            timeout=10.0,
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, path, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()


async def log_entries(
    system: System, room_id: str, count: int, timeout: float = 15.0
) -> list[LogEntry]:
    """The first ``count`` entries of the room in the event log, as stored."""
    nc = await system.connect()
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            f"signal.log.*.{room_id}.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        entries = []
        async with asyncio.timeout(timeout):
            while len(entries) < count:
                msg = await sub.next_msg(timeout=timeout)
                entry = log.log_entry.decode(msg.data)
                assert msg.subject == subjects.log_event(room_id, entry.event)
                assert msg.header is not None
                assert msg.header["Nats-Msg-Id"] == entry.id
                entries.append(entry)
        await sub.unsubscribe()
        return entries
    finally:
        await nc.close()


async def test_admin_credentials_are_required(make_system: Callable[..., System]) -> None:
    system = make_system(ADMIN_API_KEY=ADMIN_KEY)
    await system.start()
    api = Api(system.edges[0].url)
    try:
        room_id = await api.create_room("guarded")
        joined = await api.join(room_id, "Ann")
        url = f"/api/admin/rooms/{room_id}"
        cases = {
            None: 401,
            "Bearer": 401,
            "Basic abc": 401,
            "Bearer wrong-key-wrong-key-wrong-key-0000": 401,
            f"Bearer {joined['token']}": 403,  # a participant's token: never an admin
            f"Bearer {admin_jwt(exp=int(time.time()) - 3600)}": 401,  # expired
            f"Bearer {jwt.encode({'admin': True, 'exp': 2**40, 'iat': 0}, 'x' * 40, 'HS256')}": 401,
        }
        for header, status in cases.items():
            headers = {} if header is None else {"Authorization": header}
            for method in ("GET", "DELETE"):
                response = await api.http.request(method, url, headers=headers)
                assert response.status_code == status, (header, method, response.text)
                assert "error" in response.json()
                assert ADMIN_KEY not in response.text
        # Nothing changed: the room is still there.
        assert (await api.http.get(f"/api/rooms/{room_id}")).status_code == 200
        for credential in (ADMIN_KEY, admin_jwt()):
            admin = Admin(system.edges[0].url, credential)
            assert (await admin.ok("GET", f"/rooms/{room_id}"))["name"] == "guarded"
            await admin.close()
        for line in system.logs().splitlines():
            assert ADMIN_KEY not in line
    finally:
        await api.close()


async def test_list_get_and_update_rooms(system: System, api: Api, ws_url: str) -> None:
    admin = Admin(system.edges[0].url, admin_jwt())
    try:
        room_ids = [await api.create_room(f"listed-{i}") for i in range(5)]
        ann = await enter(api, ws_url, room_ids[0], "Ann")
        bob = await enter(api, ws_url, room_ids[0], "Bob")
        await ann.recv_type("join")
        await ann.send({"type": "track-state", "kind": "audio", "enabled": False})
        await bob.recv_type("track-state")

        # Every room, a page at a time, each once, with its participant count.
        seen: dict[str, int] = {}
        cursor = None
        pages = 0
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = await admin.ok("GET", "/rooms", params=params)
            pages += 1
            assert len(page["rooms"]) <= 2
            for room in page["rooms"]:
                assert room["id"] not in seen
                seen[room["id"]] = room["num_participants"]
            cursor = page.get("next_cursor")
            if cursor is None:
                break
        assert pages >= 3
        assert set(room_ids) <= set(seen)
        assert seen[room_ids[0]] == 2
        assert seen[room_ids[1]] == 0
        assert (await admin.http.get("/rooms", params={"limit": 0})).status_code == 400
        assert (await admin.http.get("/rooms", params={"limit": 1000})).status_code == 400

        room = await admin.ok("GET", f"/rooms/{room_ids[0]}")
        assert room["name"] == "listed-0"
        assert room["max_participants"] == 10
        people = {p["id"]: p for p in room["participants"]}
        assert set(people) == {ann.participant_id, bob.participant_id}
        assert people[ann.participant_id]["name"] == "Ann"
        assert people[ann.participant_id]["audio"] is False
        assert people[ann.participant_id]["connected"] is True
        assert people[ann.participant_id]["edge_id"].startswith(system.edges[0].env["EDGE_ID"])
        assert people[ann.participant_id]["joined_at"].endswith("Z")

        # Rename and shrink: the next join is refused, nobody is removed.
        updated = await admin.ok(
            "PATCH", f"/rooms/{room_ids[0]}", json={"name": "renamed", "max_participants": 2}
        )
        assert updated["name"] == "renamed"
        assert updated["max_participants"] == 2
        assert len(updated["participants"]) == 2
        public = (await api.http.get(f"/api/rooms/{room_ids[0]}")).json()
        assert public["name"] == "renamed"
        assert public["maxParticipants"] == 2
        full = await api.http.post(f"/api/rooms/{room_ids[0]}/join", json={})
        assert full.status_code == 409
        for bad in ({}, {"max_participants": 0}, {"name": ""}, {"name": "x", "extra": 1}):
            response = await admin.http.patch(f"/rooms/{room_ids[0]}", json=bad)
            assert response.status_code == 400, (bad, response.text)
        assert (await admin.ok("GET", f"/rooms/{room_ids[0]}"))["name"] == "renamed"

        missing = "00000000-0000-4000-8000-000000000000"
        for method, path in (
            ("GET", f"/rooms/{missing}"),
            ("PATCH", f"/rooms/{missing}"),
            ("DELETE", f"/rooms/{missing}"),
            ("GET", "/rooms/not-a-room"),
            ("DELETE", f"/rooms/{room_ids[0]}/participants/{missing}"),
        ):
            response = await admin.http.request(method, path, json={"name": "x"})
            assert response.status_code == 404, (method, path, response.text)
        await ann.client.ws.close()
        await bob.client.ws.close()
    finally:
        await admin.close()


async def test_the_room_list_never_misses_a_room_while_rooms_change(
    make_system: Callable[..., System],
) -> None:
    """The listing used nats-py's ``KeyValue.keys()``, which now and then ended
    its snapshot before the keys arrived and listed no room at all (about 1 call
    in 60 while the bucket was being written): a reconciling backend would have
    dropped every room. Hundreds of listings while state changes must each see
    every room."""
    system = make_system()
    await system.start()
    api = Api(system.edges[0].url)
    admin = Admin(system.edges[0].url, admin_jwt())
    try:
        room_ids = {await api.create_room(f"kept-{i}") for i in range(5)}
        busy = next(iter(room_ids))
        ann = await enter(api, system.edges[0].ws_url, busy, "Ann")
        bob = await enter(api, system.edges[0].ws_url, busy, "Bob")
        await ann.recv_type("join")
        stop = asyncio.Event()

        async def churn() -> None:
            """Keep writing room_state: a mute toggled, new rooms created."""
            enabled = False
            while not stop.is_set():
                await ann.send({"type": "track-state", "kind": "audio", "enabled": enabled})
                await bob.recv_type("track-state")
                enabled = not enabled
                if len(room_ids) < 60:  # all on one page of 100
                    room_ids.add(await api.create_room("churn"))

        writer = asyncio.create_task(churn())
        try:
            for attempt in range(300):
                expected = set(room_ids)
                page = await admin.ok("GET", "/rooms", params={"limit": 100})
                listed = {room["id"] for room in page["rooms"]}
                assert expected <= listed, (attempt, len(expected - listed), len(listed))
        finally:
            stop.set()
            await writer
        await ann.client.ws.close()
        await bob.client.ws.close()
    finally:
        await admin.close()
        await api.close()


async def test_mute_kick_and_close(system: System, api: Api, ws_url: str) -> None:
    admin = Admin(system.edges[0].url, admin_jwt())
    try:
        room_id = await api.create_room("moderated")
        ann = await enter(api, ws_url, room_id, "Ann")
        bob = await enter(api, ws_url, room_id, "Bob")
        cy = await enter(api, ws_url, room_id, "Cy")
        await ann.recv_type("join")
        await ann.recv_type("join")
        await bob.recv_type("join")

        # Mute Bob's microphone: Bob and the others are told.
        done = await admin.ok(
            "POST",
            f"/rooms/{room_id}/participants/{bob.participant_id}/mute",
            json={"kind": "audio"},
        )
        for member in (ann, bob, cy):
            message = await member.recv_type("track-state")
            assert message["from"] == bob.participant_id
            assert (message["kind"], message["enabled"], message["by"]) == ("audio", False, "admin")
            assert message["room_seq"] == done["room_seq"]
        bad = await admin.http.post(
            f"/rooms/{room_id}/participants/{bob.participant_id}/mute", json={"kind": "screen"}
        )
        assert bad.status_code == 400
        assert bad.json()["code"] == "invalid_body"
        assert "'screen' at `kind`" in bad.json()["error"]

        # Remove Bob: he is told and disconnected, the others see him leave.
        await admin.ok("DELETE", f"/rooms/{room_id}/participants/{bob.participant_id}")
        assert (await bob.recv_type("kicked"))["room_id"] == room_id
        code, _ = await bob.client.closed()
        assert code == CloseCode.NOT_IN_ROOM
        for member in (ann, cy):
            assert (await member.recv_type("leave"))["from"] == bob.participant_id
        # His token no longer gets him in, through any edge.
        again = await WsClient.connect(ws_url, bob.token)
        error = await again.recv_type("error")
        assert error["code"] == "kicked"
        assert (await again.closed())[0] == CloseCode.NOT_IN_ROOM
        room = await admin.ok("GET", f"/rooms/{room_id}")
        assert {p["id"] for p in room["participants"]} == {ann.participant_id, cy.participant_id}
        gone = await admin.http.delete(f"/rooms/{room_id}/participants/{bob.participant_id}")
        assert gone.status_code == 404

        # Close the room: everyone is told and disconnected; the room is gone.
        await admin.ok("DELETE", f"/rooms/{room_id}")
        for member in (ann, cy):
            message = await member.recv_type("leave")
            assert message["from"] != member.participant_id
            assert (await member.recv_type("room-closed"))["reason"] == "admin"
            assert (await member.client.closed())[0] == CloseCode.ROOM_NOT_FOUND
        assert (await api.http.get(f"/api/rooms/{room_id}")).status_code == 404
        assert (await admin.http.get(f"/rooms/{room_id}")).status_code == 404
        assert (await api.http.post(f"/api/rooms/{room_id}/join", json={})).status_code == 404
        late = await WsClient.connect(ws_url, ann.token)
        assert (await late.recv_type("error"))["code"] == "room_not_found"
        page = await admin.ok("GET", "/rooms", params={"limit": 100})
        assert room_id not in {r["id"] for r in page["rooms"]}

        # The event log has the whole story, in order.
        entries = await log_entries(system, room_id, 9)
        assert [e.room_seq for e in entries] == list(range(9))
        assert [e.event for e in entries] == [
            log.ROOM_CREATED,
            *[log.PARTICIPANT_JOINED] * 3,
            log.TRACK_STATE_CHANGED,
            *[log.PARTICIPANT_LEFT] * 3,
            log.ROOM_CLOSED,
        ]
        assert entries[0].room is not None
        assert entries[0].room.name == "moderated"
        assert entries[4].by == "admin"
        assert entries[4].enabled is False
        assert entries[5].reason == "kicked"
        assert entries[5].participant_id == bob.participant_id
        assert {e.reason for e in entries[6:-1]} == {"room_closed"}
        assert entries[-1].reason == "admin"
        assert len({e.id for e in entries}) == len(entries)
    finally:
        await admin.close()


async def test_empty_and_departure_timeouts(system: System, api: Api, ws_url: str) -> None:
    admin = Admin(system.edges[0].url, admin_jwt())
    try:
        nobody = await api.create_room("nobody comes", empty_timeout=1)
        used = await api.create_room("short call", empty_timeout=1, departure_timeout=1)
        kept = await api.create_room("no limit", empty_timeout=0, departure_timeout=0)
        ann = await enter(api, ws_url, used, "Ann")
        # Joined in time: the empty timeout no longer applies.
        await until_gone(api, nobody)
        await asyncio.sleep(1.5)  # past `used`'s empty timeout: it must still be there
        assert (await api.http.get(f"/api/rooms/{used}")).status_code == 200
        room = await admin.ok("GET", f"/rooms/{used}")
        assert (room["empty_timeout"], room["departure_timeout"]) == (1.0, 1.0)
        await ann.client.ws.close()
        await until_gone(api, used)
        assert (await api.http.get(f"/api/rooms/{kept}")).status_code == 200
        bad = await api.http.post("/api/rooms", json={"name": "x", "empty_timeout": -1})
        assert bad.status_code == 400

        entries = await log_entries(system, used, 4)
        assert [e.event for e in entries] == [
            log.ROOM_CREATED,
            log.PARTICIPANT_JOINED,
            log.PARTICIPANT_LEFT,
            log.ROOM_CLOSED,
        ]
        assert entries[-1].reason == "departure_timeout"
        assert (await log_entries(system, nobody, 2))[-1].reason == "empty_timeout"
    finally:
        await admin.close()


async def until_gone(api: Api, room_id: str, timeout: float = 15.0) -> None:
    async def gone() -> bool:
        return (await api.http.get(f"/api/rooms/{room_id}")).status_code == 404

    await eventually(gone, timeout=timeout, interval=0.1, message=f"room {room_id} still there")


async def test_a_room_closes_on_time_after_its_worker_dies(
    make_system: Callable[..., System],
) -> None:
    """The departure timer is the owning actor's: a new owner takes it over."""
    system = make_system()
    await system.start(actors=2)
    api = Api(system.edges[0].url)
    try:
        room_id = await api.create_room("orphan", departure_timeout=2)
        ann: Member = await enter(api, system.edges[0].ws_url, room_id, "Ann")
        await ann.client.ws.close()
        bus = await system.bus()
        owner = await bus.room_owner(room_id)
        await bus.close()
        assert owner is not None
        system.actor(owner).kill()
        await until_gone(api, room_id, timeout=20)
    finally:
        await api.close()


async def test_a_passivated_room_still_closes_on_time(make_system: Callable[..., System]) -> None:
    """An idle room leaves the worker's memory; a timer brings it back at its deadline."""
    system = make_system(ROOM_PASSIVATE_AFTER="1")
    await system.start()
    api = Api(system.edges[0].url)
    bus = await system.bus()
    try:
        worker_id = system.actors[0].env["WORKER_ID"]
        room_id = await api.create_room("dozing", empty_timeout=4)

        async def passivated() -> bool:
            return (await bus.status(worker_id)).rooms_active == 0

        await eventually(passivated, timeout=30, interval=0.2, message="room never passivated")
        assert (await api.http.get(f"/api/rooms/{room_id}")).status_code == 200
        await until_gone(api, room_id)
        assert (await log_entries(system, room_id, 2))[-1].reason == "empty_timeout"
    finally:
        await bus.close()
        await api.close()


async def test_a_close_cut_short_by_a_crash_is_finished_by_the_next_owner(
    make_system: Callable[..., System],
) -> None:
    """Closing saves the close with its events, publishes, then deletes. Here the
    owner dies after the save: the next owner publishes and deletes."""
    system = make_system()
    await system.start(actors=2)
    api = Api(system.edges[0].url)
    bus = await system.bus()
    try:
        room_id = await api.create_room("interrupted")
        ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
        kv = await bus.js.key_value(buckets.ROOM_STATE)
        entry = await kv.get(room_id)
        assert entry.value is not None
        state = codec.room_state.decode(entry.value)
        seq = state.seq
        closing = msgspec.structs.replace(
            state,
            seq=seq + 2,
            participants={},
            closed=True,
            outbox=[
                ParticipantLeft(
                    room_id=room_id,
                    seq=seq + 1,
                    participant_id=ann.participant_id,
                    reason="room_closed",
                ),
                RoomClosed(room_id=room_id, seq=seq + 2, participant_id="", reason="admin"),
            ],
        )
        # What the owner wrote just before it died.
        await kv.update(room_id, codec.encode(closing), last=entry.revision)
        owner = await bus.room_owner(room_id)
        assert owner is not None
        system.actor(owner).kill()
        message = await ann.recv_type("room-closed", timeout=20)
        assert (message["reason"], message["room_seq"]) == ("admin", seq + 2)
        assert (await ann.client.closed())[0] == CloseCode.ROOM_NOT_FOUND
        await until_gone(api, room_id)
        assert await bus.room_state(room_id) is None
    finally:
        await bus.close()
        await api.close()
