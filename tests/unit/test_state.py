"""room_actors.state: pure decisions, no I/O."""

import dataclasses
from typing import Any

import msgspec
import pytest

from bus_schema.commands import (
    Ack,
    Broadcast,
    CloseRoom,
    CreateRoom,
    Disconnect,
    GetSnapshot,
    Join,
    Leave,
    MuteTrack,
    PublishSession,
    Rejected,
    RemoveParticipant,
    RoomInfo,
    SetTrackState,
    Snapshot,
    UpdateRoom,
)
from bus_schema.control import KICKED
from bus_schema.errors import ErrorCode
from bus_schema.events import (
    Broadcasted,
    ParticipantJoined,
    ParticipantLeft,
    SessionPublished,
    TrackMuted,
    TrackStateChanged,
)
from bus_schema.state import RoomState, Track
from edge import protocol
from room_actors.settings import ActorSettings
from room_actors.state import (
    SEQ_BLOCK,
    EdgesLost,
    ExpireDisconnected,
    Limits,
    decide,
    next_deadline,
    resumed,
)
from runtime.clock import Clock

ROOM = "11111111-1111-4111-8111-111111111111"
ANN = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
BEN = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
NOW = Clock(iso="2026-01-01T00:00:00.000Z", epoch=1_000_000.0)
DEFAULTS = Limits.from_settings(ActorSettings())
LIMITS = dataclasses.replace(DEFAULTS, recent_commands=4, resume_grace=10.0)
FRAME = msgspec.Raw(b'{"type":"x"}')


def create_command(max_participants: int = 10) -> CreateRoom:
    return CreateRoom(
        cmd_id="c0",
        room_id=ROOM,
        name="r",
        created_by="me",
        created_at=NOW.iso,
        max_participants=max_participants,
    )


def created(max_participants: int = 10, limits: Limits = LIMITS) -> RoomState:
    outcome = decide(None, create_command(max_participants), NOW, limits)
    assert outcome.reply == Ack(seq=0)
    assert outcome.state is not None
    return outcome.state


def join(state: RoomState, who: str, cmd_id: str, conn: str = "conn") -> RoomState:
    outcome = decide(
        state,
        Join(
            cmd_id=cmd_id,
            room_id=ROOM,
            participant_id=who,
            name=who[:3],
            edge_id="e1",
            conn_id=conn,
        ),
        NOW,
        LIMITS,
    )
    assert outcome.state is not None
    return outcome.state


def test_commands_on_a_missing_room_are_rejected() -> None:
    outcome = decide(None, GetSnapshot(cmd_id="x", room_id=ROOM), NOW, LIMITS)
    assert isinstance(outcome.reply, Rejected)
    assert outcome.reply.code == "room_not_found"


def test_create_twice_is_rejected_but_a_retry_is_acknowledged() -> None:
    state = created()
    retry = CreateRoom(
        cmd_id="c0",
        room_id=ROOM,
        name="r",
        created_by="me",
        created_at=NOW.iso,
        max_participants=10,
    )
    assert decide(state, retry, NOW, LIMITS).reply == Ack(seq=0)
    other = msgspec.structs.replace(retry, cmd_id="c1")
    reply = decide(state, other, NOW, LIMITS).reply
    assert isinstance(reply, Rejected)
    assert reply.code == "room_exists"


def test_join_adds_participant_and_numbers_the_event() -> None:
    state = created()
    outcome = decide(
        state,
        Join(cmd_id="j1", room_id=ROOM, participant_id=ANN, name="Ann", edge_id="e1", conn_id="c"),
        NOW,
        LIMITS,
    )
    assert outcome.state is not None
    assert outcome.state.seq == 1
    assert outcome.events == (
        ParticipantJoined(room_id=ROOM, seq=1, participant_id=ANN, name="Ann"),
    )
    assert isinstance(outcome.reply, Snapshot)
    assert [p.id for p in outcome.reply.participants] == [ANN]
    assert state.participants == {}  # the input is untouched


def test_room_full_is_enforced() -> None:
    state = join(created(max_participants=1), ANN, "j1")
    outcome = decide(
        state,
        Join(cmd_id="j2", room_id=ROOM, participant_id=BEN, name="Ben", edge_id="e1", conn_id="c"),
        NOW,
        LIMITS,
    )
    assert outcome.state is state
    assert isinstance(outcome.reply, Rejected)
    assert outcome.reply.code == "room_full"


def test_a_retried_join_is_applied_once() -> None:
    state = join(created(), ANN, "j1")
    again = decide(
        state,
        Join(
            cmd_id="j1", room_id=ROOM, participant_id=ANN, name="Ann", edge_id="e1", conn_id="conn"
        ),
        NOW,
        LIMITS,
    )
    assert again.state is state
    assert again.events == ()
    assert isinstance(again.reply, Snapshot)


def _attempt(conn: str, connected_at: int, cmd_id: str, who: str = ANN, **extra: Any) -> Join:
    return Join(
        cmd_id=cmd_id,
        room_id=ROOM,
        participant_id=who,
        name="Ann",
        edge_id=f"edge-of-{conn}",
        conn_id=conn,
        connected_at=connected_at,
        **extra,
    )


def test_a_join_older_than_the_participants_connection_is_refused_and_changes_nothing() -> None:
    """A late retry for a socket the client gave up (opened at 1,000) comes
    after the client moved to another (opened at 2,000): the newer stays."""
    newer = decide(created(), _attempt("newer", 2_000, "j1"), NOW, LIMITS).state
    assert newer is not None
    late = decide(newer, _attempt("older", 1_000, "j0"), NOW, LIMITS)
    assert late.state is newer
    assert isinstance(late.reply, Rejected)
    assert late.reply.code == ErrorCode.SUPERSEDED
    assert late.events == ()
    assert late.control == ()
    # A newer attempt still takes over, and a retry of the same socket's join is no refusal.
    newest = decide(newer, _attempt("newest", 3_000, "j2"), NOW, LIMITS)
    assert newest.state is not None
    assert newest.state.participants[ANN].conn_id == "newest"
    assert newest.state.participants[ANN].connected_at == 3_000
    again = decide(newest.state, _attempt("newest", 3_000, "j3"), NOW, LIMITS)
    assert not isinstance(again.reply, Rejected)
    # Also while the newer connection is away in its resume grace.
    away = decide(
        newest.state,
        Disconnect(cmd_id="d1", room_id=ROOM, participant_id=ANN, conn_id="newest"),
        NOW,
        LIMITS,
    ).state
    assert away is not None
    assert away.participants[ANN].disconnected_until is not None
    assert decide(away, _attempt("older", 1_000, "j4"), NOW, LIMITS).reply == late.reply


def test_an_older_token_of_an_identity_does_not_push_out_a_newer_one() -> None:
    """One participant per identity: a newer token takes the place, but a
    late attempt of an older connection of another token does not."""
    first = decide(created(), _attempt("b", 2_000, "j1", who=BEN, identity="ann@x"), NOW, LIMITS)
    assert first.state is not None
    late = decide(first.state, _attempt("a", 1_000, "j2", identity="ann@x"), NOW, LIMITS)
    assert isinstance(late.reply, Rejected)
    assert late.reply.code == ErrorCode.SUPERSEDED
    assert list(first.state.participants) == [BEN]


def test_joins_that_do_not_say_when_they_connected_replace_as_before() -> None:
    """Edges of a version without ``connected_at`` (0): the later join wins."""
    state = decide(created(), _attempt("new", 2_000, "j1"), NOW, LIMITS).state
    assert state is not None
    undated = decide(state, _attempt("undated", 0, "j2"), NOW, LIMITS)
    assert undated.state is not None
    assert undated.state.participants[ANN].conn_id == "undated"


def test_rejoin_with_new_connection_closes_the_old_one_without_events() -> None:
    state = join(created(), ANN, "j1", conn="old")
    outcome = decide(
        state,
        Join(
            cmd_id="j2", room_id=ROOM, participant_id=ANN, name="Ann", edge_id="e2", conn_id="new"
        ),
        NOW,
        LIMITS,
    )
    assert outcome.events == ()
    assert outcome.state is not None
    assert outcome.state.seq == state.seq
    assert outcome.state.participants[ANN].conn_id == "new"
    assert [(edge, close.conn_id, close.code) for edge, close in outcome.control] == [
        ("e1", "old", 4000)
    ]
    # A leave from the old connection no longer removes the participant.
    stale = decide(
        outcome.state,
        Leave(cmd_id="l1", room_id=ROOM, participant_id=ANN, conn_id="old"),
        NOW,
        LIMITS,
    )
    assert stale.state is outcome.state
    assert stale.events == ()


def test_leave_removes_and_announces() -> None:
    state = join(join(created(), ANN, "j1"), BEN, "j2")
    outcome = decide(
        state, Leave(cmd_id="l1", room_id=ROOM, participant_id=BEN, conn_id="conn"), NOW, LIMITS
    )
    assert outcome.state is not None
    assert list(outcome.state.participants) == [ANN]
    assert outcome.events == (
        ParticipantLeft(room_id=ROOM, seq=3, participant_id=BEN, reason="closed"),
    )


def test_relays_update_state_and_carry_the_frame() -> None:
    state = join(created(), ANN, "j1")
    session = decide(
        state,
        PublishSession(
            cmd_id="s1",
            room_id=ROOM,
            participant_id=ANN,
            conn_id="conn",
            frame=FRAME,
            session_id="sess",
            tracks=[Track(trackName="t")],
        ),
        NOW,
        LIMITS,
    )
    assert session.state is not None
    assert session.state.participants[ANN].session_id == "sess"
    assert session.events == (
        SessionPublished(
            room_id=ROOM, seq=2, participant_id=ANN, session_id="sess", frame=FRAME, cmd_id="s1"
        ),
    )
    muted = decide(
        session.state,
        SetTrackState(
            cmd_id="t1",
            room_id=ROOM,
            participant_id=ANN,
            conn_id="conn",
            frame=FRAME,
            kind="audio",
            enabled=False,
        ),
        NOW,
        LIMITS,
    )
    assert muted.state is not None
    assert muted.state.participants[ANN].audio is False
    assert muted.state.participants[ANN].video is None
    assert isinstance(muted.events[0], TrackStateChanged)
    said = decide(
        muted.state,
        Broadcast(cmd_id="b1", room_id=ROOM, participant_id=ANN, conn_id="conn", frame=FRAME),
        NOW,
        LIMITS,
    )
    assert said.events == (
        Broadcasted(room_id=ROOM, seq=4, participant_id=ANN, frame=FRAME, cmd_id="b1"),
    )
    assert said.reply == Ack(seq=4)


@pytest.mark.parametrize(("who", "conn"), [(BEN, "conn"), (ANN, "stale")])
def test_relays_from_outside_the_room_are_refused(who: str, conn: str) -> None:
    state = join(created(), ANN, "j1")
    outcome = decide(
        state,
        Broadcast(cmd_id="b1", room_id=ROOM, participant_id=who, conn_id=conn, frame=FRAME),
        NOW,
        LIMITS,
    )
    assert outcome.state is state
    assert isinstance(outcome.reply, Rejected)
    assert outcome.reply.code == "not_in_room"


def test_recent_command_ids_are_bounded() -> None:
    state = created()
    for index in range(10):
        state = join(state, f"{index:08d}-aaaa-4aaa-8aaa-aaaaaaaaaaaa", f"j{index}")
    assert state.recent_commands == ["j6", "j7", "j8", "j9"]


def test_a_dropped_connection_keeps_its_place_for_the_grace_period() -> None:
    state = join(join(created(), ANN, "j1"), BEN, "j2")
    away = decide(
        state,
        Disconnect(cmd_id="d1", room_id=ROOM, participant_id=BEN, conn_id="conn"),
        NOW,
        LIMITS,
    )
    assert away.events == ()
    assert away.state is not None
    assert away.state.participants[BEN].disconnected_until == NOW.epoch + 10.0
    assert next_deadline(away.state) == NOW.epoch + 10.0
    # Back in time, through another edge: no events, the grace is cleared.
    back = decide(
        away.state,
        Join(
            cmd_id="j3", room_id=ROOM, participant_id=BEN, name="Ben", edge_id="e2", conn_id="new"
        ),
        NOW,
        LIMITS,
    )
    assert back.events == ()
    assert back.control == ()  # the old connection is already gone
    assert back.state is not None
    assert back.state.participants[BEN].disconnected_until is None
    assert back.state.participants[BEN].edge_id == "e2"
    assert next_deadline(back.state) is None


def test_grace_expiry_makes_the_participant_leave() -> None:
    state = join(join(created(), ANN, "j1"), BEN, "j2")
    away = decide(
        state,
        Disconnect(cmd_id="d1", room_id=ROOM, participant_id=BEN, conn_id="conn"),
        NOW,
        LIMITS,
    ).state
    assert away is not None
    early = decide(away, ExpireDisconnected(), Clock(iso="", epoch=NOW.epoch + 9.9), LIMITS)
    assert early.state is away
    late = decide(away, ExpireDisconnected(), Clock(iso="", epoch=NOW.epoch + 10.0), LIMITS)
    assert late.events == (
        ParticipantLeft(room_id=ROOM, seq=3, participant_id=BEN, reason="timeout"),
    )
    assert late.state is not None
    assert list(late.state.participants) == [ANN]


def test_participants_of_a_lost_edge_leave_but_not_those_in_grace() -> None:
    state = join(join(created(), ANN, "j1"), BEN, "j2")
    away = decide(
        state,
        Disconnect(cmd_id="d1", room_id=ROOM, participant_id=BEN, conn_id="conn"),
        NOW,
        LIMITS,
    ).state
    assert away is not None
    lost = decide(away, EdgesLost(frozenset({"e1"})), NOW, LIMITS)
    assert [e.participant_id for e in lost.events] == [ANN]
    assert isinstance(lost.events[0], ParticipantLeft)
    assert lost.events[0].reason == "edge_lost"
    assert lost.state is not None
    assert list(lost.state.participants) == [BEN]


def test_broadcasts_within_the_reservation_need_no_write() -> None:
    state = join(created(), ANN, "j1")
    first = decide(
        state,
        Broadcast(cmd_id="b1", room_id=ROOM, participant_id=ANN, conn_id="conn", frame=FRAME),
        NOW,
        LIMITS,
    )
    assert first.durable  # the first one reserves a block of numbers: written
    assert first.state is not None
    assert first.state.seq_reserved == first.state.seq + SEQ_BLOCK
    second = decide(
        first.state,
        Broadcast(cmd_id="b2", room_id=ROOM, participant_id=ANN, conn_id="conn", frame=FRAME),
        NOW,
        LIMITS,
    )
    assert not second.durable
    assert second.state is not None
    assert second.state.seq == first.state.seq + 1
    assert second.events[0].cmd_id == "b2"
    # A new owner continues after the reservation: no number is used twice.
    assert resumed(first.state).seq == first.state.seq_reserved
    assert resumed(state) is state


# --- operators and the room lifecycle -------------------------------------------------

TIMED = dataclasses.replace(LIMITS, empty_timeout=30.0, departure_timeout=5.0)


def test_an_empty_room_closes_after_its_empty_timeout() -> None:
    command = create_command(3)
    room = created(3, TIMED)
    assert (room.close_at, room.close_reason) == (NOW.epoch + 30.0, "empty_timeout")
    assert next_deadline(room) == NOW.epoch + 30.0
    early = decide(room, ExpireDisconnected(), Clock(iso="", epoch=NOW.epoch + 29.9), TIMED)
    assert early.state is room
    assert not early.deleted
    due = decide(room, ExpireDisconnected(), Clock(iso="", epoch=NOW.epoch + 30.0), TIMED)
    assert due.deleted
    assert [type(e).__name__ for e in due.events] == ["RoomClosed"]
    assert due.events[0].reason == "empty_timeout"  # type: ignore[attr-defined]
    # Per room: 0 means no limit.
    keep = decide(None, msgspec.structs.replace(command, empty_timeout=0.0), NOW, TIMED).state
    assert keep is not None
    assert keep.close_at is None


def test_the_last_one_out_starts_the_departure_timeout() -> None:
    room = join(created(3, TIMED), ANN, "j1")
    assert room.close_at is None  # a join cancels the empty timeout
    room = join(room, BEN, "j2")
    leave = decide(
        room, Leave(cmd_id="l1", room_id=ROOM, participant_id=ANN, conn_id="conn"), NOW, TIMED
    )
    assert leave.state is not None
    assert leave.state.close_at is None  # Ben is still there
    last = decide(
        leave.state,
        Leave(cmd_id="l2", room_id=ROOM, participant_id=BEN, conn_id="conn"),
        NOW,
        TIMED,
    )
    assert last.state is not None
    assert (last.state.close_at, last.state.close_reason) == (NOW.epoch + 5.0, "departure_timeout")
    back = join(last.state, ANN, "j3")
    assert back.close_at is None
    closed = decide(last.state, ExpireDisconnected(), Clock(iso="", epoch=NOW.epoch + 5.0), TIMED)
    assert closed.deleted


def test_kick_mute_update_and_close() -> None:
    room = join(join(created(), ANN, "j1"), BEN, "j2")
    mute = decide(
        room, MuteTrack(cmd_id="m", room_id=ROOM, participant_id=BEN, kind="audio"), NOW, LIMITS
    )
    assert mute.state is not None
    assert mute.state.participants[BEN].audio is False
    (event,) = mute.events
    assert isinstance(event, TrackMuted)
    assert (event.participant_id, event.kind, event.enabled) == (BEN, "audio", False)
    assert event.by == "admin"
    # Rendered by the edges as the old service's frame, with ``by``.
    assert msgspec.json.decode(protocol.track_muted(event)) == {
        "type": "track-state",
        "from": BEN,
        "kind": "audio",
        "enabled": False,
        "by": "admin",
        "room_seq": 3,
    }
    bad = decide(
        room, MuteTrack(cmd_id="m2", room_id=ROOM, participant_id=BEN, kind="x"), NOW, LIMITS
    )
    assert isinstance(bad.reply, Rejected)
    assert bad.state is room

    kick = decide(
        room, RemoveParticipant(cmd_id="k", room_id=ROOM, participant_id=BEN), NOW, LIMITS
    )
    assert kick.state is not None
    assert BEN not in kick.state.participants
    assert kick.state.kicked == [BEN]
    assert [(e.participant_id, e.reason) for e in kick.events] == [(BEN, "kicked")]  # type: ignore[attr-defined]
    ((edge, close),) = kick.control
    assert (edge, close.conn_id, close.code) == ("e1", "conn", 4003)
    assert close.notice == KICKED
    assert msgspec.json.decode(protocol.kicked(ROOM)) == {
        "type": "kicked",
        "room_id": ROOM,
        "message": "You were removed from the room",
    }
    refused = decide(
        kick.state,
        Join(cmd_id="j9", room_id=ROOM, participant_id=BEN, name="b", edge_id="e1", conn_id="c9"),
        NOW,
        LIMITS,
    )
    assert isinstance(refused.reply, Rejected)
    assert refused.reply.code == "kicked"
    nobody = decide(
        room, RemoveParticipant(cmd_id="k2", room_id=ROOM, participant_id=ROOM), NOW, LIMITS
    )
    assert isinstance(nobody.reply, Rejected)

    update = decide(
        room, UpdateRoom(cmd_id="u", room_id=ROOM, name="new", max_participants=2), NOW, LIMITS
    )
    assert isinstance(update.reply, RoomInfo)
    assert (update.reply.meta.name, update.reply.meta.max_participants) == ("new", 2)
    zero = decide(room, UpdateRoom(cmd_id="u2", room_id=ROOM, max_participants=0), NOW, LIMITS)
    assert isinstance(zero.reply, Rejected)

    close = decide(room, CloseRoom(cmd_id="x", room_id=ROOM), NOW, LIMITS)
    assert close.deleted
    kinds = [(type(e).__name__, e.seq) for e in close.events]
    assert kinds == [("ParticipantLeft", 3), ("ParticipantLeft", 4), ("RoomClosed", 5)]
    assert close.reply == Ack(seq=5)
