"""Pure decisions: (room state, message) -> a `Decision` saying all a turn must do.

Nothing here does I/O. `decide` never mutates its input; an unchanged state is
returned as the same object. The actor folds the decisions of a batch and
carries them out (save, project, publish, log, answer) without looking at the
messages again: every choice that depends on a command's type is made here.
What a decision is and the limits it applies live in `room_actors.decision`;
who is in the room and their Calls sessions, in `room_actors.membership`.
"""

from collections.abc import Container, Iterable

from msgspec.structs import replace

from bus_schema import codec
from bus_schema import log as event_log
from bus_schema.closecodes import CloseCode
from bus_schema.commands import (
    Ack,
    BanIdentity,
    Broadcast,
    CheckMember,
    CloseRoom,
    Command,
    CreateRoom,
    Disconnect,
    GetRoom,
    GetSnapshot,
    Join,
    Leave,
    MuteTrack,
    PublishSession,
    RegisterCallsSession,
    Rejected,
    RemoveParticipant,
    RevokeTokens,
    SetJoinSecret,
    SetTrackState,
    UpdateRoom,
)
from bus_schema.control import KICKED as KICKED_NOTICE
from bus_schema.errors import ErrorCode
from bus_schema.events import (
    Broadcasted,
    Event,
    RoomClosed,
    SessionPublished,
    TrackMuted,
    TrackStateChanged,
    is_track_kind,
)
from bus_schema.limits import track_problem
from bus_schema.log import LogEntry
from bus_schema.state import RoomMeta, RoomState
from room_actors.decision import (
    BAD_KIND,
    DEPARTED_KEPT,
    GRANT_DENIED_PUBLISH,
    GRANT_DENIED_SEND,
    KICKED_KEPT,
    NO_JOIN_SECRET,
    NO_SUCH_PARTICIPANT,
    NOT_IN_ROOM,
    NOT_ROOM_ADMIN,
    ROOM_NOT_FOUND,
    SEQ_BLOCK,
    STATE_FULL,
    Activate,
    Decision,
    EdgesLost,
    ExpireDisconnected,
    Flush,
    Internal,
    KeepAlive,
    Limits,
    Republish,
    room_info,
    sessions_of,
    snapshot,
)
from room_actors.log import entries, room_created
from room_actors.membership import (
    check_member,
    closes,
    disconnect,
    expire_preconnect,
    join,
    leave,
    register_session,
    remove,
)
from runtime.clock import Clock

__all__ = [
    "DEPARTED_KEPT",
    "KICKED_KEPT",
    "SEQ_BLOCK",
    "Activate",
    "Decision",
    "EdgesLost",
    "ExpireDisconnected",
    "Flush",
    "Internal",
    "KeepAlive",
    "Limits",
    "Republish",
    "decide",
    "next_deadline",
    "resumed",
    "room_info",
    "snapshot",
    "with_track_changes",
]


def resumed(state: RoomState) -> RoomState:
    """The state as a new owner takes it over: numbering continues after the
    reservation, since the previous owner may have used any number up to it."""
    if state.seq < state.seq_reserved:
        return replace(state, seq=state.seq_reserved)
    return state


def next_deadline(state: RoomState | None) -> float | None:
    """When the next resume grace period ends or the room is due to close (Unix
    seconds), if ever."""
    if state is None:
        return None
    deadlines = [p.disconnected_until for p in state.participants.values() if p.disconnected_until]
    deadlines.extend(state.preconnect.values())
    if state.close_at is not None:
        deadlines.append(state.close_at)
    return min(deadlines, default=None)


def decide(
    state: RoomState | None,
    message: Command | Internal,
    clock: Clock,
    limits: Limits,
    applied: Container[str] = (),
) -> Decision:
    """Apply one message to a room's state: what the turn must do about it.
    ``applied``: ids of commands applied lately beyond the state's own
    ``recent_commands`` (the actor's memory of the last seconds): a retry of
    one is a replay, not a second application."""
    decision = _decide(state, message, clock, limits, applied)
    changed = decision.state is not state and decision.state is not None
    write = decision.write or (changed and decision.durable)
    logged = entries(decision.events, clock.iso) if decision.events else ()
    if write == decision.write and not logged:
        return decision  # the hot path (a broadcast): nothing to add
    return replace(decision, write=write, log=decision.log + logged)


def _decide(
    state: RoomState | None,
    message: Command | Internal,
    clock: Clock,
    limits: Limits,
    applied: Container[str],
) -> Decision:
    match message:
        case CreateRoom():
            return _create(state, message, clock, limits)
        case Republish():
            # Also for a room just closed: its last events may be the ones lost.
            return Decision(state, Ack(seq=state.seq if state else 0), republish=True)
        case Activate():
            return Decision(state, Ack(seq=state.seq if state else 0))
    if state is None:
        return Decision(state, ROOM_NOT_FOUND)
    match message:
        case GetSnapshot():
            return Decision(state, snapshot(state), catch_up_since=message.since)
        case GetRoom():
            return Decision(state, room_info(state))
        case CheckMember():
            return Decision(state, check_member(state, message, clock, limits))
        case KeepAlive():
            return Decision(
                state, Ack(seq=state.seq), write=True, meta=True, sessions=sessions_of(state)
            )
        case Flush():
            return Decision(state, Ack(seq=state.seq), write=True)
        case ExpireDisconnected():
            return _expire(state, clock, limits)
        case EdgesLost():
            gone = [
                p
                for p in state.participants.values()
                if p.edge_id in message.edge_ids and p.disconnected_until is None
            ]
            return remove(state, gone, "edge_lost", clock, limits)
    if message.cmd_id in applied or message.cmd_id in state.recent_commands:
        return _replay(state, message)
    match message:
        case Join():
            decision = join(state, message, clock, limits)
        case Leave():
            decision = leave(state, message, clock, limits)
        case Disconnect():
            decision = disconnect(state, message, clock.epoch + limits.resume_grace)
        case RegisterCallsSession():
            decision = register_session(state, message, clock, limits)
        case PublishSession() | SetTrackState() | Broadcast():
            decision = _relay(state, message)
        case UpdateRoom():
            decision = _update(state, message)
        case CloseRoom():
            decision = _close(state, message.reason, clock, limits)
        case RemoveParticipant():
            decision = _kick(state, message, clock, limits)
        case MuteTrack():
            decision = _mute(state, message)
        case BanIdentity():
            decision = _ban(state, message, clock, limits)
        case RevokeTokens():
            decision = _revoke(state, clock, limits)
        case SetJoinSecret():
            decision = _set_secret(state, message, clock)
    if decision.state is state or decision.state is None:
        return decision
    if isinstance(message, _GROWS) and len(codec.encode(decision.state)) > limits.state_max_bytes:
        return Decision(state, STATE_FULL)
    return replace(decision, state=_remember(decision.state, message.cmd_id, limits))


def _expire(state: RoomState, clock: Clock, limits: Limits) -> Decision:
    """A deadline passed: participants whose grace ended leave, Calls sessions
    of tokens that never connected go, and a room due to close closes."""
    gone = [
        p
        for p in state.participants.values()
        if p.disconnected_until is not None and p.disconnected_until <= clock.epoch
    ]
    decision = expire_preconnect(remove(state, gone, "timeout", clock, limits), clock)
    after = decision.state
    if (
        after is not None
        and not after.participants
        and after.close_at is not None
        and after.close_at <= clock.epoch
    ):
        closed = _close(after, after.close_reason or "departure_timeout", clock, limits)
        return replace(
            closed,
            events=decision.events + closed.events,
            cleanup=decision.cleanup + closed.cleanup,
        )
    return decision


_GROWS = (Join, PublishSession, RegisterCallsSession)
"""Commands that can make a room's state larger: each is checked against its bound."""


def _replay(state: RoomState, command: Command) -> Decision:
    """A command applied already (an edge retried it): the same answer, nothing
    done again but the projection it wrote (its turn may have died before)."""
    match command:
        case Join():
            return Decision(state, snapshot(state, resumed=True))
        case UpdateRoom():
            return Decision(state, room_info(state))
        case RegisterCallsSession():
            owned = state.calls_sessions.get(command.session_id) == command.participant_id
            sessions = sessions_of(state, [command.session_id]) if owned else ()
            return Decision(state, Ack(seq=state.seq), sessions=sessions)
    return Decision(state, Ack(seq=state.seq))


def _remember(state: RoomState, cmd_id: str, limits: Limits) -> RoomState:
    recent = [*state.recent_commands[-(limits.recent_commands - 1) :], cmd_id]
    return replace(state, recent_commands=recent)


def _create(state: RoomState | None, command: CreateRoom, clock: Clock, limits: Limits) -> Decision:
    if state is not None:
        if command.cmd_id in state.recent_commands:
            return Decision(state, Ack(seq=state.seq), meta=True)
        return Decision(state, Rejected(code=ErrorCode.ROOM_EXISTS, message="Room already exists"))
    meta = RoomMeta(
        id=command.room_id,
        name=command.name,
        created_by=command.created_by,
        created_at=command.created_at,
        max_participants=command.max_participants,
        empty_timeout=_or(command.empty_timeout, limits.empty_timeout),
        departure_timeout=_or(command.departure_timeout, limits.departure_timeout),
        join_policy=command.join_policy,
    )
    room = RoomState(meta=meta, join_secret_hash=command.join_secret_hash)
    if meta.empty_timeout > 0:
        room = replace(
            room, close_at=clock.epoch + meta.empty_timeout, close_reason="empty_timeout"
        )
    created = _remember(room, command.cmd_id, limits)
    return Decision(created, Ack(seq=0), log=(room_created(created, clock.iso),), meta=True)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _relay(state: RoomState, command: PublishSession | SetTrackState | Broadcast) -> Decision:
    sender = state.participants.get(command.participant_id)
    if sender is None or sender.conn_id != command.conn_id:
        return Decision(state, NOT_IN_ROOM)
    grants = sender.grants
    if grants is not None:
        # Checked by the edge on every frame, and again here, where the truth is.
        if isinstance(command, Broadcast) and not grants.can_send:
            return Decision(state, GRANT_DENIED_SEND)
        if not isinstance(command, Broadcast) and not grants.can_publish:
            return Decision(state, GRANT_DENIED_PUBLISH)
    seq = state.seq + 1
    event: Event
    updated = sender
    match command:
        case PublishSession():
            problem = track_problem(command.tracks)
            if problem is not None:
                return Decision(state, Rejected(code=ErrorCode.BAD_COMMAND, message=problem))
            updated = replace(sender, session_id=command.session_id, tracks=command.tracks)
            event = SessionPublished(
                room_id=state.room_id,
                seq=seq,
                participant_id=sender.id,
                session_id=command.session_id,
                frame=command.frame,
                cmd_id=command.cmd_id,
            )
        case SetTrackState():
            kind = command.kind
            if not is_track_kind(kind):
                return Decision(state, BAD_KIND)
            if getattr(sender, kind) == command.enabled:
                # Nothing changes: relayed (as the old service did), but not
                # saved, logged or sent to webhooks.
                return _broadcast(state, command, seq)
            updated = replace(sender, **{kind: command.enabled})
            event = TrackStateChanged(
                room_id=state.room_id,
                seq=seq,
                participant_id=sender.id,
                kind=kind,
                enabled=command.enabled,
                frame=command.frame,
                cmd_id=command.cmd_id,
            )
        case Broadcast():
            return _broadcast(state, command, seq)
    participants = state.participants
    if updated is not sender:
        participants = {**participants, sender.id: updated}
    new_state = replace(state, seq=seq, participants=participants)
    if isinstance(event, TrackStateChanged):
        # A mute change is numbered from the reservation like a broadcast and
        # written later (the actor saves it within a second, or at a handover);
        # its log entry, on its way before the event, is what a new owner
        # reads back if this one dies first (`with_track_changes`).
        return _numbered(new_state, event)
    return Decision(new_state, Ack(seq=seq), (event,))


def _broadcast(state: RoomState, command: SetTrackState | Broadcast, seq: int) -> Decision:
    """Relay a frame that changes nothing but the sequence number: within the
    reservation it goes out without a write."""
    event = Broadcasted(
        room_id=state.room_id,
        seq=seq,
        participant_id=command.participant_id,
        frame=command.frame,
        cmd_id=command.cmd_id,
    )
    return _numbered(replace(state, seq=seq), event)


def _numbered(state: RoomState, event: Event) -> Decision:
    """A change numbered ``state.seq`` that need not be written before it goes
    out: within the reservation it is not; past it, the write reserves the
    next block."""
    seq = state.seq
    if seq <= state.seq_reserved:
        return Decision(state, Ack(seq=seq), (event,), durable=False)
    return Decision(replace(state, seq_reserved=seq + SEQ_BLOCK), Ack(seq=seq), (event,))


def with_track_changes(state: RoomState, logged: Iterable[LogEntry]) -> RoomState:
    """The room as loaded, with the mute changes its previous owner made after
    its last save (read back from the event log): each entry numbered after the
    saved state sets its participant's track, in order."""
    participants = state.participants
    for entry in logged:
        if (
            entry.event != event_log.TRACK_STATE_CHANGED
            or entry.room_seq <= state.seq
            or entry.participant_id is None
            or entry.enabled is None
            or not is_track_kind(entry.kind)
        ):
            continue
        present = participants.get(entry.participant_id)
        if present is not None and getattr(present, entry.kind) != entry.enabled:
            changed = replace(present, **{entry.kind: entry.enabled})
            participants = {**participants, present.id: changed}
    if participants is state.participants:
        return state
    return replace(state, participants=participants)


# --- operators ---------------------------------------------------------------------


def _update(state: RoomState, command: UpdateRoom) -> Decision:
    meta = state.meta
    if command.name is not None:
        meta = replace(meta, name=command.name)
    if command.max_participants is not None:
        if command.max_participants < 1:
            bad = Rejected(code=ErrorCode.BAD_COMMAND, message="max_participants must be >= 1")
            return Decision(state, bad)
        meta = replace(meta, max_participants=command.max_participants)
    new_state = replace(state, meta=meta)
    return Decision(new_state, room_info(new_state), meta=True)


def _close(state: RoomState, reason: str, clock: Clock, limits: Limits) -> Decision:
    """Everyone leaves (reason ``room_closed``), then the room closes for good."""
    left = remove(state, list(state.participants.values()), "room_closed", clock, limits)
    after = left.state or state
    seq = after.seq + 1
    closed = RoomClosed(room_id=state.room_id, seq=seq, participant_id="", reason=reason)
    final = replace(after, seq=seq, close_at=None, close_reason=reason)
    return Decision(None, Ack(seq=seq), (*left.events, closed), cleanup=left.cleanup, closed=final)


def _moderator_refusal(state: RoomState, command: RemoveParticipant | MuteTrack) -> Rejected | None:
    """An operator may always moderate; a participant only from its current
    socket with the ``room_admin`` grant, and never a hidden participant (it
    cannot see one)."""
    if not command.by:
        return None
    moderator = state.participants.get(command.by)
    if (
        moderator is None
        or moderator.conn_id != command.by_conn_id
        or moderator.grants is None
        or not moderator.grants.room_admin
    ):
        return NOT_ROOM_ADMIN
    target = state.participants.get(command.participant_id)
    if target is not None and target.hidden:
        return NO_SUCH_PARTICIPANT
    return None


def _kick(state: RoomState, command: RemoveParticipant, clock: Clock, limits: Limits) -> Decision:
    refused = _moderator_refusal(state, command)
    if refused is not None:
        return Decision(state, refused)
    present = state.participants.get(command.participant_id)
    if present is None:
        return Decision(state, NO_SUCH_PARTICIPANT)
    reason = "banned" if command.ban else "kicked"
    removed = remove(state, [present], reason, clock, limits, by=command.by)
    assert removed.state is not None
    kicked = [*removed.state.kicked[-(limits.kicked_kept - 1) :], present.id]
    after = replace(removed.state, kicked=kicked)
    if command.ban and present.identity is not None:
        after = replace(after, banned=_banned(after.banned, present.identity, limits))
    close = closes(
        [present], CloseCode.NOT_IN_ROOM, "Removed from the room", KICKED_NOTICE, command.by
    )
    return replace(removed, state=after, control=close)


def _banned(banned: list[str], identity: str, limits: Limits) -> list[str]:
    if identity in banned:
        return banned
    return [*banned[-(limits.banned_kept - 1) :], identity]


def _ban(state: RoomState, command: BanIdentity, clock: Clock, limits: Limits) -> Decision:
    if command.lift:
        if command.identity not in state.banned:
            return Decision(state, Ack(seq=state.seq))
        lifted = [i for i in state.banned if i != command.identity]
        return Decision(replace(state, banned=lifted), Ack(seq=state.seq))
    present = [p for p in state.participants.values() if p.identity == command.identity]
    removed = remove(state, present, "banned", clock, limits)
    assert removed.state is not None
    after = replace(removed.state, banned=_banned(removed.state.banned, command.identity, limits))
    close = closes(present, CloseCode.NOT_IN_ROOM, "Banned from the room", KICKED_NOTICE)
    return replace(removed, state=after, control=close)


def _revoke(state: RoomState, clock: Clock, limits: Limits) -> Decision:
    """Every token issued until this second is refused from now on: everyone
    holds one, so everyone goes (the sessions of tokens not yet connected too)."""
    everyone = list(state.participants.values())
    removed = expire_preconnect(
        remove(state, everyone, "revoked", clock, limits), clock, everyone_due=True
    )
    assert removed.state is not None
    after = replace(removed.state, tokens_revoked_at=int(clock.epoch))
    close = closes(everyone, CloseCode.NOT_IN_ROOM, "Your token was revoked")
    return replace(removed, state=after, control=close, write=True)


def _set_secret(state: RoomState, command: SetJoinSecret, clock: Clock) -> Decision:
    if state.meta.join_policy != "secret":
        return Decision(state, NO_JOIN_SECRET)
    rotated = replace(
        state, join_secret_hash=command.join_secret_hash, secret_rotated_at=int(clock.epoch)
    )
    return Decision(rotated, Ack(seq=state.seq))


def _mute(state: RoomState, command: MuteTrack) -> Decision:
    refused = _moderator_refusal(state, command)
    if refused is not None:
        return Decision(state, refused)
    present = state.participants.get(command.participant_id)
    if present is None:
        return Decision(state, NO_SUCH_PARTICIPANT)
    kind = command.kind
    if not is_track_kind(kind):
        return Decision(state, BAD_KIND)
    seq = state.seq + 1
    event = TrackMuted(
        room_id=state.room_id,
        seq=seq,
        participant_id=present.id,
        kind=kind,
        enabled=command.enabled,
        by=command.by or "admin",
        cmd_id=command.cmd_id,
    )
    updated = replace(present, **{kind: command.enabled})
    new_state = replace(state, seq=seq, participants={**state.participants, present.id: updated})
    return Decision(new_state, Ack(seq=seq), (event,))
