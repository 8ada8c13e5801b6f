"""room_actors.state: who may use the Calls proxy, and the bounds on what a room keeps."""

import dataclasses

import msgspec
import pytest

from bus_schema import codec
from bus_schema.commands import (
    Ack,
    CheckMember,
    Disconnect,
    Join,
    Leave,
    PublishSession,
    RegisterCallsSession,
    Rejected,
    RemoveParticipant,
    SetTrackState,
)
from bus_schema.events import Broadcasted, TrackStateChanged
from bus_schema.limits import MAX_TRACK_NAME, MAX_TRACKS, MAX_TRACKS_BYTES, track_problem
from bus_schema.state import RoomState, Track
from room_actors.state import Decision, ExpireDisconnected, Limits, decide, next_deadline
from runtime.clock import Clock
from tests.unit.test_state import ANN, BEN, DEFAULTS, FRAME, LIMITS, NOW, ROOM, created, join

WINDOW = LIMITS.preconnect_window
FRESH = int(NOW.epoch) - 10
"""A token issued ten seconds ago."""
STALE = int(NOW.epoch - WINDOW) - 1
"""A token issued before the pre-connect window."""
CAROL = "cccccccc-cccc-4ccc-8ccc-cccccccccccc"


def at(seconds: float) -> Clock:
    return Clock(iso=NOW.iso, epoch=NOW.epoch + seconds)


def check(state: RoomState, who: str, issued_at: int, clock: Clock = NOW, **extra: bool) -> str:
    """``ack`` or the refusal's code."""
    command = CheckMember(
        cmd_id="chk", room_id=ROOM, participant_id=who, issued_at=issued_at, **extra
    )
    outcome = decide(state, command, clock, LIMITS)
    assert outcome.state is state  # read-only
    return outcome.reply.code if isinstance(outcome.reply, Rejected) else "ack"


def register(
    state: RoomState, who: str, session: str, issued_at: int = FRESH, limits: Limits = LIMITS
) -> tuple[RoomState, str]:
    command = RegisterCallsSession(
        cmd_id=f"r-{who}-{session}",
        room_id=ROOM,
        participant_id=who,
        session_id=session,
        issued_at=issued_at,
    )
    outcome = decide(state, command, NOW, limits)
    assert outcome.state is not None
    code = outcome.reply.code if isinstance(outcome.reply, Rejected) else "ack"
    return outcome.state, code


def leave(state: RoomState, who: str, clock: Clock = NOW) -> RoomState:
    outcome = decide(
        state,
        Leave(cmd_id=f"l-{who}", room_id=ROOM, participant_id=who, conn_id="conn"),
        clock,
        LIMITS,
    )
    assert outcome.state is not None
    return outcome.state


def test_members_and_fresh_tokens_may_use_the_proxy_leavers_and_stale_tokens_may_not() -> None:
    room = join(created(), ANN, "j1")
    assert check(room, ANN, STALE) == "ack"  # in the room: its token's age does not matter
    assert check(room, BEN, FRESH) == "ack"  # not connected yet, fresh token
    assert check(room, BEN, STALE) == "not_in_room"  # never came, token too old
    gone = leave(room, ANN)
    assert check(gone, ANN, FRESH) == "not_in_room"  # a clean leave ends it, fresh or not
    assert check(gone, ANN, int(NOW.epoch)) == "not_in_room"


def test_a_participant_within_its_resume_grace_may_use_the_proxy() -> None:
    room = join(created(), ANN, "j1")
    away = decide(
        room, Disconnect(cmd_id="d", room_id=ROOM, participant_id=ANN, conn_id="conn"), NOW, LIMITS
    ).state
    assert away is not None
    assert check(away, ANN, STALE, at(5)) == "ack"
    expired = decide(away, ExpireDisconnected(), at(LIMITS.resume_grace), LIMITS).state
    assert expired is not None
    assert check(expired, ANN, FRESH, at(LIMITS.resume_grace)) == "not_in_room"


def test_removed_participants_are_refused_for_good() -> None:
    room = join(created(), ANN, "j1")
    kicked = decide(
        room, RemoveParticipant(cmd_id="k", room_id=ROOM, participant_id=ANN), NOW, LIMITS
    ).state
    assert kicked is not None
    assert check(kicked, ANN, int(NOW.epoch)) == "kicked"
    assert check(kicked, ANN, int(NOW.epoch) + 10_000, at(10_000)) == "kicked"


def test_calls_sessions_are_capped_per_participant_and_per_room() -> None:
    limits = dataclasses.replace(
        DEFAULTS, calls_sessions_per_participant=2, calls_sessions_per_room=3
    )
    room = join(join(created(), ANN, "j1"), BEN, "j2")
    room, ok1 = register(room, ANN, "s1", limits=limits)
    room, ok2 = register(room, ANN, "s2", limits=limits)
    room, third = register(room, ANN, "s3", limits=limits)
    assert (ok1, ok2, third) == ("ack", "ack", "calls_session_limit")
    assert sorted(room.calls_sessions) == ["s1", "s2"]
    room, ben1 = register(room, BEN, "s4", limits=limits)
    room, ben2 = register(room, BEN, "s5", limits=limits)  # the room is full of sessions
    assert (ben1, ben2) == ("ack", "calls_session_limit")
    asked = CheckMember(
        cmd_id="c", room_id=ROOM, participant_id=BEN, issued_at=FRESH, new_session=True
    )
    reply = decide(room, asked, NOW, limits).reply
    assert isinstance(reply, Rejected)
    assert reply.code == "calls_session_limit"
    assert check(room, BEN, FRESH) == "ack"  # other calls are still fine
    # A session is owned once: another participant cannot claim it.
    same, code = register(room, BEN, "s1", limits=limits)
    assert code == "not_in_room"
    assert same.calls_sessions["s1"] == ANN


def test_a_leavers_sessions_are_dropped_and_their_tracks_closed() -> None:
    room = join(join(created(), ANN, "j1"), BEN, "j2")
    room, _ = register(room, ANN, "s1")
    room, _ = register(room, BEN, "s2")
    outcome = decide(
        room, Leave(cmd_id="l", room_id=ROOM, participant_id=ANN, conn_id="conn"), NOW, LIMITS
    )
    assert outcome.state is not None
    assert outcome.state.calls_sessions == {"s2": BEN}
    assert [(c.participant_id, c.session_ids) for c in outcome.cleanup] == [(ANN, ["s1"])]
    assert ANN in outcome.state.departed
    back = join(outcome.state, ANN, "j3")  # the same token connecting again is a member again
    assert ANN not in back.departed
    assert check(back, ANN, FRESH) == "ack"


def test_sessions_of_a_token_that_never_connects_go_when_it_is_no_longer_fresh() -> None:
    room = join(created(), ANN, "j1")
    room, code = register(room, BEN, "early", issued_at=FRESH)
    assert code == "ack"
    until = FRESH + WINDOW
    assert room.preconnect == {BEN: until}
    assert next_deadline(room) == until
    joined = join(room, BEN, "j2")
    assert joined.preconnect == {}  # it came: its sessions stay
    stale, refused = register(room, CAROL, "late", issued_at=STALE)
    assert refused == "not_in_room"
    assert stale.calls_sessions == {"early": BEN}
    due = decide(room, ExpireDisconnected(), Clock(iso="", epoch=until), LIMITS)
    assert due.state is not None
    assert due.state.calls_sessions == {}
    assert due.state.preconnect == {}
    assert [(c.participant_id, c.session_ids) for c in due.cleanup] == [(BEN, ["early"])]


def test_leavers_are_remembered_only_while_their_tokens_could_pass_for_fresh() -> None:
    limits = dataclasses.replace(LIMITS, departed_kept=3)
    room = created()
    for index in range(5):
        who = f"{index:08d}-0000-4000-8000-000000000000"
        room = join(room, who, f"j{index}")
        room = (
            decide(
                room,
                Leave(cmd_id=f"l{index}", room_id=ROOM, participant_id=who, conn_id="conn"),
                NOW,
                limits,
            ).state
            or room
        )
    assert len(room.departed) == 3  # the newest three
    later = join(room, ANN, "ja")
    gone = leave(later, ANN, at(WINDOW + 1))
    assert list(gone.departed) == [ANN]  # the old ones aged out


def test_a_track_state_that_changes_nothing_is_only_relayed() -> None:
    room = join(created(), ANN, "j1")

    def mute(state: RoomState, cmd_id: str) -> Decision:
        command = SetTrackState(
            cmd_id=cmd_id,
            room_id=ROOM,
            participant_id=ANN,
            conn_id="conn",
            frame=FRAME,
            kind="audio",
            enabled=False,
        )
        outcome = decide(state, command, NOW, LIMITS)
        assert outcome.state is not None
        assert len(outcome.events) == 1
        return outcome

    first = mute(room, "t1")
    assert isinstance(first.events[0], TrackStateChanged)
    assert first.state is not None
    second = mute(first.state, "t2")  # the same again: no change
    assert isinstance(second.events[0], Broadcasted)
    assert second.state is not None
    again = mute(second.state, "t3")
    assert not again.durable  # numbered within the reservation: not even written
    assert isinstance(again.events[0], Broadcasted)
    assert again.state is not None
    assert again.state.participants[ANN] == first.state.participants[ANN]


def publish(state: RoomState, tracks: list[Track], limits: Limits = LIMITS) -> object:
    command = PublishSession(
        cmd_id="p",
        room_id=ROOM,
        participant_id=ANN,
        conn_id="conn",
        frame=FRAME,
        session_id="sess",
        tracks=tracks,
    )
    return decide(state, command, NOW, limits)


@pytest.mark.parametrize(
    "tracks",
    [
        [Track(trackName=f"t{i}") for i in range(MAX_TRACKS + 1)],
        [Track(trackName="x" * (MAX_TRACK_NAME + 1))],
        [Track(trackName="a\nb")],
        [Track(trackName="t", kind="screen")],
        [Track(trackName="t", location="elsewhere")],
        [Track(trackName="t", sessionId="no.dots")],
        [Track(trackName="€" * MAX_TRACK_NAME, mid="m") for _ in range(MAX_TRACKS)],
    ],
)
def test_announced_tracks_out_of_bounds_change_nothing(tracks: list[Track]) -> None:
    room = join(created(), ANN, "j1")
    outcome = publish(room, tracks)
    assert outcome.state is room  # type: ignore[attr-defined]
    assert isinstance(outcome.reply, Rejected)  # type: ignore[attr-defined]
    assert outcome.reply.code == "bad_command"  # type: ignore[attr-defined]


def test_a_command_that_would_pass_the_state_bound_is_refused() -> None:
    limits = dataclasses.replace(LIMITS, state_max_bytes=len(codec.encode(created())) + 300)
    room = created()
    joined = decide(
        room,
        Join(cmd_id="j1", room_id=ROOM, participant_id=ANN, name="Ann", edge_id="e", conn_id="c"),
        NOW,
        limits,
    )
    assert joined.reply != Ack(seq=1)  # a snapshot: it fits
    assert joined.state is not None
    assert ANN in joined.state.participants
    full = decide(
        joined.state,
        Join(
            cmd_id="j2", room_id=ROOM, participant_id=BEN, name="B" * 90, edge_id="e", conn_id="c"
        ),
        NOW,
        limits,
    )
    assert full.state is joined.state
    assert isinstance(full.reply, Rejected)
    assert full.reply.code == "room_state_full"
    assert msgspec.json.decode(codec.encode(joined.state))  # still a valid state


def fullest_tracks(session_id: str = "f" * 64) -> list[Track]:
    """As many bytes of tracks as a participant may announce."""
    tracks: list[Track] = []
    while len(tracks) < MAX_TRACKS:
        for length in range(MAX_TRACK_NAME, 0, -1):
            track = Track(
                trackName="€" * length,
                kind="video",
                mid="9" * 16,
                location="local",
                sessionId=session_id,
            )
            if track_problem([*tracks, track]) is None:
                tracks.append(track)
                break
        else:
            break
    assert sum(len(codec.encode(t)) for t in tracks) > 0.9 * MAX_TRACKS_BYTES
    return tracks


def test_a_room_with_every_list_at_its_cap_stays_well_under_max_payload() -> None:
    """The worst a room's members can make it keep, with the default limits:
    200 participants with the longest names and identities (4-byte characters)
    and every grant spelled out, each announcing the most tracks allowed, as
    many Calls sessions as the room holds, every remembered leaver, removed
    participant and banned identity, the recent command ids, and the outbox of
    the largest turn. Stored (KV), answered (a snapshot over NATS) and
    sent to a newcomer (welcome + session replays), it stays well under NATS
    ``max_payload`` (1 MiB)."""
    from bus_schema.access import MAX_IDENTITY, Grants
    from bus_schema.commands import Snapshot
    from bus_schema.events import Broadcasted as Relayed
    from bus_schema.state import Participant
    from edge import protocol
    from room_actors.actor import TURN_FRAME_BYTES
    from room_actors.state import snapshot

    limits = DEFAULTS
    max_payload = 1024 * 1024
    participants = {}
    for index in range(200):
        pid = f"{index:08d}-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
        tracks = fullest_tracks()
        participants[pid] = Participant(
            id=pid,
            name="\U0001d538" * 100,  # 4 bytes each in UTF-8
            joined_at=NOW.iso,
            edge_id="edge-" + "e" * 43 + "-12345678",
            conn_id="c" * 20,
            session_id="s" * 64,
            tracks=tracks,
            audio=True,
            video=False,
            disconnected_until=NOW.epoch,
            identity="\U0001d538" * (MAX_IDENTITY // 4),
            grants=Grants(can_publish=False, can_subscribe=False, can_send=False, room_admin=True),
            issued_at=int(NOW.epoch),
        )
    pids = list(participants)
    frame = msgspec.Raw(b'{"type":"x","pad":"' + b"p" * (16 * 1024 - 30) + b'"}')
    outbox = [
        Relayed(room_id=ROOM, seq=i, participant_id=pids[0], frame=frame, cmd_id="c" * 20)
        for i in range(TURN_FRAME_BYTES // len(frame) + 1)
    ]
    state = msgspec.structs.replace(
        created(),
        participants=participants,
        calls_sessions={f"{i:064d}": pids[i % 200] for i in range(limits.calls_sessions_per_room)},
        kicked=[f"{i:08d}-bbbb-4bbb-8bbb-bbbbbbbbbbbb" for i in range(limits.kicked_kept)],
        banned=[f"{i:08d}" + "\U0001d538" * 30 for i in range(limits.banned_kept)],
        tokens_revoked_at=int(NOW.epoch),
        join_secret_hash="f" * 64,
        departed={
            f"{i:08d}-cccc-4ccc-8ccc-cccccccccccc": NOW.epoch for i in range(limits.departed_kept)
        },
        preconnect={f"{i:08d}-dddd-4ddd-8ddd-dddddddddddd": NOW.epoch for i in range(200)},
        recent_commands=["c" * 24] * limits.recent_commands,
        outbox=outbox,
    )
    stored = len(codec.encode(state))
    answered = len(codec.encode(snapshot(state)))
    newcomer = Snapshot(
        room_id=ROOM, seq=1, max_participants=200, participants=list(participants.values())
    )
    first_output = len(protocol.welcome(pids[0], newcomer).encode()) + sum(
        len(text.encode()) for text in protocol.session_replays("someone-else", newcomer)
    )
    print(f"stored {stored} B, snapshot {answered} B, newcomer's first output {first_output} B")
    assert stored < 0.75 * max_payload
    assert answered < 0.6 * max_payload
    assert stored - len(codec.encode(outbox)) <= limits.state_max_bytes
    assert first_output < max_payload  # sent as many frames; bounded, but not tiny
