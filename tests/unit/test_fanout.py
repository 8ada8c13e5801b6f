"""edge.fanout.RoomFeed: ordering, catch-up and resync, in memory."""

import msgspec
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from bus_schema import subjects
from bus_schema.commands import Snapshot
from bus_schema.events import Broadcasted, Event, ParticipantJoined
from bus_schema.state import Participant
from edge import protocol
from edge.connection import Connection
from edge.fanout import Fanout, RoomFeed

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
    feed.expect(ann)
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


# --- targeted frames from other edges --------------------------------------------------

CY = "cccccccc-cccc-4ccc-8ccc-cccccccccccc"


def offer(sender: str = BEN, kind: str = "offer", to: str = ANN) -> bytes:
    return msgspec.json.encode({"type": kind, "to": to, "from": sender, "sdp": "v=0"})


def dropped(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "signaling_edge_peer_frames_dropped_total", {"reason": reason}
    )
    return value or 0.0


async def test_only_frames_an_edge_could_relay_reach_the_client(feed_and_ann) -> None:  # type: ignore[no-untyped-def]
    feed, ann, _ = feed_and_ann
    before = dropped("type"), dropped("sender"), dropped("malformed")
    feed.on_peer(ANN, offer(kind="welcome"))
    feed.on_peer(ANN, offer(sender=CY))  # not in the room
    feed.on_peer(ANN, b"[]")
    feed.on_peer(ANN, offer(kind="answer"))
    feed.on_peer(BEN, offer(to=BEN))  # for someone on another edge: not ours
    assert drained(ann) == [msgspec.json.decode(offer(kind="answer"))]
    after = dropped("type"), dropped("sender"), dropped("malformed")
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]


async def test_frames_before_the_first_snapshot_are_checked_against_it() -> None:
    feed = RoomFeed(ROOM, request_resync=lambda _feed: None)
    ann = Connection(protocol.Identity(ROOM, ANN, "Ann"), limit_bytes=1 << 20)
    feed.expect(ann)  # the socket is joining: the feed knows no member yet
    feed.on_peer(ANN, offer())
    feed.on_peer(ANN, offer(sender=CY))
    assert drained(ann) == []
    snapshot = Snapshot(
        room_id=ROOM,
        seq=2,
        max_participants=5,
        participants=[person(ANN, ann.conn_id), person(BEN, "b")],
    )
    feed.add(ann, snapshot)
    assert [(m["type"], m.get("from")) for m in drained(ann)] == [("welcome", None), ("offer", BEN)]


async def test_frames_during_a_resync_wait_for_the_new_members(feed_and_ann) -> None:  # type: ignore[no-untyped-def]
    feed, ann, _ = feed_and_ann
    feed.resyncing = True
    feed.on_peer(ANN, offer(sender=CY))  # Cy joined while we were not listening
    assert drained(ann) == []
    now = Snapshot(
        room_id=ROOM,
        seq=5,
        max_participants=5,
        participants=[person(ANN, ann.conn_id), person(CY, "c")],
    )
    feed.resynced(now)
    assert [(m["type"], m.get("from")) for m in drained(ann)] == [("welcome", None), ("offer", CY)]


# --- the slow-consumer bound -----------------------------------------------------------


async def test_a_snapshot_never_trips_the_bound_by_itself() -> None:
    conn = Connection(protocol.Identity(ROOM, ANN, "Ann"), limit_bytes=100)
    conn.send_snapshot(["w" * 300, "r" * 200])  # five times the bound
    assert conn.closing is None
    conn.send("a" * 100)  # the bound applies beyond the snapshot
    assert conn.closing is None
    for _ in range(2):
        await conn.next_output()  # the snapshot is written
    conn.send("b" * 1)  # 101 pending, and the snapshot's grace is over
    assert conn.closing is not None
    assert conn.closing.code == 4008


async def test_beyond_the_snapshot_a_client_that_stops_reading_is_dropped() -> None:
    conn = Connection(protocol.Identity(ROOM, ANN, "Ann"), limit_bytes=100)
    conn.send_snapshot(["w" * 300])
    conn.send("a" * 100)
    assert conn.closing is None
    conn.send("b")
    assert conn.closing is not None
    assert conn.closing.discard_pending


async def test_the_bound_counts_bytes_not_characters() -> None:
    conn = Connection(protocol.Identity(ROOM, ANN, "Ann"), limit_bytes=100)
    conn.send("\U0001d538" * 20)  # 20 characters, 80 bytes in UTF-8
    assert conn.closing is None
    conn.send("é" * 11)  # 22 bytes more: 102
    assert conn.closing is not None
    assert conn.closing.code == 4008


class PeerMsg:
    """What a subscription hands `Fanout._on_peer`: a subject and the frame."""

    def __init__(self, to: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.subject = f"signal.room.{ROOM}.peer.{to}"
        self.data = data
        self.headers = headers


async def test_a_released_feeds_subscription_delivers_nothing_to_its_successor(
    feed_and_ann,  # type: ignore[no-untyped-def]
) -> None:
    """Found by the nemesis: a room's feed was released while its peer
    subscription was still being removed, and a new feed of the room
    subscribed at once; a frame reached both subscriptions, and both gave it
    to the new feed: the client got the `offer` twice."""
    successor, ann, _ = feed_and_ann
    released = RoomFeed(ROOM, request_resync=lambda _feed: None)
    fanout = Fanout(nc=None, commands=None, edge_id="e")  # type: ignore[arg-type]
    fanout._feeds[ROOM] = successor
    frame = offer()
    await fanout._on_peer(released, PeerMsg(ANN, frame))  # type: ignore[arg-type]
    await fanout._on_peer(successor, PeerMsg(ANN, frame))  # type: ignore[arg-type]
    assert drained(ann) == [msgspec.json.decode(frame)]


async def test_a_targeted_frame_sent_before_the_connection_was_opened_is_dropped(
    feed_and_ann,  # type: ignore[no-untyped-def]
) -> None:
    """A frame the network held past a reconnection was meant for the
    participant's earlier connection: dropped, also after waiting for the
    room's members. A frame that does not say when it was sent (an edge of an
    earlier version), or says it unreadably, is delivered."""
    feed, ann, _ = feed_and_ann
    fanout = Fanout(None, None, "e")  # type: ignore[arg-type]
    fanout._feeds[ROOM] = feed

    def frame(n: int) -> bytes:
        return msgspec.json.encode({"type": "offer", "to": ANN, "from": BEN, "sdp": "v=0", "n": n})

    def sent(seconds_before_open: float) -> dict[str, str]:
        return {subjects.PEER_SENT_AT: f"{ann.opened_at - seconds_before_open:.3f}"}

    await fanout._on_peer(feed, PeerMsg(ANN, frame(1), sent(5.0)))  # type: ignore[arg-type]
    await fanout._on_peer(feed, PeerMsg(ANN, frame(2), sent(0.1)))  # type: ignore[arg-type]
    await fanout._on_peer(feed, PeerMsg(ANN, frame(3)))  # type: ignore[arg-type]
    bad = {subjects.PEER_SENT_AT: "yesterday"}
    await fanout._on_peer(feed, PeerMsg(ANN, frame(4), bad))  # type: ignore[arg-type]
    feed.resyncing = True  # the members are unknown a while: frames wait
    await fanout._on_peer(feed, PeerMsg(ANN, frame(5), sent(5.0)))  # type: ignore[arg-type]
    await fanout._on_peer(feed, PeerMsg(ANN, frame(6), sent(-1.0)))  # type: ignore[arg-type]
    feed.resyncing = False
    before = dropped("sent_before_connection")
    feed._release_waiting_peers()
    assert [m["n"] for m in drained(ann)] == [2, 3, 4, 6]
    assert dropped("sent_before_connection") == before + 1
