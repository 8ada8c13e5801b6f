"""Room actors on the bus: a test speaks to a real worker as an edge would."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import nats
import pytest
import pytest_asyncio

from bus_schema import codec, ids, subjects
from bus_schema.commands import Ack, Broadcast, CreateRoom, Join, Rejected, Snapshot
from bus_schema.events import Broadcasted, ParticipantJoined
from bus_schema.status import EdgeHeartbeat
from edge.commands import RoomCommands
from room_actors.settings import ActorSettings
from room_actors.state import Clock, Limits, decide
from room_actors.store import Fenced, RoomStore, ensure_buckets
from signaling.natsserver import NatsServer
from tests.harness import Api, System, WsClient, opened

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEST_EDGE = "test-edge"
"""The edge the tests' participants are on: the test speaks for it."""


@pytest_asyncio.fixture(loop_scope="session")
async def test_edge(system: System) -> AsyncIterator[None]:
    """``TEST_EDGE``'s heartbeats while a test runs, as a live edge sends them:
    a worker takes an edge it has never heard from for dead after
    ``EDGE_TIMEOUT``, and removes its participants (a race the tests lost on
    a loaded machine)."""
    nc = await system.connect()
    beat = codec.encode(
        EdgeHeartbeat(
            edge_id=TEST_EDGE, started_at="2026-01-01T00:00:00.000Z", connections=1, rooms=1
        )
    )

    async def beating() -> None:
        while True:
            await nc.publish(subjects.edge_heartbeat(TEST_EDGE), beat)
            await asyncio.sleep(0.25)

    await nc.publish(subjects.edge_heartbeat(TEST_EDGE), beat)
    await nc.flush()
    task = asyncio.create_task(beating())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await nc.close()


async def request(nc: nats.aio.client.Client, command: object) -> object:
    room_id = command.room_id  # type: ignore[attr-defined]
    msg = await nc.request(subjects.room_command(room_id), codec.encode(command), timeout=5)
    return codec.replies.decode(msg.data)


async def room_with_member(
    nc: nats.aio.client.Client, name: str, room_id: str | None = None
) -> tuple[str, str]:
    """A new room (``room_id`` or a fresh one) and a participant in it
    (connection ``c1``): their ids."""
    room_id, participant = room_id or ids.new_id(), ids.new_id()
    create = CreateRoom(
        cmd_id=f"create-{name}",
        room_id=room_id,
        name=name,
        created_by="test",
        created_at="2026-01-01T00:00:00.000Z",
        max_participants=5,
    )
    assert await request(nc, create) == Ack(seq=0)
    join = Join(
        cmd_id=f"join-{name}",
        room_id=room_id,
        participant_id=participant,
        name=name,
        edge_id=TEST_EDGE,
        conn_id="c1",
    )
    assert isinstance(await request(nc, join), Snapshot)
    return room_id, participant


async def test_a_retried_command_is_applied_once(system: System, test_edge: None) -> None:
    nc = await system.connect()
    room_id = ids.new_id()
    events: asyncio.Queue[object] = asyncio.Queue()

    async def on_event(msg: nats.aio.msg.Msg) -> None:
        await events.put(codec.events.decode(msg.data))

    await nc.subscribe(subjects.room_events(room_id), cb=on_event)
    create = CreateRoom(
        cmd_id="create-1",
        room_id=room_id,
        name="bus",
        created_by="test",
        created_at="2026-01-01T00:00:00.000Z",
        max_participants=5,
    )
    assert await request(nc, create) == Ack(seq=0)
    assert await request(nc, create) == Ack(seq=0)

    participant = ids.new_id()
    join = Join(
        cmd_id="join-1",
        room_id=room_id,
        participant_id=participant,
        name="Bus",
        edge_id=TEST_EDGE,
        conn_id="c1",
    )
    first, second = await request(nc, join), await request(nc, join)
    assert isinstance(first, Snapshot)
    assert isinstance(second, Snapshot)
    assert first.seq == second.seq == 1

    say = Broadcast(
        cmd_id="say-1",
        room_id=room_id,
        participant_id=participant,
        conn_id="c1",
        frame=msgspec.Raw(b'{"type":"x"}'),
    )
    assert await request(nc, say) == Ack(seq=2)
    assert await request(nc, say) == Ack(seq=2)
    # A different id is a different command.
    again = msgspec.structs.replace(say, cmd_id="say-2")
    assert await request(nc, again) == Ack(seq=3)

    # Events are numbered; the bus may repeat one (a worker republishes after a
    # reconnect), receivers keep the first of each number.
    by_seq: dict[int, object] = {}
    while len(by_seq) < 3:
        event = await asyncio.wait_for(events.get(), 5)
        by_seq.setdefault(event.seq, event)  # type: ignore[attr-defined]
    assert sorted(by_seq) == [1, 2, 3]
    assert [type(by_seq[n]) for n in (1, 2, 3)] == [ParticipantJoined, Broadcasted, Broadcasted]
    await nc.close()


async def test_a_quiet_relay_is_answered_only_when_refused(system: System, test_edge: None) -> None:
    """A relayed message sent ``quiet`` (as edges send them): its success is
    its event on the room's stream, with no reply message; a refusal still
    comes back as one."""
    nc = await system.connect()
    events: asyncio.Queue[object] = asyncio.Queue()
    answers: asyncio.Queue[object] = asyncio.Queue()

    async def on_event(msg: nats.aio.msg.Msg) -> None:
        await events.put(codec.events.decode(msg.data))

    async def on_answer(msg: nats.aio.msg.Msg) -> None:
        await answers.put((msg.subject, codec.replies.decode(msg.data)))

    inbox = nc.new_inbox()
    await nc.subscribe(inbox + ".*", cb=on_answer)
    room_id = ids.new_id()
    await nc.subscribe(subjects.room_events(room_id), cb=on_event)
    room_id, participant = await room_with_member(nc, "quiet", room_id)
    assert isinstance(await asyncio.wait_for(events.get(), 5), ParticipantJoined)

    subject = subjects.room_command(room_id)
    frame = msgspec.Raw(b'{"type":"x"}')
    say = Broadcast(
        cmd_id="q-1", room_id=room_id, participant_id=participant, conn_id="c1", frame=frame
    )
    quiet = msgspec.structs.replace(say, quiet=True)
    await nc.publish(subject, codec.encode(quiet), reply=f"{inbox}.q-1")
    event = await asyncio.wait_for(events.get(), 5)
    assert isinstance(event, Broadcasted)
    assert event.cmd_id == "q-1"
    # A command answered after it, by the same actor in order: by then a reply
    # to the quiet one would have come.
    assert await request(nc, msgspec.structs.replace(say, cmd_id="q-2")) == Ack(seq=3)
    assert answers.empty()

    stranger = msgspec.structs.replace(quiet, cmd_id="q-3", conn_id="not-the-connection")
    await nc.publish(subject, codec.encode(stranger), reply=f"{inbox}.q-3")
    to, refusal = await asyncio.wait_for(answers.get(), 5)
    assert to == f"{inbox}.q-3"
    assert isinstance(refusal, Rejected)
    assert refusal.code == "not_in_room"
    await nc.close()


async def test_a_quiet_relay_from_a_client_not_listening_for_refusals_is_answered(
    system: System, test_edge: None
) -> None:
    """An edge's command client that is not (or no longer) subscribed to the
    answers of quiet commands (starting, stopping) sends them in full: the
    relay is acknowledged, not left waiting for an echo it cannot see."""
    nc = await system.connect(role="edge")
    room_id, participant = await room_with_member(nc, "unsubscribed")
    commands = RoomCommands(nc, attempt_timeout=1.0, deadline=3.0)  # never started
    say = Broadcast(
        cmd_id="u-1",
        room_id=room_id,
        participant_id=participant,
        conn_id="c1",
        frame=msgspec.Raw(b'{"type":"x"}'),
        quiet=True,
    )
    assert await commands.relay(say) == Ack(seq=2)
    await nc.close()


async def test_malformed_commands_are_refused(system: System) -> None:
    nc = await system.connect()
    room_id = ids.new_id()
    msg = await nc.request(subjects.room_command(room_id), b'{"type":"nope"}', timeout=5)
    reply = codec.replies.decode(msg.data)
    assert isinstance(reply, Rejected)
    assert reply.code == "bad_command"
    await nc.close()


async def test_a_stale_writer_is_fenced(tmp_path: Path) -> None:
    """Two stores load the same revision; the second save from the older one fails."""
    server = NatsServer(data_dir=tmp_path).start()
    try:
        nc = opened(await nats.connect(server.url))
        js = nc.jetstream()
        await ensure_buckets(js, ttl=60, replicas=1, max_bytes=1024**2)
        old_owner, new_owner = await RoomStore.bind(nc, js), await RoomStore.bind(nc, js)
        room_id = ids.new_id()
        created = decide(
            None,
            CreateRoom(
                cmd_id="c",
                room_id=room_id,
                name="r",
                created_by="t",
                created_at="2026-01-01T00:00:00.000Z",
                max_participants=3,
            ),
            Clock(iso="2026-01-01T00:00:00.000Z", epoch=0.0),
            Limits.from_settings(ActorSettings()),
        ).state
        assert created is not None
        revision = await old_owner.save(created, None)
        seen_by_old = await old_owner.load(room_id)
        seen_by_new = await new_owner.load(room_id)
        assert seen_by_old.revision == seen_by_new.revision == revision
        assert seen_by_new.state is not None
        await new_owner.save(msgspec.structs.replace(seen_by_new.state, seq=7), revision)
        assert seen_by_old.state is not None
        with pytest.raises(Fenced):
            await old_owner.save(msgspec.structs.replace(seen_by_old.state, seq=1), revision)
        after = await new_owner.load(room_id)
        assert after.state is not None
        assert after.state.seq == 7
        await nc.close()
    finally:
        server.stop()


async def test_client_gets_an_error_when_no_actor_answers_in_time(
    make_system: Callable[..., System],
) -> None:
    system = make_system(COMMAND_DEADLINE="1.5")
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("lonely")
    joined = await api.join(room_id, "Ann")
    client = await WsClient.connect(system.edges[0].ws_url, joined["token"])
    await client.recv_type("welcome")
    system.actors[0].kill()
    await client.send({"type": "track-state", "kind": "audio", "enabled": False})
    error = await client.recv_type("error")
    assert error["code"] == "unavailable"
    # The connection stays; once a worker is back the same message goes through.
    system.start_actor()
    await system.wait_actors_ready()
    other = await api.join(room_id, "Ben")
    ben = await WsClient.connect(system.edges[0].ws_url, other["token"])
    await ben.recv_type("welcome")
    assert (await client.recv_type("join"))["from"] == other["participant_id"]
    await client.send({"type": "track-state", "kind": "audio", "enabled": False})
    assert (await ben.recv_type("track-state"))["from"] == joined["participant_id"]
    await api.close()
