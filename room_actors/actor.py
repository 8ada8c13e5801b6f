"""One actor per active room: a mailbox drained in turns.

A turn takes every command waiting in the mailbox, applies them one by one with
`state.decide`, saves the resulting state once with compare-and-set (a group
commit), then publishes the events in sequence order and answers each request.
Nothing is published or acknowledged before the state it describes is saved.
A turn that fails drops the cached state; the next turn reloads it from KV.
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from msgspec.structs import replace
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus_schema import codec, ids, subjects
from bus_schema import log as event_log
from bus_schema.commands import (
    Ack,
    Catchup,
    Command,
    CreateRoom,
    GetSnapshot,
    RegisterCallsSession,
    Rejected,
    Reply,
    RoomInfo,
    UpdateRoom,
)
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
)
from bus_schema.log import LogEntry
from bus_schema.state import CallsSession, RoomState
from room_actors import metrics
from room_actors.state import (
    ExpireDisconnected,
    Internal,
    Limits,
    Republish,
    decide,
    next_deadline,
    resumed,
)
from room_actors.store import Fenced, RoomStore
from runtime import clock
from runtime.clock import Clock

log = logging.getLogger(__name__)

_RECENT_EVENTS = 256
_CATCHUP_BYTES = 256 * 1024
_REPUBLISH = 16
TURN_FRAME_BYTES = 64 * 1024
"""Client frames one turn takes at most (beyond its first command): a turn's
events are saved with the state (the outbox), so this bounds what they add."""

RETRY = Rejected(code=ErrorCode.NOT_OWNER, message="Room is moving, retry", retryable=True)
"""The answer when this worker does not (or no longer) own the room."""


@dataclass(slots=True)
class _Turn:
    """What one turn decided, before it is saved and published."""

    state: RoomState | None
    answers: list["_Answer"] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    control: list[tuple[str, CloseConnection]] = field(default_factory=list)
    cleanup: list[CloseCallsTracks] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    """Calls sessions registered in this turn."""
    save: bool = False
    """Write the state even if nothing changed (a keep-alive)."""
    durable: bool = False
    """A change that must be written before it is published."""
    publish_meta: bool = False
    republish: bool = False
    deleted: bool = False
    """The room closed in this turn: delete it instead of saving."""
    closing: RoomState | None = None
    """The closed room's last state, saved with its events before the delete."""
    log: list[LogEntry] = field(default_factory=list)
    """Event log entries that are not room events (``room_created``)."""
    now: Clock | None = None


@dataclass(slots=True)
class _Pending:
    command: Command | Internal | None
    """``None`` asks for a keep-alive save of the unchanged state."""
    msg: Msg | None
    arrived: float = field(default_factory=time.monotonic)

    def answer(self, reply: Reply) -> "_Answer":
        kind = getattr(self.command, "__struct_config__", None)
        return _Answer(self.msg, reply, kind.tag if kind else "internal", self.arrived)


@dataclass(frozen=True, slots=True)
class _Answer:
    msg: Msg | None
    reply: Reply
    command: str
    arrived: float

    async def send(self) -> None:
        outcome = self.reply.code if isinstance(self.reply, Rejected) else type(self.reply).__name__
        metrics.child(metrics.COMMANDS, self.command, outcome.lower()).inc()
        if self.msg is not None and self.msg.reply:
            await self.msg.respond(codec.encode(self.reply))
            metrics.child(metrics.COMMAND_SECONDS, self.command).observe(
                time.monotonic() - self.arrived
            )


class RoomActor:
    def __init__(
        self,
        room_id: str,
        *,
        nc: Client,
        store: RoomStore,
        limits: Limits,
        owns: Callable[[], bool],
        on_fenced: Callable[[str], None],
        on_cleanup: Callable[[CloseCallsTracks], None],
    ) -> None:
        self.room_id = room_id
        self._nc = nc
        self._store = store
        self._limits = limits
        self._owns = owns
        self._on_fenced = on_fenced
        self._on_cleanup = on_cleanup
        self._mailbox: deque[_Pending] = deque()
        self._task: asyncio.Task[None] | None = None
        self._loaded = False
        self._state: RoomState | None = None
        self._revision: int | None = None
        self.last_active = time.monotonic()
        self._expiry: asyncio.TimerHandle | None = None
        self._recent: deque[Event] = deque(maxlen=_RECENT_EVENTS)
        """The last events published, to catch up an edge that missed some."""
        self._skipped: tuple[int, int] | None = None
        """(last saved, first usable) sequence numbers when this actor took the
        room over past a reservation."""

    @property
    def busy(self) -> bool:
        return self._task is not None

    @property
    def state(self) -> RoomState | None:
        return self._state

    def submit(self, command: Command | Internal, msg: Msg | None = None) -> None:
        self._enqueue(_Pending(command, msg))

    def activate(self) -> None:
        """Load the room now (a partition was taken over), without a command."""
        self.submit(GetSnapshot(cmd_id=ids.new_command_id(), room_id=self.room_id), None)

    def touch(self) -> None:
        """Save the state unchanged, refreshing its age in KV (a room in use never expires)."""
        self._enqueue(_Pending(None, None))

    def _enqueue(self, pending: _Pending) -> None:
        self._mailbox.append(pending)
        self.last_active = time.monotonic()
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name=f"room-{self.room_id}")

    async def wait_idle(self) -> None:
        while (task := self._task) is not None:
            await asyncio.shield(task)

    async def _drain(self) -> None:
        try:
            while self._mailbox:
                batch = self._next_batch()
                try:
                    await self._turn(batch)
                except Fenced:
                    metrics.FENCED.inc()
                    log.warning(
                        "fenced: another worker owns the room; dropping it",
                        extra={"room_id": self.room_id},
                    )
                    self._forget()
                    await self._answer_all(batch, RETRY)
                    self._on_fenced(self.room_id)
                except Exception:
                    log.exception("turn failed; state dropped", extra={"room_id": self.room_id})
                    self._forget()
                    await self._answer_all(batch, RETRY)
        finally:
            self._task = None

    def _next_batch(self) -> list[_Pending]:
        """The commands of the next turn: all that wait, up to `TURN_FRAME_BYTES`
        of client frames."""
        mailbox = self._mailbox
        batch = [mailbox.popleft()]
        size = _frame_size(batch[0].command)
        while mailbox:
            size += _frame_size(mailbox[0].command)
            if size > TURN_FRAME_BYTES:
                break
            batch.append(mailbox.popleft())
        return batch

    def _schedule_expiry(self, deadline: float | None) -> None:
        """Wake up when the next resume grace period ends (Unix seconds)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if deadline is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, deadline - time.time())
            self._expiry = loop.call_later(delay, self.submit, ExpireDisconnected())

    def cancel_timers(self) -> None:
        self._schedule_expiry(None)

    def _forget(self) -> None:
        self.cancel_timers()
        self._loaded = False
        self._state = None
        self._revision = None

    async def _turn(self, batch: list[_Pending]) -> None:
        if not self._owns():
            raise Fenced(self.room_id)
        if not self._loaded:
            await self._load()
        turn = self._apply(batch)
        state = turn.state
        if turn.deleted and turn.closing is not None:
            if not self._owns():
                raise Fenced(self.room_id)
            # First the close with its events (an outbox), then the events go
            # out, then the keys are deleted: a death in between is finished
            # by the next owner (`_load`).
            closed = replace(turn.closing, outbox=turn.events, closed=True)
            self._revision = await self._store.save(closed, self._revision)
        # A turn of broadcasts only (numbered within the reservation) is
        # published without a write; the next write carries its sequence number.
        elif state is not None and (turn.save or turn.durable):
            if turn.events:
                # The transactional outbox: a worker that saves and dies before
                # publishing leaves the events in the state for the next owner.
                state = replace(state, outbox=turn.events)
            if not self._owns():
                # Our lease lapsed (we were paused or cut off): another worker may
                # own the room now. Write nothing; the edge retries elsewhere.
                raise Fenced(self.room_id)
            self._revision = await self._store.save(state, self._revision)
        self._state = state
        self._schedule_expiry(next_deadline(state))
        if state is not None:
            await self._project(state, turn)
        for cleanup in turn.cleanup:
            for session_id in cleanup.session_ids:
                # Before anyone hears of the leave, the proxy stops counting
                # the leaver's sessions as the room's.
                await self._store.forget_calls_session(session_id)
        if turn.republish:
            # After a reconnect: events of ours may have died with a NATS node.
            await self._publish(list(self._recent)[-_REPUBLISH:], remember=False)
        await self._publish(turn.events)
        await self._append_log(turn.log, turn.events, turn.now)
        if turn.deleted:
            self._revision = await self._store.delete(self.room_id, self._revision)
        for cleanup in turn.cleanup:
            self._on_cleanup(cleanup)
        for edge_id, message in turn.control:
            await self._nc.publish(subjects.edge_control(edge_id), codec.encode(message))
        for answer in turn.answers:
            await answer.send()

    async def _project(self, state: RoomState, turn: "_Turn") -> None:
        """Keep the read models in KV in step with the saved state."""
        if turn.publish_meta:
            await self._store.publish_meta(state.meta)
        sessions = state.calls_sessions if turn.publish_meta else dict.fromkeys(turn.registered)
        for session_id in sessions:
            owner = state.calls_sessions[session_id]
            await self._store.publish_calls_session(
                CallsSession(session_id=session_id, room_id=self.room_id, participant_id=owner)
            )

    async def _load(self) -> None:
        loaded = await self._store.load(self.room_id)
        state = resumed(loaded.state) if loaded.state is not None else None
        if loaded.state is not None and state is not None and state.seq != loaded.state.seq:
            self._skipped = (loaded.state.seq, state.seq)
        self._state, self._revision, self._loaded = state, loaded.revision, True
        if loaded.state is not None and loaded.state.outbox:
            # The last turn's events may never have gone out (the previous
            # owner died between its save and its publish). Edges drop the
            # ones they already have: they apply events by sequence number.
            await self._publish(loaded.state.outbox)
            await self._append_log([], loaded.state.outbox, None)
        if loaded.state is not None and loaded.state.closed:
            # The previous owner closed the room and died before deleting it.
            self._revision = await self._store.delete(self.room_id, loaded.revision)
            self._state = None

    async def _append_log(
        self, entries: list[LogEntry], events: list[Event], now: Clock | None
    ) -> None:
        """The durable event log: what happened to the room, in order."""
        if not entries and all(isinstance(e, Broadcasted) for e in events):
            return  # relayed messages are not logged: nothing to do on the hot path
        at = (now or clock.now()).iso
        entries = entries + [e for e in (log_entry(event, at) for event in events) if e]
        if entries:
            await self._store.append_log(entries)

    async def _publish(self, events: list[Event], *, remember: bool = True) -> None:
        subject = subjects.room_events(self.room_id)
        for event in events:
            await self._nc.publish(subject, codec.encode(event))
            if remember and (not self._recent or event.seq > self._recent[-1].seq):
                self._recent.append(event)

    def _apply(self, batch: list[_Pending]) -> "_Turn":
        now = clock.now()
        turn = _Turn(self._state, now=now)
        for pending in batch:
            command = pending.command
            if command is None:
                turn.save = turn.publish_meta = True
                continue
            if isinstance(command, Republish):
                turn.republish = True
                continue
            if isinstance(command, GetSnapshot) and command.since is not None:
                catchup = self._catchup(command.since, turn)
                if catchup is not None:
                    turn.answers.append(pending.answer(catchup))
                    continue
            outcome = decide(turn.state, command, now, self._limits)
            if isinstance(outcome.reply, Ack):
                if isinstance(command, CreateRoom):
                    turn.publish_meta = True
                    if outcome.state is not None and outcome.state is not turn.state:
                        turn.log.append(room_created(outcome.state, now.iso))
                elif isinstance(command, RegisterCallsSession):
                    turn.registered.append(command.session_id)
            elif isinstance(outcome.reply, RoomInfo) and isinstance(command, UpdateRoom):
                turn.publish_meta = outcome.state is not turn.state
            if outcome.state is not turn.state and outcome.durable:
                turn.durable = True
            turn.state = outcome.state
            if outcome.deleted:
                turn.closing = outcome.state
                turn.deleted, turn.state, turn.durable = True, None, False
                turn.publish_meta = False
            turn.answers.append(pending.answer(outcome.reply))
            turn.events.extend(outcome.events)
            turn.control.extend(outcome.control)
            turn.cleanup.extend(outcome.cleanup)
        return turn

    def _catchup(self, since: int, turn: "_Turn") -> Catchup | None:
        """The events after ``since`` if this actor still has all of them (and
        they are not too many to send in one reply).

        After a takeover the numbers between the last saved event and the
        reservation may have been used by the previous owner for broadcasts,
        which no one can replay: an edge that has every saved event is told to
        skip them rather than being resynchronised from a snapshot."""
        state = turn.state
        if state is None or since > state.seq:
            return None
        skip_to = 0
        if self._skipped is not None and self._skipped[0] <= since < self._skipped[1]:
            since = skip_to = self._skipped[1]
        wanted = [e for e in (*self._recent, *turn.events) if e.seq > since]
        if [e.seq for e in wanted] != list(range(since + 1, state.seq + 1)):
            return None
        if sum(len(codec.encode(e)) for e in wanted) > _CATCHUP_BYTES:
            return None
        return Catchup(room_id=self.room_id, events=wanted, skip_to=skip_to)

    @staticmethod
    async def _answer_all(batch: list[_Pending], reply: Reply) -> None:
        for pending in batch:
            try:
                await pending.answer(reply).send()
            except Exception:
                log.exception("could not answer a command")


def _frame_size(command: Command | Internal | None) -> int:
    frame = getattr(command, "frame", None)
    return len(frame) if frame is not None else 0


def room_created(state: RoomState, at: str) -> LogEntry:
    return LogEntry(
        id=f"{state.room_id}.0",
        event=event_log.ROOM_CREATED,
        room_id=state.room_id,
        room_seq=0,
        at=at,
        room=state.meta,
    )


def log_entry(event: Event, at: str) -> LogEntry | None:
    """The event log's record of a room event (broadcasts are not logged)."""
    if isinstance(event, Broadcasted):
        return None
    base = LogEntry(
        id=f"{event.room_id}.{event.seq}",
        event="",
        room_id=event.room_id,
        room_seq=event.seq,
        at=at,
        participant_id=event.participant_id or None,
    )
    match event:
        case ParticipantJoined():
            return replace(base, event=event_log.PARTICIPANT_JOINED, participant_name=event.name)
        case ParticipantLeft():
            return replace(base, event=event_log.PARTICIPANT_LEFT, reason=event.reason)
        case SessionPublished():
            return replace(base, event=event_log.SESSION_PUBLISHED, session_id=event.session_id)
        case TrackStateChanged():
            return replace(
                base, event=event_log.TRACK_STATE_CHANGED, kind=event.kind, enabled=event.enabled
            )
        case TrackMuted():
            return replace(
                base,
                event=event_log.TRACK_STATE_CHANGED,
                kind=event.kind,
                enabled=event.enabled,
                by=event.by,
            )
        case RoomClosed():
            metrics.child(metrics.ROOMS_CLOSED, event.reason).inc()
            return replace(base, event=event_log.ROOM_CLOSED, reason=event.reason)
    return None
