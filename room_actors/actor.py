"""One actor per active room: a mailbox drained in turns.

A turn takes every message waiting in the mailbox and folds them with
`state.decide` (each decision applied to the state the previous one left),
then carries out what the decisions say, in one straight line: save the state
once with compare-and-set (a group commit, its events as the outbox), keep the
read models in KV in step, publish the events in sequence order, answer each
request, then append the events to the event log (no client waits for the
log). Nothing is published or acknowledged before the state it describes is
saved. A turn that fails drops the cached
state; the next turn reloads it from KV.
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
from bus_schema.commands import Catchup, Command, GetSnapshot, Rejected, Reply
from bus_schema.control import CloseCallsTracks, CloseConnection
from bus_schema.errors import ErrorCode
from bus_schema.events import Event
from bus_schema.log import LogEntry
from bus_schema.state import CallsSession, RoomState
from room_actors import metrics
from room_actors.log import entries
from room_actors.state import (
    Decision,
    ExpireDisconnected,
    Internal,
    KeepAlive,
    Limits,
    decide,
    next_deadline,
    resumed,
)
from room_actors.store import ActorStore, Fenced, Loaded
from runtime import clock

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
    """The decisions of one batch folded together: what the turn writes,
    projects, publishes, logs and answers."""

    state: RoomState | None
    """The room after the decisions so far."""
    answers: list["_Answer"] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    control: list[tuple[str, CloseConnection]] = field(default_factory=list)
    cleanup: list[CloseCallsTracks] = field(default_factory=list)
    log: list[LogEntry] = field(default_factory=list)
    sessions: list[CallsSession] = field(default_factory=list)
    meta: bool = False
    write: bool = False
    """Some decision must be saved before anything goes out (`Decision.write`)."""
    republish: bool = False
    closed: RoomState | None = None
    """The room closed in this turn: its last state, saved with the turn's
    events, then deleted."""

    def add(self, decision: Decision, answer: "_Answer") -> None:
        self.state = decision.state
        self.answers.append(answer)
        self.events.extend(decision.events)
        self.control.extend(decision.control)
        self.cleanup.extend(decision.cleanup)
        self.log.extend(decision.log)
        self.sessions.extend(decision.sessions)
        self.meta |= decision.meta
        self.write |= decision.write
        self.republish |= decision.republish
        if decision.closed is not None:
            # The close replaces the save; what was to be written before it
            # is deleted with the room.
            self.closed, self.write, self.meta = decision.closed, False, False


@dataclass(slots=True)
class _Pending:
    message: Command | Internal
    msg: Msg | None
    arrived: float = field(default_factory=time.monotonic)

    def answer(self, reply: Reply) -> "_Answer":
        kind = getattr(self.message, "__struct_config__", None)
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
        store: ActorStore,
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
        self._preloaded: Loaded | None = None
        """The room as a takeover read it, for the first load."""
        self._skipped: tuple[int, int] | None = None
        """(last saved, first usable) sequence numbers when this actor took the
        room over past a reservation."""

    @property
    def busy(self) -> bool:
        return self._task is not None

    @property
    def state(self) -> RoomState | None:
        return self._state

    def submit(self, message: Command | Internal, msg: Msg | None = None) -> None:
        self._mailbox.append(_Pending(message, msg))
        self.last_active = time.monotonic()
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name=f"room-{self.room_id}")

    def activate(self, loaded: Loaded | None = None) -> None:
        """Load the room now (a partition was taken over), without a command;
        from ``loaded`` when the caller read it already (a stale read is
        harmless: the first save names its revision and is fenced if another
        write came between)."""
        if loaded is not None and not self._loaded and not self._mailbox:
            self._preloaded = loaded
        self.submit(GetSnapshot(cmd_id=ids.new_command_id(), room_id=self.room_id), None)

    def touch(self) -> None:
        """Save the state unchanged, refreshing its age in KV (a room in use never expires)."""
        self.submit(KeepAlive())

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
        size = _frame_size(batch[0].message)
        while mailbox:
            size += _frame_size(mailbox[0].message)
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
        self._preloaded = None
        self._loaded = False
        self._state = None
        self._revision = None

    async def _turn(self, batch: list[_Pending]) -> None:
        if not self._owns():
            raise Fenced(self.room_id)
        if not self._loaded:
            await self._load()
        turn = self._fold(batch)
        self._state = await self._save(turn)
        self._schedule_expiry(next_deadline(self._state))
        await self._project(turn)
        if turn.republish:
            # After a reconnect: events of ours may have died with a NATS node.
            await self._publish(list(self._recent)[-_REPUBLISH:], remember=False)
        await self._publish(turn.events)
        if turn.closed is not None:
            self._revision = await self._store.delete(self.room_id, self._revision)
            metrics.child(metrics.ROOMS_CLOSED, turn.closed.close_reason).inc()
        for cleanup in turn.cleanup:
            self._on_cleanup(cleanup)
        for edge_id, message in turn.control:
            await self._nc.publish(subjects.edge_control(edge_id), codec.encode(message))
        for answer in turn.answers:
            await answer.send()
        if turn.log:
            # After the answers: the log is for operators and webhooks, and a
            # client need not wait for it. Still within the turn, so the log
            # keeps the room's order, and the next save (which replaces the
            # outbox these entries are rebuilt from after a crash) comes after.
            await self._store.append_log(turn.log)

    def _fold(self, batch: list[_Pending]) -> _Turn:
        """Decide each message in turn, each on the state the previous one left."""
        now = clock.now()
        turn = _Turn(self._state)
        for pending in batch:
            decision = decide(turn.state, pending.message, now, self._limits)
            reply = decision.reply
            if decision.catch_up_since is not None:
                reply = self._catchup(decision.catch_up_since, turn) or reply
            turn.add(decision, pending.answer(reply))
        return turn

    async def _save(self, turn: _Turn) -> RoomState | None:
        """Write what the turn decided, if it must be written, and return the
        room as it now stands. A turn of reads, or of broadcasts numbered within
        the reservation, is published without a write: the next write carries
        its sequence number."""
        state = turn.state
        if turn.closed is not None:
            # First the close with its events (an outbox), then the events go
            # out, then the keys are deleted: a death in between is finished
            # by the next owner (`_load`).
            saving = replace(turn.closed, outbox=turn.events, closed=True)
        elif state is not None and turn.write:
            # The transactional outbox: a worker that saves and dies before
            # publishing leaves the events in the state for the next owner.
            state = saving = replace(state, outbox=turn.events) if turn.events else state
        else:
            return state
        if not self._owns():
            # Our lease lapsed (we were paused or cut off): another worker may
            # own the room now. Write nothing; the edge retries elsewhere.
            raise Fenced(self.room_id)
        self._revision = await self._store.save(saving, self._revision)
        return state

    async def _project(self, turn: _Turn) -> None:
        """Keep the read models in KV in step with the saved state. The Calls
        sessions of leavers are forgotten before anyone hears of the leave, so
        the proxy stops counting them as the room's."""
        state = turn.state
        if state is not None and turn.meta:
            await self._store.publish_meta(state.meta)
        if state is not None:
            for session in turn.sessions:
                await self._store.publish_calls_session(session)
        for cleanup in turn.cleanup:
            for session_id in cleanup.session_ids:
                await self._store.forget_calls_session(session_id)

    async def _load(self) -> None:
        loaded, self._preloaded = self._preloaded, None
        if loaded is None:
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
            replayed = entries(loaded.state.outbox, clock.now().iso)
            if replayed:
                await self._store.append_log(list(replayed))
        if loaded.state is not None and loaded.state.closed:
            # The previous owner closed the room and died before deleting it.
            self._revision = await self._store.delete(self.room_id, loaded.revision)
            self._state = None

    async def _publish(self, events: list[Event], *, remember: bool = True) -> None:
        subject = subjects.room_events(self.room_id)
        for event in events:
            await self._nc.publish(subject, codec.encode(event))
            if remember and (not self._recent or event.seq > self._recent[-1].seq):
                self._recent.append(event)

    def _catchup(self, since: int, turn: _Turn) -> Catchup | None:
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


def _frame_size(message: Command | Internal) -> int:
    frame = getattr(message, "frame", None)
    return len(frame) if frame is not None else 0
