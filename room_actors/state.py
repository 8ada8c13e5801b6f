"""Pure decisions: (room state, message) -> a `Decision` saying all a turn must do.

Nothing here does I/O. `decide` never mutates its input; an unchanged state is
returned as the same object. The actor folds the decisions of a batch and
carries them out (save, project, publish, log, answer) without looking at the
messages again: every choice that depends on a command's type is made here.
"""

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from msgspec.structs import replace

from bus_schema import codec
from bus_schema.closecodes import CloseCode
from bus_schema.commands import (
    Ack,
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
    Reply,
    RoomInfo,
    SetTrackState,
    Snapshot,
    UpdateRoom,
)
from bus_schema.control import KICKED as KICKED_NOTICE
from bus_schema.control import CloseCallsTracks, CloseConnection
from bus_schema.errors import ErrorCode
from bus_schema.events import (
    Broadcasted,
    Event,
    ParticipantJoined,
    ParticipantLeft,
    RoomClosed,
    SessionPublished,
    TrackMuted,
    TrackStateChanged,
    is_track_kind,
)
from bus_schema.ids import is_token_id
from bus_schema.limits import track_problem
from bus_schema.log import LogEntry
from bus_schema.state import CallsSession, Participant, RoomMeta, RoomState
from room_actors.log import entries, room_created
from runtime.clock import Clock

if TYPE_CHECKING:
    from room_actors.settings import ActorSettings


@dataclass(frozen=True, slots=True)
class Decision:
    """Everything one message makes its room's turn do."""

    state: RoomState | None
    """The room after the message (``None``: there is none, or it just closed)."""
    reply: Reply
    events: tuple[Event, ...] = ()
    """Published in order once the state is saved (and saved with it: the outbox)."""
    control: tuple[tuple[str, CloseConnection], ...] = ()
    """(edge id, message) pairs to send once the state is saved."""
    cleanup: tuple[CloseCallsTracks, ...] = ()
    """Calls sessions of participants who left: their owners are forgotten in
    ``calls_sessions`` (before the events go out) and an edge closes their tracks."""
    log: tuple[LogEntry, ...] = ()
    """Event log entries, in order: ``room_created``, then one per logged event."""
    sessions: tuple[CallsSession, ...] = ()
    """Calls session owners to write into ``calls_sessions`` (the proxy reads them)."""
    meta: bool = False
    """Write the room's metadata into ``rooms`` (created, changed, kept alive)."""
    write: bool = False
    """Save the state before anything goes out: a durable change, or a keep-alive
    (the unchanged state written again so that it does not age out of KV)."""
    durable: bool = True
    """False when a change need not be written before it is published: a
    broadcast numbered within the sequence reservation."""
    closed: RoomState | None = None
    """The room closed: its last state, saved with its events, then deleted."""
    republish: bool = False
    """Publish the room's last events again (they live in the actor's memory)."""
    catch_up_since: int | None = None
    """An edge missed events after this number: the actor answers them from
    its memory instead of ``reply`` when it still has them all."""

    @property
    def deleted(self) -> bool:
        """The room is closed: its stored state and metadata are deleted."""
        return self.closed is not None


SEQ_BLOCK = 1000
"""How many sequence numbers one write reserves for broadcasts."""


KICKED_KEPT = 1000
"""How many removed participants a room remembers (their tokens stay refused)."""
DEPARTED_KEPT = 256
"""How many recent leavers a room remembers for the Calls proxy at most (each
only for ``preconnect_window`` seconds)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds and timeouts `decide` applies. Built from the worker's
    settings (`from_settings`): each default is written once, in
    `room_actors.settings`; the two list bounds that are not settings are the
    constants above."""

    recent_commands: int
    resume_grace: float
    """Seconds a participant whose connection dropped keeps its place."""
    empty_timeout: float
    """Default seconds a room nobody joins lives (0: no limit but ``ROOM_TTL``)."""
    departure_timeout: float
    """Default seconds a room lives after its last participant left."""
    calls_sessions_per_participant: int
    calls_sessions_per_room: int
    preconnect_window: float
    """Seconds a token may use the Calls proxy before its WebSocket first connects."""
    state_max_bytes: int
    """A command that would make the stored state larger is refused."""
    kicked_kept: int
    departed_kept: int

    @classmethod
    def from_settings(cls, settings: "ActorSettings") -> "Limits":
        return cls(
            recent_commands=settings.recent_commands,
            resume_grace=settings.resume_grace,
            empty_timeout=settings.empty_timeout,
            departure_timeout=settings.departure_timeout,
            calls_sessions_per_participant=settings.calls_sessions_per_participant,
            calls_sessions_per_room=settings.calls_sessions_per_room,
            preconnect_window=settings.calls_preconnect_window,
            state_max_bytes=settings.room_state_max_bytes,
            kicked_kept=KICKED_KEPT,
            departed_kept=DEPARTED_KEPT,
        )


@dataclass(frozen=True, slots=True)
class ExpireDisconnected:
    """Internal: a deadline passed: remove participants whose resume grace
    period has ended, and close the room if its empty or departure timeout is due."""


@dataclass(frozen=True, slots=True)
class EdgesLost:
    """Internal: these edges stopped sending heartbeats; their connected
    participants leave."""

    edge_ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Internal: the room is in use: write its state and projections again,
    unchanged, so that they do not age out of KV."""


@dataclass(frozen=True, slots=True)
class Republish:
    """Internal: publish the last events again (after a NATS reconnect, events
    may have been lost with a node)."""


Internal = ExpireDisconnected | EdgesLost | KeepAlive | Republish


ROOM_NOT_FOUND = Rejected(code=ErrorCode.ROOM_NOT_FOUND, message="Room not found")
NOT_IN_ROOM = Rejected(code=ErrorCode.NOT_IN_ROOM, message="Not in this room")
BAD_KIND = Rejected(code=ErrorCode.BAD_COMMAND, message="kind must be audio or video")
KICKED = Rejected(code=ErrorCode.KICKED, message="Removed from this room")
NO_SUCH_PARTICIPANT = Rejected(code=ErrorCode.NOT_IN_ROOM, message="No such participant")
STATE_FULL = Rejected(
    code=ErrorCode.ROOM_STATE_FULL, message="The room cannot keep more; leave something out"
)


def snapshot(state: RoomState, *, resumed: bool = False) -> Snapshot:
    return Snapshot(
        room_id=state.room_id,
        seq=state.seq,
        max_participants=state.meta.max_participants,
        participants=list(state.participants.values()),
        resumed=resumed,
    )


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


def room_info(state: RoomState) -> RoomInfo:
    return RoomInfo(meta=state.meta, seq=state.seq, participants=list(state.participants.values()))


def decide(
    state: RoomState | None, message: Command | Internal, clock: Clock, limits: Limits
) -> Decision:
    """Apply one message to a room's state: what the turn must do about it."""
    decision = _decide(state, message, clock, limits)
    changed = decision.state is not state and decision.state is not None
    write = decision.write or (changed and decision.durable)
    logged = entries(decision.events, clock.iso) if decision.events else ()
    if write == decision.write and not logged:
        return decision  # the hot path (a broadcast): nothing to add
    return dataclasses.replace(decision, write=write, log=decision.log + logged)


def _decide(
    state: RoomState | None, message: Command | Internal, clock: Clock, limits: Limits
) -> Decision:
    match message:
        case CreateRoom():
            return _create(state, message, clock, limits)
        case Republish():
            # Also for a room just closed: its last events may be the ones lost.
            return Decision(state, Ack(seq=state.seq if state else 0), republish=True)
    if state is None:
        return Decision(state, ROOM_NOT_FOUND)
    match message:
        case GetSnapshot():
            return Decision(state, snapshot(state), catch_up_since=message.since)
        case GetRoom():
            return Decision(state, room_info(state))
        case CheckMember():
            return Decision(state, _check_member(state, message, clock, limits))
        case KeepAlive():
            return Decision(
                state, Ack(seq=state.seq), write=True, meta=True, sessions=_sessions(state)
            )
        case ExpireDisconnected():
            return _expire(state, clock, limits)
        case EdgesLost():
            gone = [
                p
                for p in state.participants.values()
                if p.edge_id in message.edge_ids and p.disconnected_until is None
            ]
            return _remove(state, gone, "edge_lost", clock, limits)
    if message.cmd_id in state.recent_commands:
        return _replay(state, message)
    match message:
        case Join():
            decision = _join(state, message, clock.iso)
        case Leave():
            decision = _leave(state, message, clock, limits)
        case Disconnect():
            decision = _disconnect(state, message, clock.epoch + limits.resume_grace)
        case RegisterCallsSession():
            decision = _register_session(state, message, clock, limits)
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
    if decision.state is state or decision.state is None:
        return decision
    if isinstance(message, _GROWS) and len(codec.encode(decision.state)) > limits.state_max_bytes:
        return Decision(state, STATE_FULL)
    return dataclasses.replace(decision, state=_remember(decision.state, message.cmd_id, limits))


def _expire(state: RoomState, clock: Clock, limits: Limits) -> Decision:
    """A deadline passed: participants whose grace ended leave, Calls sessions
    of tokens that never connected go, and a room due to close closes."""
    gone = [
        p
        for p in state.participants.values()
        if p.disconnected_until is not None and p.disconnected_until <= clock.epoch
    ]
    decision = _expire_preconnect(_remove(state, gone, "timeout", clock, limits), clock)
    after = decision.state
    if (
        after is not None
        and not after.participants
        and after.close_at is not None
        and after.close_at <= clock.epoch
    ):
        closed = _close(after, after.close_reason or "departure_timeout", clock, limits)
        return dataclasses.replace(
            closed,
            events=decision.events + closed.events,
            cleanup=decision.cleanup + closed.cleanup,
        )
    return decision


def _sessions(state: RoomState, ids: Iterable[str] | None = None) -> tuple[CallsSession, ...]:
    """The owner records of these Calls sessions of the room (all by default)."""
    owners = state.calls_sessions
    return tuple(
        CallsSession(session_id=sid, room_id=state.room_id, participant_id=owners[sid])
        for sid in (owners if ids is None else ids)
        if sid in owners
    )


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
            sessions = _sessions(state, [command.session_id]) if owned else ()
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
    )
    room = RoomState(meta=meta)
    if meta.empty_timeout > 0:
        room = replace(
            room, close_at=clock.epoch + meta.empty_timeout, close_reason="empty_timeout"
        )
    created = _remember(room, command.cmd_id, limits)
    return Decision(created, Ack(seq=0), log=(room_created(created, clock.iso),), meta=True)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _join(state: RoomState, command: Join, now: str) -> Decision:
    present = state.participants.get(command.participant_id)
    if present is not None:
        # The same token connected again: the newer connection takes over, the
        # others see no leave/join, and the older socket is closed.
        moved = replace(
            present, edge_id=command.edge_id, conn_id=command.conn_id, disconnected_until=None
        )
        participants = {**state.participants, command.participant_id: moved}
        resumed = replace(state, participants=participants)
        control: tuple[tuple[str, CloseConnection], ...] = ()
        if present.conn_id != command.conn_id and present.disconnected_until is None:
            close = CloseConnection(
                conn_id=present.conn_id,
                code=CloseCode.REPLACED,
                reason="Replaced by a newer connection",
            )
            control = ((present.edge_id, close),)
        return Decision(resumed, snapshot(resumed, resumed=True), control=control)
    if command.participant_id in state.kicked:
        return Decision(state, KICKED)
    if len(state.participants) >= state.meta.max_participants:
        return Decision(state, Rejected(code=ErrorCode.ROOM_FULL, message="Room is full"))
    seq = state.seq + 1
    joined = Participant(
        id=command.participant_id,
        name=command.name,
        joined_at=now,
        edge_id=command.edge_id,
        conn_id=command.conn_id,
    )
    event = ParticipantJoined(
        room_id=state.room_id, seq=seq, participant_id=joined.id, name=joined.name
    )
    new_state = replace(
        state,
        seq=seq,
        participants={**state.participants, joined.id: joined},
        close_at=None,
        close_reason="",
        departed=_without(state.departed, joined.id),
        preconnect=_without(state.preconnect, joined.id),
    )
    return Decision(new_state, snapshot(new_state), (event,))


def _without(entries: dict[str, float], key: str) -> dict[str, float]:
    """``entries`` without ``key`` (the same object when it is not there)."""
    if key not in entries:
        return entries
    return {k: v for k, v in entries.items() if k != key}


def _leave(state: RoomState, command: Leave, clock: Clock, limits: Limits) -> Decision:
    present = state.participants.get(command.participant_id)
    if present is None or present.conn_id != command.conn_id:
        return Decision(state, Ack(seq=state.seq))
    return _remove(state, [present], command.reason, clock, limits)


def _disconnect(state: RoomState, command: Disconnect, until: float) -> Decision:
    present = state.participants.get(command.participant_id)
    if present is None or present.conn_id != command.conn_id or present.disconnected_until:
        return Decision(state, Ack(seq=state.seq))
    away = replace(present, disconnected_until=until)
    new_state = replace(state, participants={**state.participants, present.id: away})
    return Decision(new_state, Ack(seq=state.seq))


def _remove(
    state: RoomState, gone: list[Participant], reason: str, clock: Clock, limits: Limits
) -> Decision:
    """Participants leave the room, one numbered ``leave`` event each. The last
    one out starts the departure timeout."""
    if not gone:
        return Decision(state, Ack(seq=state.seq))
    ids = {p.id for p in gone}
    events = tuple(
        ParticipantLeft(
            room_id=state.room_id, seq=state.seq + i, participant_id=p.id, reason=reason
        )
        for i, p in enumerate(gone, start=1)
    )
    seq = state.seq + len(events)
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
    return Decision(new_state, Ack(seq=seq), events, cleanup=_cleanup(state, ids))


def _cleanup(state: RoomState, ids: set[str]) -> tuple[CloseCallsTracks, ...]:
    """Close the tracks pushed on the Calls sessions of these participants."""
    return tuple(
        CloseCallsTracks(room_id=state.room_id, participant_id=pid, session_ids=owned)
        for pid in sorted(ids)
        if (owned := sorted(sid for sid, owner in state.calls_sessions.items() if owner == pid))
    )


# --- the Calls proxy's questions ------------------------------------------------------


def _calls_refusal(
    state: RoomState, participant_id: str, issued_at: int, clock: Clock, limits: Limits
) -> Rejected | None:
    """Why this participant may not use the Calls proxy now, if it may not."""
    if participant_id in state.participants:
        return None
    if participant_id in state.kicked:
        return KICKED
    left = state.departed.get(participant_id)
    if left is not None and left > clock.epoch - limits.preconnect_window:
        return NOT_IN_ROOM
    if issued_at >= clock.epoch - limits.preconnect_window:
        return None  # a fresh token whose WebSocket has not connected yet
    return NOT_IN_ROOM


def _check_member(state: RoomState, command: CheckMember, clock: Clock, limits: Limits) -> Reply:
    pid = command.participant_id
    refused = _calls_refusal(state, pid, command.issued_at, clock, limits)
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


def _register_session(
    state: RoomState, command: RegisterCallsSession, clock: Clock, limits: Limits
) -> Decision:
    pid = command.participant_id
    if not is_token_id(command.session_id):
        return Decision(state, Rejected(code=ErrorCode.BAD_COMMAND, message="Bad session id"))
    owner = state.calls_sessions.get(command.session_id)
    if owner == pid:
        return Decision(state, Ack(seq=state.seq), sessions=_sessions(state, [command.session_id]))
    if owner is not None:
        return Decision(state, NOT_IN_ROOM)
    refused = _calls_refusal(state, pid, command.issued_at, clock, limits) or _session_cap(
        state, pid, limits
    )
    if refused is not None:
        return Decision(state, refused)
    new_state = replace(state, calls_sessions={**state.calls_sessions, command.session_id: pid})
    if pid not in state.participants and pid not in state.preconnect:
        # Not connected yet: if it never does, its sessions go when its token
        # stops passing for a fresh one.
        until = command.issued_at + limits.preconnect_window
        new_state = replace(new_state, preconnect={**state.preconnect, pid: until})
    sessions = _sessions(new_state, [command.session_id])
    return Decision(new_state, Ack(seq=state.seq), sessions=sessions)


def _expire_preconnect(decision: Decision, clock: Clock) -> Decision:
    """Drop the Calls sessions of token holders that never connected in time."""
    state = decision.state
    if state is None:
        return decision
    due = {pid for pid, until in state.preconnect.items() if until <= clock.epoch}
    if not due:
        return decision
    expired = replace(
        state,
        calls_sessions={s: p for s, p in state.calls_sessions.items() if p not in due},
        preconnect={p: u for p, u in state.preconnect.items() if p not in due},
    )
    return dataclasses.replace(
        decision, state=expired, cleanup=decision.cleanup + _cleanup(state, due)
    )


def _relay(state: RoomState, command: PublishSession | SetTrackState | Broadcast) -> Decision:
    sender = state.participants.get(command.participant_id)
    if sender is None or sender.conn_id != command.conn_id:
        return Decision(state, NOT_IN_ROOM)
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
    if seq <= state.seq_reserved:
        return Decision(replace(state, seq=seq), Ack(seq=seq), (event,), durable=False)
    reserved = replace(state, seq=seq, seq_reserved=seq + SEQ_BLOCK)
    return Decision(reserved, Ack(seq=seq), (event,))


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
    left = _remove(state, list(state.participants.values()), "room_closed", clock, limits)
    after = left.state or state
    seq = after.seq + 1
    closed = RoomClosed(room_id=state.room_id, seq=seq, participant_id="", reason=reason)
    final = replace(after, seq=seq, close_at=None, close_reason=reason)
    return Decision(None, Ack(seq=seq), (*left.events, closed), cleanup=left.cleanup, closed=final)


def _kick(state: RoomState, command: RemoveParticipant, clock: Clock, limits: Limits) -> Decision:
    present = state.participants.get(command.participant_id)
    if present is None:
        return Decision(state, NO_SUCH_PARTICIPANT)
    removed = _remove(state, [present], "kicked", clock, limits)
    assert removed.state is not None
    kicked = [*removed.state.kicked[-(limits.kicked_kept - 1) :], present.id]
    close = CloseConnection(
        conn_id=present.conn_id,
        code=CloseCode.NOT_IN_ROOM,
        reason="Removed from the room",
        notice=KICKED_NOTICE,
    )
    return dataclasses.replace(
        removed,
        state=replace(removed.state, kicked=kicked),
        control=((present.edge_id, close),),
    )


def _mute(state: RoomState, command: MuteTrack) -> Decision:
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
        by="admin",
        cmd_id=command.cmd_id,
    )
    updated = replace(present, **{kind: command.enabled})
    new_state = replace(state, seq=seq, participants={**state.participants, present.id: updated})
    return Decision(new_state, Ack(seq=seq), (event,))
