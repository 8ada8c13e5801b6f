"""Actors send typed events and control messages; the edge alone renders them
(`edge.protocol`), as the frames the old service sent."""

from types import SimpleNamespace
from typing import Any, cast

import msgspec
import pytest

from bus_schema import codec
from bus_schema.commands import Snapshot
from bus_schema.control import KICKED, CloseConnection
from bus_schema.events import TrackMuted, TrackStateChanged
from bus_schema.state import Participant
from edge import protocol
from edge.connection import Close, Connection
from edge.fanout import Fanout, RoomFeed

ROOM = "11111111-1111-4111-8111-111111111111"
ANN = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
BEN = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"

pytestmark = pytest.mark.asyncio(loop_scope="session")


def connection(pid: str) -> Connection:
    return Connection(protocol.Identity(ROOM, pid, pid[:3]), limit_bytes=1 << 20)


def output(connection: Connection) -> list[str | Close]:
    """What the socket writer would send, emptied."""
    out = list(connection._queue)
    connection._queue.clear()
    return out


async def test_an_operators_mute_reaches_the_muted_participant_too() -> None:
    feed = RoomFeed(ROOM, request_resync=lambda feed: None)
    ann, ben = connection(ANN), connection(BEN)
    people = [
        Participant(id=c.participant_id, name="x", joined_at="", edge_id="e", conn_id=c.conn_id)
        for c in (ann, ben)
    ]
    snapshot = Snapshot(room_id=ROOM, seq=2, max_participants=5, participants=people)
    for each in (ann, ben):
        feed.expect(each)
        feed.add(each, snapshot)
        output(each)  # the welcome
    feed.on_event(
        TrackMuted(
            room_id=ROOM,
            seq=3,
            participant_id=BEN,
            kind="audio",
            enabled=False,
            by="admin",
            cmd_id="m1",
        )
    )
    frame = (
        f'{{"type":"track-state","from":"{BEN}","kind":"audio","enabled":false,'
        '"by":"admin","room_seq":3}'
    )
    assert output(ben) == [frame]
    assert output(ann) == [frame]
    # A participant's own track-state is relayed as sent, to the others only.
    own = msgspec.Raw(f'{{"type":"track-state","kind":"video","enabled":true,"from":"{BEN}"}}')
    feed.on_event(
        TrackStateChanged(
            room_id=ROOM, seq=4, participant_id=BEN, kind="video", enabled=True, frame=own
        )
    )
    assert output(ben) == []
    assert [msgspec.json.decode(cast(str, text))["room_seq"] for text in output(ann)] == [4]


async def test_a_removed_participant_is_told_kicked_before_its_socket_closes() -> None:
    fanout = Fanout(cast(Any, None), cast(Any, None), "edge-1")
    ben = connection(BEN)
    fanout.register(ben)
    close = CloseConnection(
        conn_id=ben.conn_id, code=4003, reason="Removed from the room", notice=KICKED
    )
    await fanout._on_control(cast(Any, SimpleNamespace(data=codec.encode(close))))
    assert output(ben) == [
        f'{{"type":"kicked","room_id":"{ROOM}","message":"You were removed from the room"}}',
        Close(4003, "Removed from the room"),
    ]
