"""One actor per active room: a mailbox drained in turns.

A turn takes every message waiting in the mailbox and folds them with
`state.decide` (each decision applied to the state the previous one left),
then carries out what the decisions say, in one straight line: save the state
once with compare-and-set (a group commit, its events as the outbox), keep the
read models in KV in step, send the event-log entries on their way, publish the
events in sequence order, answer each request. The log's acknowledgements are
awaited after the turn, in order, by one task per room (no client waits for
the log); until they come, the events stay in the outbox of every save.

Nothing durable is published or acknowledged before the state it describes is
saved. Changes numbered from the reservation (broadcasts, mute changes) go out
without a write: a mute change is saved within ``MUTE_SAVE_DELAY`` seconds (or with
the next write, or after `UNSAVED_MAX` of them), and its log entry, sent before
its event on the same connection, is what a new owner reads back if this one
dies first. A turn that fails drops the cached state; the next turn reloads it
from KV.
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from msgspec.structs import replace
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus_schema import codec, subjects
from bus_schema.commands import Catchup, Command, Rejected, Reply
from bus_schema.control import CloseCallsTracks, CloseConnection
from bus_schema.errors import ErrorCode
from bus_schema.events import Broadcasted, Event
from bus_schema.log import LogEntry
from bus_schema.state import CallsSession, RoomActivity, RoomState
from room_actors import metrics
from room_actors.log import entries
from room_actors.state import (
    Activate,
    Decision,
    ExpireDisconnected,
    Flush,
    Internal,
    KeepAlive,
    Limits,
    decide,
    next_deadline,
    resumed,
    with_track_changes,
)
from room_actors.store import LOG_DUPLICATE_WINDOW, ActorStore, Fenced, Loaded, LogBatch
from runtime import clock
from runtime.outage import Outage, transient

log = logging.getLogger(__name__)

TURNS = Outage(log, "room turns", "turns", metrics.BUS_OUTAGES, metrics.BUS_FAILURES)
"""Turns failing while the bus is unavailable: logged once per episode."""

_RECENT_EVENTS = 256
_CATCHUP_BYTES = 256 * 1024
_REPUBLISH = 16
APPLIED_SECONDS = 30.0
"""How long an actor remembers the ids of commands it applied, beyond the
state's last 64: an edge retries a command for ``COMMAND_DEADLINE`` (10 s by
default), and a retry of a relayed message that was applied long ago (its
event stuck behind a busy room) must not be applied twice."""
APPLIED_MAX = 100_000
TURN_FRAME_BYTES = 64 * 1024
"""Client frames one turn takes at most (beyond its first command): a turn's
events are saved with the state (the outbox), so this bounds what they add."""

UNSAVED_MAX = 64
"""Changes made without a write after which the next one is saved at once:
bounds what a new owner reads back from the log."""
UNLOGGED_MAX = 1024
"""Log entries of a room sent but not yet confirmed (one turn's at most, see
`RoomActor._turn`), beyond which its next turn waits for the log, whether it
logs anything or not (their events ride in every save's outbox meanwhile)."""

LAPSE_POLL = 0.25
"""Seconds between two looks at the lease while unconfirmed log entries wait
for it to come back (or for the room to be let go)."""

OUTBOX_REPLAY_SECONDS = LOG_DUPLICATE_WINDOW / 2
"""How long after a save a new owner replays its outbox. An owner that lives
on after a save publishes its events at once and has the log confirm their
entries within seconds (it resends until then), so an older outbox went out
long ago; replaying it would only store its log entries a second time once the
log no longer recognises them as repeats."""

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
    applied: list[tuple[float, str]] = field(default_factory=list)
    """(arrival, id) of the commands the turn applies: remembered once saved."""

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
        quiet = getattr(self.message, "quiet", False)
        return _Answer(self.msg, reply, kind.tag if kind else "internal", self.arrived, quiet)


@dataclass(frozen=True, slots=True)
class _Answer:
    msg: Msg | None
    reply: Reply
    command: str
    arrived: float
    quiet: bool = False
    """Only a refusal is answered (the edge sees a success as its event)."""

    async def send(self) -> None:
        reply = self.reply
        outcome = reply.code if isinstance(reply, Rejected) else type(reply).__name__
        metrics.child(metrics.COMMANDS, self.command, outcome.lower()).inc()
        if self.msg is not None and self.msg.reply:
            if isinstance(reply, Rejected) or not self.quiet:
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
        load: Callable[[str], Awaitable[Loaded]] | None = None,
    ) -> None:
        self.room_id = room_id
        self._read = load or store.load
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
        self._indexed: RoomActivity | _Unknown | None = UNKNOWN
        """The room's entry in ``active_rooms`` as last written (or read)."""
        self._skipped: tuple[int, int] | None = None
        """(last saved, first usable) sequence numbers when this actor took the
        room over past a reservation."""
        self._applied: deque[tuple[float, str]] = deque()
        self._applied_ids: set[str] = set()
        """Commands applied in the last `APPLIED_SECONDS` (when, id)."""
        self._unsaved = 0
        """Changes made since the last save without writing (mute changes)."""
        self._flush: asyncio.TimerHandle | None = None
        self._unlogged: deque[tuple[LogBatch, list[Event]]] = deque()
        """Log entries sent and not yet confirmed, with the events they record."""
        self._unlogged_entries = 0
        self._confirming: asyncio.Task[None] | None = None
        self._log_last: int | None = None
        """The stream sequence of the room's last log entry (``None``: unknown,
        read at the next append): each entry is stored only after it."""
        self._retired = False
        """The worker let this actor go (the room's partition was lost or
        handed over, or the room passivated): whatever it still has in flight
        is no longer the room's, even if the partition comes back."""

    @property
    def busy(self) -> bool:
        """A turn is running or waiting, or log entries are unconfirmed."""
        return self._task is not None or self._confirming is not None

    def retire(self) -> None:
        """The worker lets this actor go: its timers stop, and it neither
        writes nor sends anything more (a new actor takes the room)."""
        self._retired = True
        self.cancel_timers()

    def _ours(self) -> bool:
        return not self._retired and self._owns()

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
        if loaded is not None and loaded.state is not None and self._indexed is UNKNOWN:
            self._indexed = activity(loaded.state)  # listed there: no need to write it
        if self._loaded or self._mailbox:
            return  # loaded already, or about to be for the command waiting
        if loaded is not None:
            self._preloaded = loaded
        self.submit(Activate())

    def touch(self) -> None:
        """Save the state unchanged, refreshing its age in KV (a room in use never expires)."""
        self.submit(KeepAlive())

    async def wait_idle(self) -> None:
        while (task := self._task) is not None:
            await asyncio.shield(task)

    async def settle(self) -> None:
        """Before the room is handed over: finish the turns in flight, save
        what was changed without a write, and wait until the log has every
        entry sent."""
        await self.wait_idle()
        await self.logged()  # first, so that the save leaves no outbox to replay
        if self._unsaved and self._state is not None:
            self.submit(Flush())
            await self.wait_idle()

    async def _drain(self) -> None:
        try:
            while self._mailbox:
                batch = self._next_batch()
                try:
                    await self._turn(batch)
                except Fenced:
                    metrics.FENCED.inc()
                    # One line per room at INFO: the lease's loss or the
                    # takeover was logged once at WARNING by the leases.
                    log.info(
                        "fenced: another worker owns the room; dropping it",
                        extra={"room_id": self.room_id},
                    )
                    self._forget()
                    await self._answer_all(batch, RETRY)
                    self._on_fenced(self.room_id)
                except Exception as e:
                    if transient(e):
                        TURNS.failed(e)
                    else:
                        log.exception("turn failed; state dropped", extra={"room_id": self.room_id})
                    self._forget()
                    await self._answer_all(batch, RETRY)
                else:
                    TURNS.over()
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

    def _schedule_flush(self) -> None:
        """Save soon (``MUTE_SAVE_DELAY``) what was changed without a write."""
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(self._limits.mute_save_delay, self._flush_due)

    def _flush_due(self) -> None:
        self._flush = None
        if self._unsaved:
            self.submit(Flush())

    def _saved(self) -> None:
        self._unsaved = 0
        self._cancel_flush()

    def _cancel_flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None

    def cancel_timers(self) -> None:
        self._schedule_expiry(None)
        self._cancel_flush()

    def _forget(self) -> None:
        self.cancel_timers()
        self._preloaded = None
        self._loaded = False
        self._state = None
        self._revision = None
        self._unsaved = 0
        self._log_last = None

    async def _turn(self, batch: list[_Pending]) -> None:
        if not self._ours():
            raise Fenced(self.room_id)
        if not self._loaded:
            await self._load()
        if self._unlogged_entries > UNLOGGED_MAX:
            await self.logged()  # the log lags: the room waits for it
        turn = self._fold(batch)
        self._state = await self._save(turn)
        for arrived, cmd_id in turn.applied:
            self._applied.append((arrived, cmd_id))
            self._applied_ids.add(cmd_id)
        self._schedule_expiry(next_deadline(self._state))
        await self._project(turn)
        if turn.republish:
            # After a reconnect: events of ours may have died with a NATS node.
            await self._publish(list(self._recent)[-_REPUBLISH:], remember=False)
        if turn.log and self._confirming is not None:
            # One turn's entries in flight at a time: if a stream leader dies
            # mid-append, an entry it lost is sent again before any later one
            # (pipelined across turns, the later ones could be stored first:
            # found by the nemesis). Usually the acknowledgements are in by now.
            await self.logged()
        # The log entries go first: an event that reached the server was
        # preceded by its entry on the same connection.
        sent = await self._store.send_log(turn.log, self._log_last) if turn.log else None
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
        if sent is not None:
            # The log is for operators, webhooks and a new owner reading back
            # mute changes; no client waits for its acknowledgements (only
            # the room's next turn that logs, if they are not in by then).
            self._confirm(sent, [e for e in turn.events if not isinstance(e, Broadcasted)])

    def _confirm(self, sent: LogBatch, events: list[Event]) -> None:
        """Wait for the log's acknowledgements of ``sent`` after those sent
        before (one task per room, so a resend keeps the room's order)."""
        self._unlogged.append((sent, events))
        self._unlogged_entries += len(sent.entries)
        if self._confirming is None:
            self._confirming = asyncio.create_task(self._confirm_all())

    async def _confirm_all(self) -> None:
        try:
            while self._unlogged:
                sent, _ = self._unlogged[0]
                if not await self._until_ours():  # the new actor appends the saved outbox
                    self._unlogged.clear()
                    self._unlogged_entries = 0
                    self._log_last = None
                    break
                try:
                    self._log_last = await self._store.confirm_log(sent, owned=self._ours)
                except Fenced:  # the lease lapsed meanwhile: wait again
                    self._log_last = None
                    continue
                except Exception:
                    log.exception("event log append failed", extra={"room_id": self.room_id})
                    self._log_last = None
                self._unlogged.popleft()
                self._unlogged_entries -= len(sent.entries)
        finally:
            self._confirming = None

    async def _until_ours(self) -> bool:
        """Whether the room's unconfirmed entries are still this actor's to
        append: it waits while the worker's lease has lapsed (the bus is down
        a while) and the room is not yet let go. False once the worker has let
        the actor go: whoever owns the room next appends the entries from the
        outbox of the last save. (Found by the nemesis: a lapse that ended
        with the lease kept left the entries to a new owner that never came,
        so the log missed a leave and a join.)"""
        while not self._ours():
            if self._retired:
                log.info(
                    "the room was let go: its unconfirmed log entries are its next owner's",
                    extra={"room_id": self.room_id},
                )
                return False
            await asyncio.sleep(LAPSE_POLL)
        return True

    async def logged(self) -> None:
        """Wait until the log confirmed every entry sent so far."""
        while (task := self._confirming) is not None:
            await asyncio.shield(task)

    def _unconfirmed(self) -> list[Event]:
        """The events whose log entries are not confirmed yet, oldest first."""
        return [event for _, events in self._unlogged for event in events]

    def _fold(self, batch: list[_Pending]) -> _Turn:
        """Decide each message in turn, each on the state the previous one left."""
        now = clock.now()
        turn = _Turn(self._state)
        applied, applied_ids = self._applied, self._applied_ids
        arrived = batch[0].arrived
        while applied and (applied[0][0] < arrived - APPLIED_SECONDS or len(applied) > APPLIED_MAX):
            applied_ids.discard(applied.popleft()[1])
        for pending in batch:
            message = pending.message
            decision = decide(turn.state, message, now, self._limits, applied_ids)
            cmd_id: str | None = getattr(message, "cmd_id", None)
            if decision.state is not turn.state and cmd_id is not None:
                turn.applied.append((pending.arrived, cmd_id))
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
            outbox = [*self._unconfirmed(), *turn.events]
            saving = replace(turn.closed, outbox=outbox, closed=True, saved_at=time.time())
        elif state is not None and (turn.write or (turn.log and self._unsaved + 1 >= UNSAVED_MAX)):
            # The transactional outbox: a worker that saves and dies before
            # publishing (or before the log confirmed) leaves the events in
            # the state for the next owner.
            outbox = [*self._unconfirmed(), *turn.events]
            if outbox or state.outbox:
                state = replace(state, outbox=outbox)
            state = saving = replace(state, log_seq=self._store.log_seq, saved_at=time.time())
        else:
            if state is not None and turn.log:
                # A mute change numbered from the reservation: saved later.
                self._unsaved += 1
                self._schedule_flush()
            return state
        if not self._ours():
            # Our lease lapsed (we were paused or cut off): another worker may
            # own the room now. Write nothing; the edge retries elsewhere.
            raise Fenced(self.room_id)
        self._revision = await self._store.save(saving, self._revision)
        self._saved()
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
        if not (turn.write or turn.meta or turn.closed is not None):
            return  # reads and changes numbered from the reservation: same occupancy
        now = activity(state) if state is not None and turn.closed is None else None
        if now != self._indexed or (turn.meta and now is not None):
            # Written when the room starts or stops needing a takeover's
            # attention (not per join), and refreshed with the metadata.
            if now is not None or self._indexed is not UNKNOWN:
                await self._store.index_room(self.room_id, now)
            self._indexed = now

    async def _load(self) -> None:
        loaded, self._preloaded = self._preloaded, None
        if loaded is None:
            loaded = await self._read(self.room_id)
        stored = loaded.state
        changes = []
        if stored is not None and stored.seq < stored.seq_reserved and stored.participants:
            # The previous owner may have changed mute states after its last
            # save (numbered from the reservation): their entries are in the log.
            changes = await self._store.track_changes(self.room_id, stored)
        state = resumed(with_track_changes(stored, changes)) if stored is not None else None
        if changes:
            # Catch-up cannot skip numbers that may hold a mute change.
            self._skipped = None
            self._unsaved = len(changes)
            self._schedule_flush()
        elif stored is not None and state is not None and state.seq != stored.seq:
            # Only broadcasts can hide between the save and the reservation:
            # an edge that has every saved event may skip them.
            self._skipped = (stored.seq, state.seq)
        self._state, self._revision, self._loaded = state, loaded.revision, True
        if loaded.state is not None and loaded.state.outbox and _replayable(loaded.state):
            # The last turn's events may never have gone out (the previous
            # owner died between its save and its publish). Edges drop the
            # ones they already have: they apply events by sequence number.
            await self._publish(loaded.state.outbox)
            replayed = entries(loaded.state.outbox, clock.now().iso)
            if replayed:
                self._log_last = await self._store.append_log(list(replayed), self._log_last)
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


class _Unknown:
    """Not known yet: the actor has not written or read the entry."""


UNKNOWN = _Unknown()


def activity(state: RoomState) -> RoomActivity | None:
    """The room's entry in ``active_rooms``: someone is in it, or it closes at
    a set time (``None``: a takeover need not load it)."""
    occupied = bool(state.participants)
    if not occupied and state.close_at is None and not state.closed:
        return None
    return RoomActivity(room_id=state.room_id, occupied=occupied, close_at=state.close_at)


def _replayable(state: RoomState) -> bool:
    """The state was saved recently enough for its outbox to be replayed (or
    by a version that did not date its saves)."""
    return not state.saved_at or time.time() - state.saved_at < OUTBOX_REPLAY_SECONDS


def _frame_size(message: Command | Internal) -> int:
    frame = getattr(message, "frame", None)
    return len(frame) if frame is not None else 0
