"""room_actors.state.decide returns all a turn must do: what is saved, projected,
logged, published again, closed. The actor only carries it out (the choices that
used to be made again in actor.py, by command type, are checked here)."""

import dataclasses

import msgspec

from bus_schema.commands import (
    Ack,
    Broadcast,
    CheckMember,
    CloseRoom,
    GetRoom,
    GetSnapshot,
    Join,
    Leave,
    MuteTrack,
    PublishSession,
    RegisterCallsSession,
    Rejected,
    RemoveParticipant,
    SetTrackState,
    Snapshot,
    UpdateRoom,
)
from bus_schema.control import KICKED
from bus_schema.events import TrackMuted
from bus_schema.log import LogEntry
from bus_schema.state import CallsSession, RoomState, Track
from room_actors.state import (
    Decision,
    ExpireDisconnected,
    KeepAlive,
    Republish,
    decide,
)
from tests.unit.test_state import (
    ANN,
    BEN,
    FRAME,
    LIMITS,
    NOW,
    ROOM,
    TIMED,
    create_command,
    created,
    join,
)

SESSION = "s" * 32


def entries(decision: Decision) -> list[tuple[str, int, str | None]]:
    """(event, room_seq, participant) of each log entry, in order."""
    return [(e.event, e.room_seq, e.participant_id) for e in decision.log]


def with_session(room: RoomState, who: str = ANN, session: str = SESSION) -> RoomState:
    command = RegisterCallsSession(
        cmd_id=f"r-{who}-{session}", room_id=ROOM, participant_id=who, session_id=session
    )
    after = decide(room, command, NOW, LIMITS).state
    assert after is not None
    return after


def owner(session: str, who: str) -> CallsSession:
    return CallsSession(session_id=session, room_id=ROOM, participant_id=who)


def test_a_new_room_is_logged_projected_and_written() -> None:
    first = decide(None, create_command(), NOW, LIMITS)
    assert first.state is not None
    assert (first.write, first.meta) == (True, True)
    assert first.log == (
        LogEntry(
            id=f"{ROOM}.0",
            event="room_created",
            room_id=ROOM,
            room_seq=0,
            at=NOW.iso,
            room=first.state.meta,
        ),
    )
    # A retried create: its metadata is written again (the first turn may have
    # died before), nothing is logged or saved.
    again = decide(first.state, create_command(), NOW, LIMITS)
    assert again.state is first.state
    assert (again.write, again.meta, again.log) == (False, True, ())
    taken = decide(first.state, msgspec.structs.replace(create_command(), cmd_id="c9"), NOW, LIMITS)
    assert isinstance(taken.reply, Rejected)
    assert (taken.write, taken.meta, taken.log) == (False, False, ())


def test_each_room_event_has_its_log_entry() -> None:
    room = join(created(), ANN, "j1")
    room = join(room, BEN, "j2")
    session = decide(
        room,
        PublishSession(
            cmd_id="p1",
            room_id=ROOM,
            participant_id=ANN,
            conn_id="conn",
            frame=FRAME,
            session_id=SESSION,
            tracks=[Track(trackName="t")],
        ),
        NOW,
        LIMITS,
    )
    assert entries(session) == [("session_published", 3, ANN)]
    assert session.log[0].session_id == SESSION
    assert session.state is not None
    track = decide(
        session.state,
        SetTrackState(
            cmd_id="t1",
            room_id=ROOM,
            participant_id=ANN,
            conn_id="conn",
            frame=FRAME,
            kind="video",
            enabled=False,
        ),
        NOW,
        LIMITS,
    )
    assert entries(track) == [("track_state_changed", 4, ANN)]
    assert (track.log[0].kind, track.log[0].enabled, track.log[0].by) == ("video", False, None)
    assert track.state is not None
    mute = decide(
        track.state,
        MuteTrack(cmd_id="m1", room_id=ROOM, participant_id=BEN, kind="audio"),
        NOW,
        LIMITS,
    )
    assert entries(mute) == [("track_state_changed", 5, BEN)]
    assert (mute.log[0].kind, mute.log[0].enabled, mute.log[0].by) == ("audio", False, "admin")
    assert mute.state is not None
    leave = decide(
        mute.state,
        Leave(cmd_id="l1", room_id=ROOM, participant_id=ANN, conn_id="conn"),
        NOW,
        LIMITS,
    )
    assert entries(leave) == [("participant_left", 6, ANN)]
    assert leave.log[0].reason == "closed"
    assert leave.state is not None
    close = decide(leave.state, CloseRoom(cmd_id="x1", room_id=ROOM), NOW, LIMITS)
    assert entries(close) == [("participant_left", 7, BEN), ("room_closed", 8, None)]
    assert [e.reason for e in close.log] == ["room_closed", "admin"]
    assert {e.at for e in close.log} == {NOW.iso}
    joined = decide(
        created(),
        Join(cmd_id="j1", room_id=ROOM, participant_id=ANN, name="Ann", edge_id="e1", conn_id="c"),
        NOW,
        LIMITS,
    )
    assert entries(joined) == [("participant_joined", 1, ANN)]
    assert joined.log[0].participant_name == "Ann"


def test_relayed_messages_and_reads_are_not_logged_nor_written() -> None:
    room = join(created(), ANN, "j1")
    said = decide(
        room,
        Broadcast(cmd_id="b1", room_id=ROOM, participant_id=ANN, conn_id="conn", frame=FRAME),
        NOW,
        LIMITS,
    )
    assert said.log == ()
    assert said.write  # the first broadcast reserves numbers: written
    assert said.state is not None
    again = decide(
        said.state,
        Broadcast(cmd_id="b2", room_id=ROOM, participant_id=ANN, conn_id="conn", frame=FRAME),
        NOW,
        LIMITS,
    )
    assert (again.write, again.log) == (False, ())  # within the reservation
    for read in (
        GetRoom(cmd_id="g", room_id=ROOM),
        CheckMember(cmd_id="c", room_id=ROOM, participant_id=ANN, issued_at=0),
        GetSnapshot(cmd_id="s", room_id=ROOM),
    ):
        decision = decide(room, read, NOW, LIMITS)
        assert decision.state is room
        assert (decision.write, decision.meta, decision.log, decision.sessions) == (
            False,
            False,
            (),
            (),
        )


def test_an_edge_catching_up_is_answered_from_the_actors_memory_when_it_can() -> None:
    room = join(created(), ANN, "j1")
    since = decide(room, GetSnapshot(cmd_id="s", room_id=ROOM, since=0), NOW, LIMITS)
    assert since.catch_up_since == 0
    assert isinstance(since.reply, Snapshot)  # when the actor no longer has the events
    plain = decide(room, GetSnapshot(cmd_id="s2", room_id=ROOM), NOW, LIMITS)
    assert plain.catch_up_since is None


def test_room_changes_project_the_metadata() -> None:
    room = created()
    update = decide(room, UpdateRoom(cmd_id="u1", room_id=ROOM, name="new"), NOW, LIMITS)
    assert (update.write, update.meta) == (True, True)
    assert update.state is not None
    replayed = decide(update.state, UpdateRoom(cmd_id="u1", room_id=ROOM, name="new"), NOW, LIMITS)
    assert (replayed.write, replayed.meta) == (False, False)
    bad = decide(room, UpdateRoom(cmd_id="u2", room_id=ROOM, max_participants=0), NOW, LIMITS)
    assert (bad.write, bad.meta) == (False, False)


def test_a_registered_calls_session_is_projected_and_a_leavers_forgotten() -> None:
    room = join(join(created(), ANN, "j1"), BEN, "j2")
    command = RegisterCallsSession(
        cmd_id="r1", room_id=ROOM, participant_id=ANN, session_id=SESSION
    )
    registered = decide(room, command, NOW, LIMITS)
    assert registered.sessions == (owner(SESSION, ANN),)
    assert registered.write
    assert registered.state is not None
    # Retried, or registered again by its owner: written again, unchanged.
    assert decide(registered.state, command, NOW, LIMITS).sessions == (owner(SESSION, ANN),)
    again = msgspec.structs.replace(command, cmd_id="r2")
    assert decide(registered.state, again, NOW, LIMITS).sessions == (owner(SESSION, ANN),)
    # Someone else's session: refused, nothing projected.
    stolen = RegisterCallsSession(cmd_id="r3", room_id=ROOM, participant_id=BEN, session_id=SESSION)
    refused = decide(registered.state, stolen, NOW, LIMITS)
    assert isinstance(refused.reply, Rejected)
    assert refused.sessions == ()
    left = decide(
        registered.state,
        Leave(cmd_id="l1", room_id=ROOM, participant_id=ANN, conn_id="conn"),
        NOW,
        LIMITS,
    )
    assert [c.session_ids for c in left.cleanup] == [[SESSION]]
    assert left.sessions == ()
    assert left.state is not None
    # A retry after the leave projects nothing: the session is no longer the room's.
    assert decide(left.state, command, NOW, LIMITS).sessions == ()


def test_a_keep_alive_writes_the_room_and_its_projections_again() -> None:
    room = join(join(created(), ANN, "j1"), BEN, "j2")
    room = with_session(with_session(room), BEN, "t" * 32)
    kept = decide(room, KeepAlive(), NOW, LIMITS)
    assert kept.state is room  # unchanged, but written
    assert (kept.write, kept.meta) == (True, True)
    assert set(kept.sessions) == {owner(SESSION, ANN), owner("t" * 32, BEN)}
    assert (kept.events, kept.log) == ((), ())
    gone = decide(None, KeepAlive(), NOW, LIMITS)
    assert (gone.write, gone.meta, gone.sessions) == (False, False, ())


def test_republish_asks_the_actor_for_its_recent_events_even_once_closed() -> None:
    room = join(created(), ANN, "j1")
    again = decide(room, Republish(), NOW, LIMITS)
    assert again.republish
    assert again.state is room
    assert (again.write, again.events, again.log) == (False, (), ())
    assert decide(None, Republish(), NOW, LIMITS).republish
    assert not decide(room, KeepAlive(), NOW, LIMITS).republish


def test_a_closed_room_is_handed_over_for_deletion() -> None:
    room = join(created(), ANN, "j1")
    close = decide(room, CloseRoom(cmd_id="x", room_id=ROOM), NOW, LIMITS)
    assert close.state is None  # the next message of the batch finds no room
    assert close.closed is not None
    assert close.deleted
    assert (close.closed.seq, close.closed.close_reason) == (3, "admin")
    assert close.write is False  # the close is its own write
    assert close.reply == Ack(seq=3)
    timed = created(3, TIMED)
    due = decide(timed, ExpireDisconnected(), dataclasses.replace(NOW, epoch=NOW.epoch + 30), TIMED)
    assert due.closed is not None
    assert due.closed.close_reason == "empty_timeout"
    assert entries(due) == [("room_closed", 1, None)]


def test_an_operators_mute_and_removal_are_typed_not_rendered() -> None:
    room = join(join(created(), ANN, "j1"), BEN, "j2")
    mute = decide(
        room,
        MuteTrack(cmd_id="m", room_id=ROOM, participant_id=BEN, kind="video", enabled=True),
        NOW,
        LIMITS,
    )
    assert mute.events == (
        TrackMuted(
            room_id=ROOM,
            seq=3,
            participant_id=BEN,
            kind="video",
            enabled=True,
            by="admin",
            cmd_id="m",
        ),
    )
    kick = decide(
        room, RemoveParticipant(cmd_id="k", room_id=ROOM, participant_id=BEN), NOW, LIMITS
    )
    ((edge, close),) = kick.control
    assert edge == "e1"
    assert close.notice == KICKED
    assert entries(kick) == [("participant_left", 3, BEN)]
    assert kick.log[0].reason == "kicked"
