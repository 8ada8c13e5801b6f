"""Who is in a room, and their Calls sessions: joining, leaving, dropping and
resuming; the Calls proxy's questions (may this participant use it, may it
create another session). Pure decisions for `room_actors.state.decide`."""

from collections.abc import Iterable

from msgspec.structs import replace

from bus_schema.access import FULL
from bus_schema.closecodes import CloseCode
from bus_schema.commands import (
    Ack,
    CheckMember,
    Disconnect,
    Join,
    Leave,
    RegisterCallsSession,
    Rejected,
    Reply,
)
from bus_schema.control import CloseCallsTracks, CloseConnection
from bus_schema.errors import ErrorCode
from bus_schema.events import (
    ParticipantJoined,
    ParticipantLeft,
)
from bus_schema.ids import is_token_id
from bus_schema.log import PARTICIPANT_JOINED, PARTICIPANT_LEFT, LogEntry
from bus_schema.state import Participant, RoomState
from room_actors.decision import (
    BANNED,
    KICKED,
    NOT_IN_ROOM,
    SECRET_ROTATED,
    SUPERSEDED,
    TOKEN_REVOKED,
    Decision,
    Limits,
    sessions_of,
    snapshot,
)
from room_actors.log import hidden_entry
from runtime.clock import Clock


def join(state: RoomState, command: Join, clock: Clock, limits: Limits) -> Decision:
    refused = entry_refusal(state, command.participant_id, command.identity, command.issued_at)
    if refused is not None:
        return Decision(state, refused)
    present = state.participants.get(command.participant_id)
    older = [p for p in state.participants.values() if _same_identity(p, command.identity)]
    if any(_newer(p, command) for p in (present, *older) if p is not None):
        return Decision(state, SUPERSEDED)
    if present is not None:
        # The same token connected again: the newer connection takes over, the
        # others see no leave/join, and the older socket is closed.
        moved = replace(
            present,
            edge_id=command.edge_id,
            conn_id=command.conn_id,
            connected_at=command.connected_at,
            disconnected_until=None,
        )
        participants = {**state.participants, command.participant_id: moved}
        resumed = replace(state, participants=participants)
        control: tuple[tuple[str, CloseConnection], ...] = ()
        if present.conn_id != command.conn_id and present.disconnected_until is None:
            control = closes([present], CloseCode.REPLACED, "Replaced by a newer connection")
        return Decision(resumed, snapshot(resumed, resumed=True), control=control)
    # One participant per identity: a newer token of it takes the place.
    before = remove(state, older, "replaced", clock, limits)
    after = before.state
    assert after is not None
    if len(after.participants) >= after.meta.max_participants:
        return Decision(state, Rejected(code=ErrorCode.ROOM_FULL, message="Room is full"))
    joined = Participant(
        id=command.participant_id,
        name=command.name,
        joined_at=clock.iso,
        edge_id=command.edge_id,
        conn_id=command.conn_id,
        connected_at=command.connected_at,
        identity=command.identity,
        grants=None if command.grants == FULL else command.grants,
        issued_at=command.issued_at,
    )
    seq = after.seq
    events = before.events
    logged: tuple[LogEntry, ...] = ()
    if joined.hidden:
        logged = (hidden_entry(after, joined, PARTICIPANT_JOINED, clock.iso),)
    else:
        seq += 1
        event = ParticipantJoined(
            room_id=state.room_id,
            seq=seq,
            participant_id=joined.id,
            name=joined.name,
            identity=joined.identity or "",
        )
        events = (*events, event)
    new_state = replace(
        after,
        seq=seq,
        participants={**after.participants, joined.id: joined},
        close_at=None,
        close_reason="",
        departed=_without(after.departed, joined.id),
        preconnect=_without(after.preconnect, joined.id),
    )
    return Decision(
        new_state,
        snapshot(new_state),
        events,
        control=closes(older, CloseCode.REPLACED, "Your identity joined again elsewhere"),
        cleanup=before.cleanup,
        log=before.log + logged,
    )


def _newer(participant: Participant, command: Join) -> bool:
    """The participant's connection was opened after the one ``command`` is
    for (a connection attempt of the same socket is never refused)."""
    return (
        participant.conn_id != command.conn_id
        and command.connected_at > 0
        and participant.connected_at > command.connected_at
    )


def _same_identity(participant: Participant, identity: str | None) -> bool:
    return identity is not None and participant.identity == identity


def entry_refusal(
    state: RoomState, participant_id: str, identity: str | None, issued_at: int
) -> Rejected | None:
    """Why a token may not enter (or use the Calls proxy), whatever else holds:
    its participant was removed, its identity is banned, the room's tokens were
    revoked after it was issued, or (a token without an identity, not in the
    room) it came from a join secret that was rotated since."""
    if participant_id in state.kicked:
        return KICKED
    if identity is not None and identity in state.banned:
        return BANNED
    if state.tokens_revoked_at and issued_at <= state.tokens_revoked_at:
        return TOKEN_REVOKED
    if (
        state.secret_rotated_at
        and issued_at <= state.secret_rotated_at
        and identity is None
        and participant_id not in state.participants
    ):
        return SECRET_ROTATED
    return None


def closes(
    participants: Iterable[Participant], code: int, reason: str, notice: str = "", by: str = ""
) -> tuple[tuple[str, CloseConnection], ...]:
    """Close the current sockets of these participants (none for one whose
    connection is gone already)."""
    return tuple(
        (
            p.edge_id,
            CloseConnection(conn_id=p.conn_id, code=code, reason=reason, notice=notice, by=by),
        )
        for p in participants
        if p.disconnected_until is None
    )


def _without(entries: dict[str, float], key: str) -> dict[str, float]:
    """``entries`` without ``key`` (the same object when it is not there)."""
    if key not in entries:
        return entries
    return {k: v for k, v in entries.items() if k != key}


def leave(state: RoomState, command: Leave, clock: Clock, limits: Limits) -> Decision:
    present = state.participants.get(command.participant_id)
    if present is None or present.conn_id != command.conn_id:
        return Decision(state, Ack(seq=state.seq))
    return remove(state, [present], command.reason, clock, limits)


def disconnect(state: RoomState, command: Disconnect, until: float) -> Decision:
    present = state.participants.get(command.participant_id)
    if present is None or present.conn_id != command.conn_id or present.disconnected_until:
        return Decision(state, Ack(seq=state.seq))
    away = replace(present, disconnected_until=until)
    new_state = replace(state, participants={**state.participants, present.id: away})
    return Decision(new_state, Ack(seq=state.seq))


def remove(
    state: RoomState,
    gone: list[Participant],
    reason: str,
    clock: Clock,
    limits: Limits,
    by: str = "",
) -> Decision:
    """Participants leave the room, one numbered ``leave`` event each (a hidden
    one only in the event log). The last one out starts the departure timeout."""
    if not gone:
        return Decision(state, Ack(seq=state.seq))
    ids = {p.id for p in gone}
    events = tuple(
        ParticipantLeft(
            room_id=state.room_id, seq=state.seq + i, participant_id=p.id, reason=reason, by=by
        )
        for i, p in enumerate((p for p in gone if not p.hidden), start=1)
    )
    seq = state.seq + len(events)
    at = clock.iso
    logged = tuple(
        hidden_entry(state, p, PARTICIPANT_LEFT, at, reason=reason, by=by) for p in gone if p.hidden
    )
    participants = {k: v for k, v in state.participants.items() if k not in ids}
    # Leavers keep no Calls sessions, and the proxy refuses them from now on
    # (remembered while their token could pass for a fresh one).
    horizon = clock.epoch - limits.preconnect_window
    recent = [(pid, at) for pid, at in state.departed.items() if at > horizon and pid not in ids]
    recent.extend((pid, clock.epoch) for pid in sorted(ids))
    new_state = replace(
        state,
        seq=seq,
        participants=participants,
        calls_sessions={s: p for s, p in state.calls_sessions.items() if p not in ids},
        departed=dict(recent[-limits.departed_kept :]),
    )
    if not participants and state.meta.departure_timeout > 0:
        new_state = replace(
            new_state,
            close_at=clock.epoch + state.meta.departure_timeout,
            close_reason="departure_timeout",
        )
    return Decision(new_state, Ack(seq=seq), events, cleanup=cleanup_of(state, ids), log=logged)


def cleanup_of(state: RoomState, ids: set[str]) -> tuple[CloseCallsTracks, ...]:
    """Close the tracks pushed on the Calls sessions of these participants."""
    return tuple(
        CloseCallsTracks(room_id=state.room_id, participant_id=pid, session_ids=owned)
        for pid in sorted(ids)
        if (owned := sorted(sid for sid, owner in state.calls_sessions.items() if owner == pid))
    )


# --- the Calls proxy's questions ------------------------------------------------------


def _calls_refusal(
    state: RoomState,
    participant_id: str,
    identity: str | None,
    issued_at: int,
    clock: Clock,
    limits: Limits,
) -> Rejected | None:
    """Why this participant may not use the Calls proxy now, if it may not."""
    refused = entry_refusal(state, participant_id, identity, issued_at)
    if refused is not None:
        return refused
    if participant_id in state.participants:
        return None
    left = state.departed.get(participant_id)
    if left is not None and left > clock.epoch - limits.preconnect_window:
        return NOT_IN_ROOM
    if issued_at >= clock.epoch - limits.preconnect_window:
        return None  # a fresh token whose WebSocket has not connected yet
    return NOT_IN_ROOM


def check_member(state: RoomState, command: CheckMember, clock: Clock, limits: Limits) -> Reply:
    pid = command.participant_id
    refused = _calls_refusal(state, pid, command.identity, command.issued_at, clock, limits)
    if refused is None and command.new_session:
        refused = _session_cap(state, pid, limits)
    return refused or Ack(seq=state.seq)


def _session_cap(state: RoomState, participant_id: str, limits: Limits) -> Rejected | None:
    owned = sum(1 for owner in state.calls_sessions.values() if owner == participant_id)
    if owned >= limits.calls_sessions_per_participant:
        return Rejected(
            code=ErrorCode.CALLS_SESSION_LIMIT,
            message=f"At most {limits.calls_sessions_per_participant} Calls sessions "
            "per participant",
        )
    if len(state.calls_sessions) >= limits.calls_sessions_per_room:
        return Rejected(
            code=ErrorCode.CALLS_SESSION_LIMIT,
            message="This room holds as many Calls sessions as it may",
        )
    return None


def register_session(
    state: RoomState, command: RegisterCallsSession, clock: Clock, limits: Limits
) -> Decision:
    pid = command.participant_id
    if not is_token_id(command.session_id):
        return Decision(state, Rejected(code=ErrorCode.BAD_COMMAND, message="Bad session id"))
    owner = state.calls_sessions.get(command.session_id)
    if owner == pid:
        return Decision(
            state, Ack(seq=state.seq), sessions=sessions_of(state, [command.session_id])
        )
    if owner is not None:
        return Decision(state, NOT_IN_ROOM)
    refused = _calls_refusal(
        state, pid, command.identity, command.issued_at, clock, limits
    ) or _session_cap(state, pid, limits)
    if refused is not None:
        return Decision(state, refused)
    new_state = replace(state, calls_sessions={**state.calls_sessions, command.session_id: pid})
    if pid not in state.participants and pid not in state.preconnect:
        # Not connected yet: if it never does, its sessions go when its token
        # stops passing for a fresh one.
        until = command.issued_at + limits.preconnect_window
        new_state = replace(new_state, preconnect={**state.preconnect, pid: until})
    sessions = sessions_of(new_state, [command.session_id])
    return Decision(new_state, Ack(seq=state.seq), sessions=sessions)


def expire_preconnect(decision: Decision, clock: Clock, *, everyone_due: bool = False) -> Decision:
    """Drop the Calls sessions of token holders that never connected in time
    (with ``everyone_due``, of all that have not connected: their tokens were revoked)."""
    state = decision.state
    if state is None:
        return decision
    due = {pid for pid, until in state.preconnect.items() if everyone_due or until <= clock.epoch}
    if not due:
        return decision
    expired = replace(
        state,
        calls_sessions={s: p for s, p in state.calls_sessions.items() if p not in due},
        preconnect={p: u for p, u in state.preconnect.items() if p not in due},
    )
    return replace(decision, state=expired, cleanup=decision.cleanup + cleanup_of(state, due))
