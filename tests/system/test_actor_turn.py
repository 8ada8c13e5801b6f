"""room_actors.actor.RoomActor's turn against a real nats-server (its KV
buckets and event log, as a worker creates them): a batch is saved once (group
commit) before anything goes out, a lost compare-and-set or a lapsed lease
fences the turn (nothing written, nothing published, every request told to
retry), and an outbox left by an owner that died is published again on load.

Everything the actor does lands in one `Timeline` (the real store and the real
connection, each call recorded as it goes through), so "before" is checked
as the order in which it happened."""

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.errors import ConnectionReconnectingError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from bus_schema import buckets, codec, subjects
from bus_schema.commands import (
    Ack,
    Broadcast,
    Command,
    GetSnapshot,
    Join,
    Rejected,
    Reply,
    SetTrackState,
    Snapshot,
)
from bus_schema.errors import ErrorCode
from bus_schema.events import (
    Broadcasted,
    Event,
    ParticipantJoined,
    ParticipantLeft,
    RoomClosed,
    TrackStateChanged,
)
from bus_schema.log import LOG_STREAM, LogEntry, log_entry
from bus_schema.state import CallsSession, RoomMeta, RoomState
from room_actors import actor as actor_module
from room_actors.actor import RETRY, RoomActor
from room_actors.state import SEQ_BLOCK, Limits, decide
from room_actors.store import (
    Fenced,
    Loaded,
    LogBatch,
    RoomStore,
    ensure_buckets,
    ensure_log_stream,
)
from tests.harness import System
from tests.unit.test_state import ANN, BEN, LIMITS, NOW, ROOM, create_command, created, join
from tests.waiting import eventually

Step = tuple[str, Any]


class Timeline(list[Step]):
    def index_of(self, kind: str) -> list[int]:
        return [i for i, (k, _) in enumerate(self) if k == kind]

    def of(self, kind: str) -> list[Any]:
        return [what for k, what in self if k == kind]


class RecordingStore(RoomStore):
    """The real store on the real buckets, each call recorded in the timeline."""

    def __init__(self, timeline: Timeline, real: RoomStore, kv: KeyValue) -> None:
        super().__init__(real._state, real._rooms, real._calls, real._js, real._active)
        self.timeline = timeline
        self.kv = kv
        self.loads = 0
        self.failing: Exception | None = None

    async def stored(self) -> RoomState | None:
        """The room as it is in KV now (read without counting as a load)."""
        return (await super().load(ROOM)).state

    async def write_behind(self, state: RoomState) -> None:
        """Another writer (a new owner) saves the room."""
        await self.kv.put(buckets.room_key(state.room_id), codec.encode(state))

    async def load(self, room_id: str) -> Loaded:
        self.loads += 1
        return await super().load(room_id)

    async def save(self, state: RoomState, revision: int | None) -> int:
        if self.failing is not None:
            raise self.failing
        try:
            saved = await super().save(state, revision)
        except Fenced:
            self.timeline.append(("fenced", state.seq))
            raise
        self.timeline.append(("save", state))
        return saved

    async def delete(self, room_id: str, revision: int | None) -> int | None:
        deleted = await super().delete(room_id, revision)
        self.timeline.append(("delete", room_id))
        return deleted

    async def publish_meta(self, meta: RoomMeta) -> None:
        await super().publish_meta(meta)
        self.timeline.append(("meta", meta.name))

    async def publish_calls_session(self, session: CallsSession) -> None:
        await super().publish_calls_session(session)
        self.timeline.append(("session", session.session_id))

    async def forget_calls_session(self, session_id: str) -> None:
        await super().forget_calls_session(session_id)
        self.timeline.append(("forget", session_id))

    async def send_log(self, entries: list[LogEntry], after: int | None) -> LogBatch:
        sent = await super().send_log(entries, after)
        self.timeline.append(("log", [e.room_seq for e in entries]))
        return sent

    async def confirm_log(
        self, batch: LogBatch, *, owned: Callable[[], bool] = lambda: True
    ) -> int | None:
        last = await super().confirm_log(batch, owned=owned)
        self.timeline.append(("logged", [e.room_seq for e in batch.entries]))
        return last


class RecordingNats:
    """The real connection: what the actor publishes is recorded, then sent."""

    def __init__(self, timeline: Timeline, nc: NatsClient) -> None:
        self.timeline = timeline
        self.nc = nc

    async def publish(self, subject: str, payload: bytes) -> None:
        if subject == subjects.room_events(ROOM):
            self.timeline.append(("publish", codec.events.decode(payload)))
        else:
            self.timeline.append(("control", subject))
        await self.nc.publish(subject, payload)


@dataclass
class Request:
    """A command's NATS message: its answer goes to the timeline."""

    timeline: Timeline
    reply: str = "_INBOX.test"

    async def respond(self, data: bytes) -> None:
        self.timeline.append(("answer", codec.replies.decode(data)))


@dataclass
class Room:
    """One actor, its store, and what it did."""

    timeline: Timeline
    store: RecordingStore
    actor: RoomActor
    lease: list[bool] = field(default_factory=list)
    """What the next ownership checks answer (then: owned)."""
    fenced: list[str] = field(default_factory=list)

    def submit(self, *commands: Command) -> None:
        for command in commands:
            self.actor.submit(command, Request(self.timeline))  # type: ignore[arg-type]

    async def turn(self, *commands: Command) -> list[Reply]:
        """Submit ``commands`` at once (one mailbox, so one batch) and wait
        until the actor is idle and the log confirmed what it sent; the answers
        it gave meanwhile."""
        start = len(self.timeline)
        self.submit(*commands)
        await asyncio.wait_for(self.actor.wait_idle(), 5)
        await asyncio.wait_for(self.actor.logged(), 5)  # the log's acknowledgements too
        return [what for kind, what in self.timeline[start:] if kind == "answer"]

    def published(self) -> list[Event]:
        return self.timeline.of("publish")

    def saved(self) -> list[RoomState]:
        return self.timeline.of("save")


async def make_room(
    nats: tuple[NatsClient, RoomStore, KeyValue],
    state: RoomState | None = None,
    *,
    take_over: bool = False,
    limits: Limits = LIMITS,
) -> Room:
    """An actor for ``ROOM`` on the real buckets, the room stored as ``state``
    (and nothing of it in the event log); or, ``take_over``, a new owner of
    the room as a previous actor left it."""
    nc, real, kv = nats
    if not take_over:
        with contextlib.suppress(Exception):
            await kv.purge(buckets.room_key(ROOM))
        room_log = subjects.log_event(ROOM, "x").rsplit(".", 1)[0] + ".>"
        await nc.jetstream().purge_stream(LOG_STREAM, subject=room_log)
    timeline = Timeline()
    store = RecordingStore(timeline, real, kv)
    if state is not None:
        await store.write_behind(state)
    lease: list[bool] = []
    fenced: list[str] = []

    def owns() -> bool:
        return lease.pop(0) if lease else True

    client: Any = RecordingNats(timeline, nc)
    actor = RoomActor(
        ROOM,
        nc=client,
        store=store,
        limits=limits,
        owns=owns,
        on_fenced=fenced.append,
        on_cleanup=lambda cleanup: timeline.append(("cleanup", cleanup)),
    )
    return Room(timeline, store, actor, lease, fenced)


@contextlib.asynccontextmanager
async def serving(path: Path) -> AsyncIterator[tuple[NatsClient, RoomStore, KeyValue]]:
    """A nats-server alone, with the buckets and the event log a worker makes."""
    system = System(path)
    try:
        system.start_nats()
        nc = await system.connect()
        js = nc.jetstream()
        await ensure_buckets(js, ttl=3600, replicas=1, max_bytes=64 * 1024 * 1024)
        await ensure_log_stream(js, max_age=3600, max_bytes=64 * 1024 * 1024, replicas=1)
        store = await RoomStore.bind(nc, js)
        yield nc, store, await js.key_value(buckets.ROOM_STATE)
        await nc.close()
    finally:
        system.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def nats(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[NatsClient, RoomStore, KeyValue]]:
    async with serving(tmp_path_factory.mktemp("actor-turn")) as served:
        yield served


@pytest_asyncio.fixture(loop_scope="session")
async def room(nats: tuple[NatsClient, RoomStore, KeyValue]) -> AsyncIterator[Room]:
    made = await make_room(nats)
    try:
        yield made
    finally:
        made.actor.cancel_timers()


def joining(who: str, cmd_id: str) -> Join:
    return Join(
        cmd_id=cmd_id, room_id=ROOM, participant_id=who, name=who[:3], edge_id="e1", conn_id="c"
    )


def broadcast(n: int) -> Broadcast:
    frame = msgspec.Raw(b'{"type":"chat","n":%d}' % n)
    return Broadcast(cmd_id=f"b{n}", room_id=ROOM, participant_id=ANN, conn_id="c", frame=frame)


def toggle(n: int, kind: str, enabled: bool) -> SetTrackState:
    frame = msgspec.Raw(b'{"type":"track-state","kind":"%s"}' % kind.encode())
    return SetTrackState(
        cmd_id=f"t{n}",
        room_id=ROOM,
        participant_id=ANN,
        conn_id="c",
        frame=frame,
        kind=kind,
        enabled=enabled,
    )


def seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events]


def before(timeline: Timeline, first: str, then: Callable[[str], bool]) -> bool:
    """Every step of kind ``first`` comes before every step whose kind ``then`` picks."""
    firsts = timeline.index_of(first)
    thens = [i for i, (kind, _) in enumerate(timeline) if then(kind)]
    return bool(firsts) and (not thens or max(firsts) < min(thens))


async def test_a_batch_is_saved_once_before_anything_goes_out(room: Room) -> None:
    answers = await room.turn(
        create_command(),
        joining(ANN, "j1"),
        joining(BEN, "j2"),
        GetSnapshot(cmd_id="g1", room_id=ROOM),
    )
    # One write for the four commands: the group commit, its events as the outbox.
    [saved] = room.saved()
    assert sorted(saved.participants) == sorted([ANN, BEN])
    assert seqs(saved.outbox) == [1, 2]
    assert abs(saved.saved_at - time.time()) < 60  # dated: the outbox is replayed while recent
    assert [type(e) for e in saved.outbox] == [ParticipantJoined, ParticipantJoined]
    assert room.store.loads == 1
    # Then, and only then, the projections, the log entries on their way, the
    # events in order, the answers, and last the log's acknowledgements, which
    # no client waits for.
    await room.actor.settle()
    assert before(room.timeline, "save", lambda kind: kind != "save")
    assert seqs(room.published()) == [1, 2]
    assert room.timeline.of("meta") == ["r"]
    assert room.timeline.of("log") == [[0, 1, 2]]
    assert room.timeline.of("logged") == [[0, 1, 2]]
    assert before(room.timeline, "log", lambda kind: kind == "publish")
    assert max(room.timeline.index_of("publish")) < min(room.timeline.index_of("answer"))
    assert max(room.timeline.index_of("answer")) < min(room.timeline.index_of("logged"))
    assert answers[0] == Ack(seq=0)
    assert [type(a) for a in answers[1:]] == [Snapshot, Snapshot, Snapshot]
    assert [a.seq for a in answers[1:]] == [1, 2, 2]  # type: ignore[union-attr]


async def test_broadcasts_within_the_reservation_are_published_without_a_write(
    room: Room,
) -> None:
    await room.turn(create_command(), joining(ANN, "j1"))
    # The first broadcast reserves the next numbers (one write) ...
    assert await room.turn(broadcast(0)) == [Ack(seq=2)]
    [_, reserved] = room.saved()
    assert reserved.seq_reserved == 2 + SEQ_BLOCK
    # ... the next ones are numbered from it and go out with no write at all.
    answers = await room.turn(*(broadcast(n) for n in range(1, 5)))
    assert len(room.saved()) == 2
    assert answers == [Ack(seq=n) for n in range(3, 7)]
    relayed = room.published()[1:]
    assert [type(e) for e in relayed] == [Broadcasted] * 5
    assert seqs(relayed) == [2, 3, 4, 5, 6]


async def test_a_lost_compare_and_set_fences_the_turn(room: Room) -> None:
    """Another worker saved the room after this one loaded it: the write
    fails, nothing of the turn is published, every request is told to retry,
    the room is dropped; the next command loads the other's state."""
    await room.turn(create_command())
    theirs = join(created(), BEN, "other-owner")
    await room.store.write_behind(theirs)
    start = len(room.timeline)

    answers = await room.turn(joining(ANN, "j1"), GetSnapshot(cmd_id="g1", room_id=ROOM))
    assert answers == [RETRY, RETRY]
    assert (RETRY.retryable, RETRY.code) == (True, ErrorCode.NOT_OWNER)
    assert [kind for kind, _ in room.timeline[start:]] == ["fenced", "answer", "answer"]
    assert room.fenced == [ROOM]
    assert room.actor.state is None
    assert await room.store.stored() == theirs  # untouched

    answers = await room.turn(joining(ANN, "j1"))
    assert room.store.loads == 2  # loaded again, from the other's write
    [snapshot] = answers
    assert isinstance(snapshot, Snapshot)
    assert sorted(p.id for p in snapshot.participants) == sorted([ANN, BEN])
    now = await room.store.stored()
    assert now is not None
    assert now.seq == 2


async def test_a_lapsed_lease_writes_nothing(room: Room) -> None:
    """The lease lapsed while the turn was being decided (the worker was
    paused): the save is not attempted at all."""
    await room.turn(create_command())
    room.lease[:] = [True, False]  # owned when the turn starts, not at the save
    start = len(room.timeline)
    answers = await room.turn(joining(ANN, "j1"))
    assert answers == [RETRY]
    assert [kind for kind, _ in room.timeline[start:]] == ["answer"]
    assert len(room.saved()) == 1
    assert room.fenced == [ROOM]
    assert room.actor.state is None

    room.lease[:] = [False]  # not owned at all: not even loaded
    loads = room.store.loads
    assert await room.turn(joining(ANN, "j2")) == [RETRY]
    assert room.store.loads == loads
    assert room.fenced == [ROOM, ROOM]


async def test_a_failed_save_drops_the_state_and_answers_retry(room: Room) -> None:
    await room.turn(create_command())
    room.store.failing = TimeoutError()
    assert await room.turn(joining(ANN, "j1")) == [RETRY]
    assert room.published() == []
    assert room.fenced == []  # not another owner: just a failed turn
    room.store.failing = None
    [snapshot] = await room.turn(joining(ANN, "j1"))
    assert isinstance(snapshot, Snapshot)
    assert room.store.loads == 2


@pytest.mark.parametrize("saved_ago", [None, 1.0], ids=["undated", "just-saved"])
async def test_an_outbox_left_by_a_dead_owner_goes_out_on_load(
    nats: tuple[NatsClient, RoomStore, KeyValue], saved_ago: float | None
) -> None:
    """The previous owner saved a turn and died before publishing it: the
    new owner publishes those events (and logs them) before its first turn."""
    first = decide(created(), joining(ANN, "j1"), NOW, LIMITS)
    assert first.state is not None
    second = decide(first.state, joining(BEN, "j2"), NOW, LIMITS)
    assert second.state is not None
    stored = msgspec.structs.replace(
        second.state,
        outbox=[*first.events, *second.events],
        seq_reserved=second.state.seq + 40,
        saved_at=0.0 if saved_ago is None else time.time() - saved_ago,
    )
    room = await make_room(nats, stored)
    try:
        [snapshot] = await room.turn(GetSnapshot(cmd_id="g1", room_id=ROOM))
        assert seqs(room.published()) == [1, 2]
        assert room.timeline.of("log") == [[1, 2]]
        assert before(room.timeline, "publish", lambda kind: kind == "answer")
        assert isinstance(snapshot, Snapshot)
        # Numbering goes on after the reservation the dead owner may have used.
        assert snapshot.seq == stored.seq_reserved
    finally:
        room.actor.cancel_timers()


async def test_an_outbox_saved_long_ago_is_not_replayed(
    nats: tuple[NatsClient, RoomStore, KeyValue],
) -> None:
    """An owner that lived on after its save published those events and had
    the log confirm them long ago. Replayed, their entries would be stored in
    the log a second time once it no longer recognises repeats."""
    first = decide(created(), joining(ANN, "j1"), NOW, LIMITS)
    assert first.state is not None
    saved_at = time.time() - actor_module.OUTBOX_REPLAY_SECONDS - 1
    stored = msgspec.structs.replace(first.state, outbox=first.events, saved_at=saved_at)
    room = await make_room(nats, stored)
    try:
        [snapshot] = await room.turn(GetSnapshot(cmd_id="g1", room_id=ROOM))
        assert room.published() == []
        assert room.timeline.of("log") == []
        assert isinstance(snapshot, Snapshot)
        assert [p.id for p in snapshot.participants] == [ANN]
    finally:
        room.actor.cancel_timers()


async def test_a_close_cut_short_is_finished_on_load(
    nats: tuple[NatsClient, RoomStore, KeyValue],
) -> None:
    """The previous owner saved the close with its events and died before
    deleting the room: the new owner publishes them, then deletes it."""
    state = join(created(), ANN, "j1")
    left = ParticipantLeft(room_id=ROOM, seq=state.seq + 1, participant_id=ANN, reason="closed")
    closed = RoomClosed(room_id=ROOM, seq=state.seq + 2, participant_id="", reason="admin")
    stored = msgspec.structs.replace(
        state, seq=closed.seq, outbox=[left, closed], closed=True, close_reason="admin"
    )
    room = await make_room(nats, stored)
    [reply] = await room.turn(GetSnapshot(cmd_id="g1", room_id=ROOM))
    assert seqs(room.published()) == [left.seq, closed.seq]
    assert before(room.timeline, "publish", lambda kind: kind == "delete")
    assert await room.store.stored() is None
    assert isinstance(reply, Rejected)
    assert reply.code == ErrorCode.ROOM_NOT_FOUND


async def test_a_room_read_by_a_takeover_is_not_read_again(
    nats: tuple[NatsClient, RoomStore, KeyValue],
) -> None:
    """A takeover reads the partition's rooms (many at a time) and starts each
    active room's actor from what it read: one read per room, not two. The
    outbox left by the previous owner still goes out."""
    left = join(join(created(), ANN, "j1"), BEN, "j2")
    pending = ParticipantLeft(room_id=ROOM, seq=left.seq + 1, participant_id=BEN, reason="closed")
    stored = msgspec.structs.replace(left, outbox=[pending])
    room = await make_room(nats, stored)
    try:
        room.actor.activate(await room.store.load(ROOM))
        await room.actor.wait_idle()
        assert room.store.loads == 1
        assert seqs(room.published()) == [pending.seq]
        assert room.actor.state is not None
        assert sorted(room.actor.state.participants) == sorted([ANN, BEN])
    finally:
        room.actor.cancel_timers()


# --- mute changes: numbered from the reservation, saved later, read back ------------

TOGGLES = [("audio", False), ("video", True), ("audio", True), ("audio", False)]
"""Ann ends with audio off and video on."""


async def talking_room(
    nats: tuple[NatsClient, RoomStore, KeyValue], save_delay: float = 60.0
) -> Room:
    """Ann and Ben in the room, numbers reserved by a first broadcast; mute
    changes saved after ``save_delay`` seconds (by default: not within a test)."""
    limits = dataclasses.replace(LIMITS, mute_save_delay=save_delay)
    room = await make_room(nats, limits=limits)
    await room.turn(create_command(), joining(ANN, "j1"), joining(BEN, "j2"))
    await room.turn(broadcast(0))
    return room


async def test_mute_changes_go_out_without_a_write_and_a_new_owner_reads_them_back(
    nats: tuple[NatsClient, RoomStore, KeyValue],
) -> None:
    room = await talking_room(nats)
    first = new = None
    try:
        [*_, saved] = room.saved()
        answers = [(await room.turn(toggle(n, *t)))[0] for n, t in enumerate(TOGGLES)]
        assert answers == [Ack(seq=saved.seq + 1 + n) for n in range(len(TOGGLES))]
        # Four events, four log entries each sent before its event, no write.
        assert len(room.saved()) == 2
        changes = [e for e in room.published() if isinstance(e, TrackStateChanged)]
        assert [(e.kind, e.enabled) for e in changes] == TOGGLES
        steps = [kind for kind, _ in room.timeline if kind in ("log", "publish")]
        assert steps[-2 * len(TOGGLES) :] == ["log", "publish"] * len(TOGGLES)
        await room.actor.logged()

        # The owner dies without saving: a new one reads the changes back from
        # the log, and shows a newcomer the state its events already told.
        first = room
        new = await make_room(nats, take_over=True)
        [snapshot] = await new.turn(GetSnapshot(cmd_id="g1", room_id=ROOM))
        assert isinstance(snapshot, Snapshot)
        ann = next(p for p in snapshot.participants if p.id == ANN)
        assert (ann.audio, ann.video) == (False, True)
        assert snapshot.seq == saved.seq_reserved
        # An edge that saw every saved event may not skip the numbers that
        # held mute changes: it is given the room afresh.
        [again] = await new.turn(GetSnapshot(cmd_id="g2", room_id=ROOM, since=saved.seq))
        assert isinstance(again, Snapshot)
    finally:
        for made in (first, new, room):
            if made is not None:
                made.actor.cancel_timers()


async def test_mute_changes_are_saved_within_a_moment(
    nats: tuple[NatsClient, RoomStore, KeyValue],
) -> None:
    room = await talking_room(nats, save_delay=0.05)
    try:
        await room.turn(toggle(0, "audio", False))

        def flushed() -> bool:
            [*_, last] = room.saved()
            return last.participants[ANN].audio is False

        await eventually(flushed, timeout=5, message="the mute change was never saved")
        assert len(room.saved()) == 3
    finally:
        room.actor.cancel_timers()


async def test_many_mute_changes_are_saved_at_once(
    nats: tuple[NatsClient, RoomStore, KeyValue], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(actor_module, "UNSAVED_MAX", 3)
    room = await talking_room(nats)
    try:
        for n, t in enumerate(TOGGLES[:2]):
            await room.turn(toggle(n, *t))
        assert len(room.saved()) == 2
        await room.turn(toggle(2, *TOGGLES[2]))  # the third: saved with its turn
        [*_, last] = room.saved()
        assert len(room.saved()) == 3
        assert (last.participants[ANN].audio, last.participants[ANN].video) == (True, True)
    finally:
        room.actor.cancel_timers()


async def test_a_handover_saves_the_mute_changes_and_waits_for_the_log(
    nats: tuple[NatsClient, RoomStore, KeyValue],
) -> None:
    room = await talking_room(nats)
    try:
        await room.turn(toggle(0, "video", False))
        await room.actor.settle()
        stored = await room.store.stored()
        assert stored is not None
        assert stored.participants[ANN].video is False
        assert stored.outbox == []  # every entry confirmed: nothing left to replay
        assert room.timeline.index_of("logged")
    finally:
        room.actor.cancel_timers()


async def test_a_retry_older_than_the_states_memory_is_not_applied_twice(room: Room) -> None:
    """An edge retries a relayed message whose event was stuck behind a busy
    room: the state remembers only its last command ids, the actor the ones of
    the last seconds, so the retry is answered, not applied again."""
    await room.turn(create_command(), joining(ANN, "j1"))
    count = LIMITS.recent_commands + 6
    await room.turn(*(broadcast(n) for n in range(count)))
    assert room.actor.state is not None
    assert "b0" not in room.actor.state.recent_commands
    published = len(room.published())
    [answer] = await room.turn(broadcast(0))
    assert isinstance(answer, Ack)
    assert len(room.published()) == published  # no second event


class Unsendable:
    """The store's JetStream context, whose next async publishes fail as when
    the connection is down, and whose next (awaited) publishes time out; it
    records the order in which entries reach the server (the stream's order;
    the stream itself would drop them as repeats of the module's other tests)."""

    def __init__(self, js: Any, *, unsent: int = 0, timeouts: int = 0, lost: int = 0) -> None:
        self.js = js
        self.unsent = unsent
        self.timeouts = timeouts
        self.lost = lost
        """Async publishes that go out and are lost (a leader died): no ack."""
        self.reached: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.js, name)

    async def publish_async(self, subject: str, payload: bytes, **kwargs: Any) -> Any:
        if self.unsent:
            self.unsent -= 1
            raise ConnectionReconnectingError
        if self.lost:
            self.lost -= 1
            return asyncio.get_running_loop().create_future()  # never acknowledged
        self.reached.append(log_entry.decode(payload).room_seq)
        return await self.js.publish_async(subject, payload, **kwargs)

    async def publish(self, subject: str, payload: bytes, **kwargs: Any) -> Any:
        if self.timeouts:
            self.timeouts -= 1
            raise NatsTimeoutError
        self.reached.append(log_entry.decode(payload).room_seq)
        return await self.js.publish(subject, payload, **kwargs)


async def toggles_reaching_the_log(
    nats: tuple[NatsClient, RoomStore, KeyValue], **failures: int
) -> list[int]:
    """The `TOGGLES`, one turn each, through a store whose JetStream context
    fails as ``failures`` say (see `Unsendable`); the order in which their
    entries reached the server."""
    room = await talking_room(nats)
    real = room.store._js
    try:
        unsendable = Unsendable(real, **failures)
        room.store._js = unsendable  # type: ignore[assignment]
        for n, t in enumerate(TOGGLES):
            room.submit(toggle(n, *t))
            await asyncio.wait_for(room.actor.wait_idle(), 10)
        await asyncio.wait_for(room.actor.logged(), 10)
        return unsendable.reached
    finally:
        room.store._js = real
        room.actor.cancel_timers()


async def test_an_entry_that_could_not_be_sent_keeps_its_place_in_the_log(
    nats: tuple[NatsClient, RoomStore, KeyValue],
) -> None:
    """Found by the nemesis: an entry sent while the connection was down was
    sent again after the next turns' entries, which had gone out meanwhile, so
    the log (and the webhooks) had the room's events out of order. The next
    turns' entries now wait behind it."""
    reached = await toggles_reaching_the_log(nats, unsent=1, timeouts=2)
    assert len(reached) == len(set(reached)) == len(TOGGLES)
    assert reached == sorted(reached)


async def test_an_entry_a_dying_leader_lost_is_stored_before_the_next_turns(
    nats: tuple[NatsClient, RoomStore, KeyValue],
) -> None:
    """Found by the nemesis: an entry went out, a stream leader died with it
    (no acknowledgement), and the next turns' entries, sent meanwhile, were
    stored by the new leader before the lost one was sent again. A room now
    has one turn's entries in flight at a time."""
    reached = await toggles_reaching_the_log(nats, lost=1)
    assert len(reached) == len(set(reached)) == len(TOGGLES)
    assert reached == sorted(reached)


async def test_an_owner_that_lost_the_room_sends_no_late_log_entry(
    nats: tuple[NatsClient, RoomStore, KeyValue],
) -> None:
    """Found by the nemesis: a worker paused past its lease woke up and sent
    its unacknowledged entries again, after the new owner's. Once the room is
    no longer its own (its lease lapsed, and the worker let the actor go), an
    entry is not sent again (the new owner appends a recent save's entries
    from its outbox)."""
    room = await talking_room(nats)
    real = room.store._js
    try:
        unsendable = Unsendable(real, lost=1)
        room.store._js = unsendable  # type: ignore[assignment]
        room.lease[:] = [True] + [False] * 20  # the turn is ours; then the lease lapses
        room.submit(toggle(0, "audio", False))
        await asyncio.wait_for(room.actor.wait_idle(), 5)
        room.actor.retire()  # the partition is lost: the worker lets the actor go
        await asyncio.wait_for(room.actor.logged(), 5)  # no 20 s of retries
        assert unsendable.reached == []
    finally:
        room.store._js = real
        room.actor.cancel_timers()


async def test_entries_wait_out_a_lapse_of_the_lease_that_ends_with_the_room_still_ours(
    tmp_path: Path,
) -> None:
    """Found by the nemesis: a node's death stalled JetStream for longer than
    the lease, so the worker's lease lapsed while an entry was unconfirmed;
    the actor left it to a new owner. But the lease was kept (the server had
    not expired it either), no new owner came, and the log never had the
    room's leave and join. Entries wait while the lease has lapsed and are
    appended once it is back."""
    async with serving(tmp_path) as nats:  # the log's repeat detection holds no other test's ids
        room = await talking_room(nats)
        real = room.store._js
        try:
            unsendable = Unsendable(real, lost=1)
            room.store._js = unsendable  # type: ignore[assignment]
            room.lease[:] = [True] + [False] * 6  # the turn is ours; a lapse; then ours again
            room.submit(toggle(0, "audio", False))
            await asyncio.wait_for(room.actor.wait_idle(), 5)
            await asyncio.wait_for(room.actor.logged(), 10)
            assert room.lease == []  # the lapse was waited out
            [*_, last] = await room_log(nats[0])
            assert (last.event, last.room_seq) == ("track_state_changed", room.published()[-1].seq)
        finally:
            room.store._js = real
            room.actor.cancel_timers()


class Holding:
    """The store's JetStream context behind a network that holds what is
    sent: each publish is kept (to be let through later), never acknowledged;
    once ``holding`` is turned off, awaited publishes go through."""

    def __init__(self, js: Any) -> None:
        self.js = js
        self.held: list[tuple[str, bytes, dict[str, str]]] = []
        self.holding = True
        self.passed: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.js, name)

    async def publish_async(self, subject: str, payload: bytes, **kwargs: Any) -> Any:
        self.held.append((subject, payload, kwargs["headers"]))
        return asyncio.get_running_loop().create_future()

    async def publish(self, subject: str, payload: bytes, **kwargs: Any) -> Any:
        if not self.holding:
            self.passed.append(log_entry.decode(payload).id)
            return await self.js.publish(subject, payload, **kwargs)
        self.held.append((subject, payload, kwargs["headers"]))
        raise NatsTimeoutError


async def room_log(nc: NatsClient) -> list[LogEntry]:
    """The room's entries in the event log, in the stream's order."""
    js, found, cursor = nc.jetstream(), [], 1
    while True:
        try:
            message = await js.get_msg(
                LOG_STREAM, seq=cursor, subject=subjects.log_room(ROOM), next=True
            )
        except NotFoundError:
            return found
        assert message.data is not None
        assert message.seq is not None
        found.append(log_entry.decode(message.data))
        cursor = message.seq + 1


async def test_an_entry_a_fenced_owner_sent_is_refused_after_the_new_owners(
    tmp_path: Path,
) -> None:
    """Found by the nemesis: bytes a fenced owner had sent, held by the
    network (a worker cut off or paused past its lease), reached the stream
    after the new owner's entries, so the log (and the webhooks) had the room's
    events out of order. Each entry now expects the room's last entry to be
    the one before it; the new owner's first entry moves it."""
    async with serving(tmp_path) as nats:  # the log's repeat detection holds no other test's ids
        old = await talking_room(nats)
        new = None
        try:
            holding = Holding(old.store._js)
            old.store._js = holding  # type: ignore[assignment]
            old.lease[:] = [True] + [False] * 20  # the turn is ours; then the lease lapses
            old.submit(toggle(0, "audio", False))
            await asyncio.wait_for(old.actor.wait_idle(), 5)
            old.actor.retire()  # the partition moves: the worker lets the actor go
            await asyncio.wait_for(old.actor.logged(), 5)
            [(subject, payload, headers)] = holding.held
            late = log_entry.decode(payload)

            new = await make_room(nats, take_over=True)
            await new.turn(toggle(1, "video", False))
            [*_, ours] = await room_log(nats[0])
            assert ours.room_seq > late.room_seq

            # The network lets the old owner's entry through at last.
            with pytest.raises(BadRequestError) as refused:
                await nats[0].jetstream().publish(subject, payload, headers=headers)
            assert refused.value.err_code == 10071  # wrong last sequence
            stored = await room_log(nats[0])
            assert late.id not in {e.id for e in stored}
            assert [e.room_seq for e in stored] == sorted(e.room_seq for e in stored)
        finally:
            for made in (old, new):
                if made is not None:
                    made.actor.cancel_timers()


async def old_owner_with_an_entry_in_flight(
    nats: tuple[NatsClient, RoomStore, KeyValue],
) -> tuple[Room, Holding, LogEntry]:
    """A room whose owner's last mute change is held by the network (sent
    again and again, never acknowledged), and a new owner that has taken the
    room and logged a mute change of its own meanwhile."""
    old = await talking_room(nats)
    holding = Holding(old.store._js)
    old.store._js = holding  # type: ignore[assignment]
    old.submit(toggle(0, "audio", False))
    await asyncio.wait_for(old.actor.wait_idle(), 5)
    late = log_entry.decode(holding.held[0][1])
    new = await make_room(nats, take_over=True)
    await new.turn(toggle(1, "video", False))
    new.actor.cancel_timers()
    return old, holding, late


async def test_an_entry_older_than_the_rooms_last_is_left_out_whoever_sends_it(
    tmp_path: Path,
) -> None:
    """The old owner still believes the room is its own (paused between its
    check of the lease and its read of the room's last entry; or the partition
    came back to its worker): refused, it reads the room's last entry, the
    new owner's, later than its own. It leaves its entry out rather than
    append it after that one."""
    async with serving(tmp_path) as nats:
        old, holding, late = await old_owner_with_an_entry_in_flight(nats)
        try:
            holding.holding = False  # its next attempt reaches the stream
            await asyncio.wait_for(old.actor.logged(), 10)
            assert holding.passed  # it did try, and was refused
            stored = await room_log(nats[0])
            assert late.id not in {e.id for e in stored}
            assert [e.room_seq for e in stored] == sorted(e.room_seq for e in stored)
        finally:
            old.actor.cancel_timers()


async def test_a_retired_actor_sends_nothing_more(tmp_path: Path) -> None:
    """The worker let the actor go (its partition was lost, then came back to
    the worker, which made a new actor for the room): the old actor's entry
    in flight is not sent again, though the partition is the worker's."""
    async with serving(tmp_path) as nats:
        old, holding, _ = await old_owner_with_an_entry_in_flight(nats)
        try:
            old.actor.retire()
            holding.holding = False
            await asyncio.wait_for(old.actor.logged(), 10)
            assert holding.passed == []
        finally:
            old.actor.cancel_timers()
