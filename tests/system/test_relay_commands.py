"""The edge's command client sending relayed messages quiet (`edge.commands`),
on a real nats-server, with the test playing the room's actor: the event
carrying the command's id is the answer; while the room's events keep coming
(a busy room, ours queued behind others) the client keeps waiting instead of
adding a retry to the load; when the room is silent it sends the command again
the ordinary way."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats.aio.msg
import pytest
import pytest_asyncio

from bus_schema import codec, ids, subjects
from bus_schema.commands import Ack, Broadcast, Command
from bus_schema.events import Broadcasted
from edge.commands import RoomCommands
from tests.harness import NatsClient, System

pytestmark = pytest.mark.asyncio(loop_scope="session")

ATTEMPT = 0.4
"""The client's attempt timeout here: shorter than the busy room's wait."""


class Actor:
    """The test's stand-in for a room's actor: it records the commands it
    gets; the test says what it publishes."""

    def __init__(self, nc: NatsClient, room_id: str) -> None:
        self.nc = nc
        self.room_id = room_id
        self.commands: asyncio.Queue[tuple[Command, str]] = asyncio.Queue()

    async def on_command(self, msg: nats.aio.msg.Msg) -> None:
        await self.commands.put((codec.commands.decode(msg.data), msg.reply))

    async def event(self, seq: int, cmd_id: str) -> None:
        event = Broadcasted(
            room_id=self.room_id,
            seq=seq,
            participant_id=ids.new_id(),
            frame=msgspec.Raw(b'{"type":"x"}'),
            cmd_id=cmd_id,
        )
        await self.nc.publish(subjects.room_events(self.room_id), codec.encode(event))


@pytest_asyncio.fixture(loop_scope="session")
async def world(tmp_path: Path) -> AsyncIterator[tuple[RoomCommands, Actor]]:
    system = System(tmp_path)
    edge = actor_nc = None
    try:
        system.start_nats()
        edge = await system.connect(role="edge")
        actor_nc = await system.connect()
        room_id = ids.new_id()
        actor = Actor(actor_nc, room_id)
        await actor_nc.subscribe(subjects.room_command(room_id), cb=actor.on_command)
        commands = RoomCommands(edge, attempt_timeout=ATTEMPT, deadline=10.0)
        await commands.start()

        async def on_event(msg: nats.aio.msg.Msg) -> None:  # as the edge's fan-out does
            event = codec.events.decode(msg.data)
            commands.echoed(event.room_id, event.cmd_id, event.seq)

        await edge.subscribe(subjects.room_events(room_id), cb=on_event)
        await actor_nc.flush()
        await edge.flush()
        yield commands, actor
        await commands.stop()
    finally:
        for nc in (edge, actor_nc):
            if nc is not None:
                await nc.close()
        system.stop()


def quiet(room_id: str) -> Broadcast:
    return Broadcast(
        cmd_id=ids.new_command_id(),
        room_id=room_id,
        participant_id=ids.new_id(),
        conn_id="c",
        frame=msgspec.Raw(b'{"type":"x"}'),
        quiet=True,
    )


async def relayed(commands: RoomCommands, actor: Actor) -> tuple[Broadcast, "asyncio.Task[Any]"]:
    """A quiet relay on its way, once the actor has it: the command and the
    task waiting for its answer."""
    command = quiet(actor.room_id)
    relaying = asyncio.create_task(commands.relay(command))
    received, _ = await asyncio.wait_for(actor.commands.get(), 5)
    assert received == command
    return command, relaying


async def test_a_busy_rooms_relay_is_waited_for_not_sent_again(
    world: tuple[RoomCommands, Actor],
) -> None:
    commands, actor = world
    command, relaying = await relayed(commands, actor)
    # Other events of the room for 3 attempt timeouts, then ours.
    for seq in range(1, 7):
        await actor.event(seq, ids.new_command_id())
        await asyncio.sleep(ATTEMPT / 2)  # the room is busy for this long
    await actor.event(7, command.cmd_id)
    assert await asyncio.wait_for(relaying, 5) == Ack(seq=7)
    assert actor.commands.empty()  # never sent again


async def test_a_silent_rooms_relay_is_sent_again_in_full(
    world: tuple[RoomCommands, Actor],
) -> None:
    commands, actor = world
    command, relaying = await relayed(commands, actor)
    # Nothing from the room: after the attempt timeout, the ordinary way.
    again, reply_to = await asyncio.wait_for(actor.commands.get(), 5)
    assert again == msgspec.structs.replace(command, quiet=False)
    await actor.nc.publish(reply_to, codec.encode(Ack(seq=3)))
    assert await asyncio.wait_for(relaying, 5) == Ack(seq=3)
