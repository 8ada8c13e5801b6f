"""edge.fanout.RoomFeed: ordering, catch-up and resync, in memory."""

import msgspec
import pytest
import pytest_asyncio

from bus_schema.commands import Snapshot
from bus_schema.events import Broadcasted, Event, ParticipantJoined
from bus_schema.state import Participant
from edge import protocol
from edge.fanout import Connection, RoomFeed

ROOM = "11111111-1111-4111-8111-111111111111"
ANN = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
BEN = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"


def person(pid: str, conn: str) -> Participant:
    return Participant(id=pid, name=pid[:3], joined_at="", edge_id="e", conn_id=conn)


def said(seq: int, who: str = BEN) -> Event:
    return Broadcasted(
        room_id=ROOM, seq=seq, participant_id=who, frame=msgspec.Raw(b'{"type":"x"}')
    )


def drained(connection: Connection) -> list[dict[str, object]]:
    out = []
    queue = connection._queue  # the frames the socket writer would send
    while queue:
        item = queue.popleft()
        assert isinstance(item, str)
        out.append(msgspec.json.decode(item))
    return out


pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def feed_and_ann() -> tuple[RoomFeed, Connection, list[RoomFeed]]:
    resyncs: list[RoomFeed] = []
    feed = RoomFeed(ROOM, request_resync=resyncs.append)
    ann = Connection(protocol.Identity(ROOM, ANN, "Ann"), limit_bytes=1 << 20)
    snapshot = Snapshot(
        room_id=ROOM,
        seq=2,
        max_participants=5,
        participants=[person(ANN, ann.conn_id), person(BEN, "b")],
    )
    feed.add(ann, snapshot)
    assert [m["type"] for m in drained(ann)] == ["welcome"]
    return feed, ann, resyncs  # type: ignore[return-value]


async def test_events_in_order_and_duplicates_dropped(feed_and_ann) -> None:  # type: ignore[no-untyped-def]
    feed, ann, resyncs = feed_and_ann
    for seq in (3, 3, 4, 2):
        feed.on_event(said(seq))
    assert [m["room_seq"] for m in drained(ann)] == [3, 4]
    assert resyncs == []


async def test_a_gap_asks_for_catch_up_and_the_missed_events_fill_it(feed_and_ann) -> None:  # type: ignore[no-untyped-def]
    feed, ann, resyncs = feed_and_ann
    feed.on_event(said(5))
    assert resyncs == [feed]
    feed.resyncing = True
    feed.on_event(said(6))
    assert drained(ann) == []
    feed.caught_up([said(3), said(4), said(5)])
    assert [m["room_seq"] for m in drained(ann)] == [3, 4, 5, 6]


async def test_without_the_missed_events_a_snapshot_gives_a_fresh_welcome(feed_and_ann) -> None:  # type: ignore[no-untyped-def]
    feed, ann, _ = feed_and_ann
    feed.on_event(said(7))
    feed.resyncing = True
    joined = ParticipantJoined(room_id=ROOM, seq=8, participant_id="c" * 8, name="Cy")
    feed.on_event(joined)
    later = Snapshot(
        room_id=ROOM, seq=7, max_participants=5, participants=[person(ANN, ann.conn_id)]
    )
    feed.resynced(later)
    frames = drained(ann)
    assert [m["type"] for m in frames] == ["welcome", "join"]
    assert frames[0]["room_seq"] == 7
    assert frames[1]["room_seq"] == 8
    assert feed.members == {ANN, "c" * 8}


async def test_a_connection_missing_from_the_snapshot_is_closed(feed_and_ann) -> None:  # type: ignore[no-untyped-def]
    feed, ann, _ = feed_and_ann
    gone = Snapshot(room_id=ROOM, seq=9, max_participants=5, participants=[person(BEN, "b")])
    feed.resyncing = True
    feed.resynced(gone)
    assert ann.closing is not None
    assert ann.closing.code == 1013
