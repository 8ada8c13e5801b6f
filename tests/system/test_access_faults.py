"""Access control when processes come and go (issue 16): a ban holds through
every edge, after the room's worker is SIGKILLed and another takes the room
over, and after the room was passivated (evicted from memory, reloaded from
KV); webhook receivers never hear of a hidden participant. One system of their
own: two workers, two edges, idle rooms passivated after a second."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import nats.errors
import pytest
import pytest_asyncio

from bus_schema import log
from bus_schema.closecodes import CloseCode
from tests.harness import Api, Bus, Member, RoomService, System, WsClient, arrive
from tests.system.test_admin import log_entries
from tests.system.test_webhooks import FAST, Receiver, settled
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Cluster:
    system: System
    apis: list[Api]
    services: list[RoomService]
    """The room service API of each edge."""
    bus: Bus

    def ws_url(self, edge: int) -> str:
        return self.system.edges[edge].ws_url

    def workers(self) -> list[str]:
        """The workers still running."""
        return [a.env["WORKER_ID"] for a in self.system.actors if a.alive()]

    async def token_room(self, name: str) -> str:
        response = await self.apis[0].http.post(
            "/api/rooms", json={"name": name, "join_policy": "token"}
        )
        assert response.status_code == 200, response.text
        room_id: str = response.json()["room_id"]
        return room_id

    async def member(self, edge: int, room_id: str, identity: str, **body: Any) -> Member:
        """A participant with a token minted through ``edge``'s room service,
        connected to ``edge``."""
        minted = await self.services[edge].mint(room_id, identity=identity, **body)
        member, _ = await arrive(
            self.ws_url(edge), minted["token"], minted["participant_id"], identity
        )
        return member

    async def refused(self, edge: int, room_id: str, identity: str) -> tuple[str, int | None]:
        """Mint a fresh token of ``identity`` through ``edge`` and connect it
        there: the error code it is told and the close code."""
        minted = await self.services[edge].mint(room_id, identity=identity)
        client = await WsClient.connect(self.ws_url(edge), minted["token"])
        error = await client.recv_type("error")
        code, _ = await client.closed()
        return error["code"], code


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    system = System(
        tmp_path_factory.mktemp("access-faults"),
        extra_env={"ROOM_PASSIVATE_AFTER": "1", "RESUME_GRACE": "1"},
    )
    try:
        await system.start(actors=2, edges=2)
        apis = [Api(edge.url) for edge in system.edges]
        services = [RoomService(edge.url) for edge in system.edges]
        bus = await system.bus()
        yield Cluster(system, apis, services, bus)
        await bus.close()
        for service in services:
            await service.close()
        for api in apis:
            await api.close()
    finally:
        await asyncio.to_thread(system.stop)


BOTH_EDGES = (0, 1)
BANNED = ("banned", CloseCode.NOT_IN_ROOM)


async def test_a_ban_holds_on_every_edge(cluster: Cluster) -> None:
    room_id = await cluster.token_room("two edges")
    ann = await cluster.member(0, room_id, "ann")
    mallory = await cluster.member(1, room_id, "mallory")
    trudy = await cluster.member(0, room_id, "trudy")
    await ann.recv_type("join")
    await ann.recv_type("join")
    await mallory.recv_type("join")

    # Banned through edge 0's API; Mallory's socket is on edge 1.
    await cluster.services[0].ok(
        "DELETE", f"/rooms/{room_id}/participants/{mallory.participant_id}?ban=true"
    )
    await mallory.recv_type("kicked")
    assert (await mallory.client.closed())[0] == CloseCode.NOT_IN_ROOM
    for member in (ann, trudy):
        assert (await member.recv_type("leave"))["from"] == mallory.participant_id
    # Banned through edge 1's API; Trudy's socket is on edge 0.
    await cluster.services[1].ok("POST", f"/rooms/{room_id}/bans", json={"identity": "trudy"})
    await trudy.recv_type("kicked")
    assert (await trudy.client.closed())[0] == CloseCode.NOT_IN_ROOM
    assert (await ann.recv_type("leave"))["from"] == trudy.participant_id

    for edge in BOTH_EDGES:
        for identity in ("mallory", "trudy"):
            assert await cluster.refused(edge, room_id, identity) == BANNED, (edge, identity)
    await ann.client.close()


async def test_a_ban_survives_passivation(cluster: Cluster) -> None:
    room_id = await cluster.token_room("dozing")
    mallory = await cluster.member(0, room_id, "mallory")
    await cluster.services[0].ok("POST", f"/rooms/{room_id}/bans", json={"identity": "mallory"})
    assert (await mallory.client.closed())[0] == CloseCode.NOT_IN_ROOM
    owner = await cluster.bus.room_owner(room_id)
    assert owner is not None

    async def passivated() -> bool:
        return (await cluster.bus.status(owner)).rooms_active == 0

    # Empty and idle: out of the worker's memory; the ban is in KV only.
    await eventually(passivated, timeout=30, interval=0.2, message="room never passivated")
    state = await cluster.bus.room_state(room_id)
    assert state is not None
    assert state.banned == ["mallory"]
    for edge in BOTH_EDGES:
        assert await cluster.refused(edge, room_id, "mallory") == BANNED, edge
    ann = await cluster.member(1, room_id, "ann")  # the room itself works
    await ann.client.close()


async def test_webhook_receivers_never_hear_of_a_hidden_participant(cluster: Cluster) -> None:
    system = cluster.system
    receiver = await Receiver().start()
    dispatcher = system.start_webhooks(WEBHOOK_URL=receiver.url, **FAST)
    try:
        room_id = await cluster.apis[0].create_room("recorded", departure_timeout=0)
        ann = await cluster.member(0, room_id, "ann")
        recorder = await cluster.member(
            1, room_id, "recorder-1", grants={"hidden": True, "can_publish": False}
        )
        await ann.send({"type": "track-state", "kind": "audio", "enabled": False})
        assert (await recorder.recv_type("track-state"))["from"] == ann.participant_id
        await recorder.client.close()

        async def recorder_gone() -> bool:
            room = await cluster.services[0].ok("GET", f"/rooms/{room_id}")
            return recorder.participant_id not in {p["id"] for p in room["participants"]}

        await eventually(recorder_gone, timeout=10, message="the recorder never left")
        await ann.client.close()

        def ours() -> list[dict[str, Any]]:
            return [d.entry for d in receiver.accepted() if d.entry["room_id"] == room_id]

        # Ann's leave is the room's last event: delivered in order after everything before.
        await receiver.until(lambda: log.PARTICIPANT_LEFT in [e["event"] for e in ours()])
        await settled(system)
        assert [e["event"] for e in ours()] == [
            log.ROOM_CREATED,
            log.PARTICIPANT_JOINED,
            log.TRACK_STATE_CHANGED,
            log.PARTICIPANT_LEFT,
        ]
        assert all(recorder.participant_id.encode() not in d.body for d in receiver.attempts)
        # The event log has it, for operators.
        entries = await log_entries(system, room_id, 6)
        hidden = [(e.event, e.participant_id, e.identity) for e in entries if e.hidden]
        assert hidden == [
            (log.PARTICIPANT_JOINED, recorder.participant_id, "recorder-1"),
            (log.PARTICIPANT_LEFT, recorder.participant_id, "recorder-1"),
        ]
    finally:
        await asyncio.to_thread(dispatcher.stop)
        await receiver.stop()


async def test_a_ban_survives_the_sigkill_of_the_rooms_worker(cluster: Cluster) -> None:
    """Last in this module: it leaves one worker."""
    room_id = await cluster.token_room("failover")
    mod = await cluster.member(0, room_id, "mod", grants={"room_admin": True})
    ann = await cluster.member(1, room_id, "ann")
    mallory = await cluster.member(1, room_id, "mallory")
    await mod.recv_type("join")
    await mod.recv_type("join")
    await ann.recv_type("join")

    # Banned by a room admin from its socket on edge 0.
    await mod.send({"type": "remove", "participant_id": mallory.participant_id, "ban": True})
    assert (await mallory.recv_type("kicked"))["by"] == mod.participant_id
    assert (await mallory.client.closed())[0] == CloseCode.NOT_IN_ROOM
    for member in (mod, ann):
        assert (await member.recv_type("leave"))["from"] == mallory.participant_id

    owner = await cluster.bus.room_owner(room_id)
    assert owner is not None
    assert len(cluster.workers()) == 2
    cluster.system.actor(owner).kill()  # SIGKILL
    (successor,) = cluster.workers()

    async def taken_over() -> bool:
        return await cluster.bus.room_owner(room_id) == successor

    await eventually(
        taken_over,
        timeout=30,
        interval=0.2,
        message="no worker took the room over",
        retry_on=(nats.errors.Error, TimeoutError),
    )
    for edge in BOTH_EDGES:
        assert await cluster.refused(edge, room_id, "mallory") == BANNED, edge
    # The room lives on with its new owner, its members still in it.
    bob = await cluster.member(0, room_id, "bob")
    for member in (mod, ann):
        assert (await member.recv_type("join"))["from"] == bob.participant_id
    for member in (mod, ann, bob):
        await member.client.close()
