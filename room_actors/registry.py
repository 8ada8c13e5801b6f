"""Which room actors are active in this worker: partitions served, activation,
dispatch and passivation."""

import asyncio
import logging
import time
from collections.abc import Callable

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus_schema import codec, ids, subjects
from bus_schema.commands import Rejected
from bus_schema.control import CloseCallsTracks
from bus_schema.errors import ErrorCode
from bus_schema.state import RoomActivity
from bus_schema.status import PartitionsServed
from room_actors import metrics
from room_actors.actor import RETRY, RoomActor, activity
from room_actors.state import ExpireDisconnected, Limits, Republish
from room_actors.store import Loaded, RoomStore
from runtime.retry import Backoff, Retry
from runtime.services import MicroService

log = logging.getLogger(__name__)

_TAKEOVER_LOADS = 32
"""Rooms a takeover reads from KV at once."""
_TAKE_RETRY = Backoff(0.2, cap=2.0)


class _Read:
    """One room's read for a takeover, shared with a command that comes first."""

    __slots__ = ("done", "started")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.done: asyncio.Future[Loaded | None] = loop.create_future()
        self.started = False


class Registry:
    def __init__(
        self,
        nc: Client,
        store: RoomStore,
        limits: Limits,
        owns: Callable[[int], bool],
        service: MicroService,
        worker_id: str,
    ) -> None:
        self._nc = nc
        self._service = service
        self._worker_id = worker_id
        self._queue = f"worker-{worker_id}"
        """A queue group of one: only this worker, as a plain subscription."""
        self._store = store
        self._limits = limits
        self._owns = owns
        self._actors: dict[str, RoomActor] = {}
        self._partitions: set[int] = set()
        self._cleanups: set[asyncio.Task[None]] = set()
        self._wakeups: dict[str, asyncio.TimerHandle] = {}
        """Passivated rooms due to close at some time: a timer each, no actor."""
        self._taking: dict[asyncio.Task[None], frozenset[int]] = {}
        """Rooms of partitions taken over being loaded, by the partitions."""
        self._reads: dict[str, _Read] = {}
        """A takeover's reads to come or in flight, by room: shared with an
        actor that a command activates meanwhile (`_read`)."""

    def __len__(self) -> int:
        return len(self._actors)

    @property
    def partitions(self) -> list[int]:
        return sorted(self._partitions)

    def actor(self, room_id: str) -> RoomActor:
        """The room's actor, activated on first use."""
        actor = self._actors.get(room_id)
        if actor is None:
            wakeup = self._wakeups.pop(room_id, None)
            if wakeup is not None:
                wakeup.cancel()
            partition = subjects.partition_of(room_id)
            actor = RoomActor(
                room_id,
                nc=self._nc,
                store=self._store,
                limits=self._limits,
                owns=lambda: self._owns(partition),
                on_fenced=self._forget_fenced,
                on_cleanup=self._cleanup,
                load=self._read,
            )
            self._actors[room_id] = actor
        return actor

    async def _read(self, room_id: str) -> Loaded:
        """The room as stored. During a takeover each room is read once: by the
        takeover, or, when a command for it comes first, at once for the
        command (and the takeover takes that read)."""
        read = self._reads.get(room_id)
        if read is None:
            return await self._store.load(room_id)
        if read.started:
            loaded = await asyncio.shield(read.done)
            return loaded if loaded is not None else await self._store.load(room_id)
        read.started = True
        try:
            loaded = await self._store.load(room_id)
        except BaseException:
            read.done.set_result(None)  # whoever waits reads it again
            raise
        read.done.set_result(loaded)
        return loaded

    async def dispatch(self, msg: Msg) -> None:
        """Route one command message to its room's mailbox (never blocks on I/O)."""
        try:
            command = codec.commands.decode(msg.data)
        except codec.DecodeError as e:
            log.warning("rejected a malformed command: %s", e)
            bad = Rejected(code=ErrorCode.BAD_COMMAND, message=f"malformed command: {e}")
            await _answer(msg, bad)
            return
        if not ids.is_uuid(command.room_id):
            await _answer(msg, Rejected(code=ErrorCode.BAD_COMMAND, message="bad room id"))
            return
        if not self._owns(subjects.partition_of(command.room_id)):
            await _answer(msg, RETRY)
            return
        self.actor(command.room_id).submit(command, msg)

    # --- partitions ---------------------------------------------------------

    async def serve(self, partitions: list[int]) -> None:
        """Start serving partitions this worker now owns: their commands at
        once, and in the background their rooms that have participants or a
        closing deadline are loaded (so they stay alive, are watched, and close
        on time). The leases go on meanwhile: when a death moves partitions
        between the survivors too, those are claimed without waiting for the
        reads."""
        started = time.monotonic()
        added = []
        for partition in partitions:
            if partition not in self._partitions:
                await self._service.add(
                    f"partition-{partition}",
                    subjects.partition_commands(partition),
                    self.dispatch,
                    queue_group=self._queue,
                    metadata={"partition": str(partition)},
                )
                self._partitions.add(partition)
                added.append(partition)
        if added:
            # Once the server has the subscriptions, the edges hear of them:
            # commands waiting out a failover go now, not at their next retry.
            await self._nc.flush()
            served = PartitionsServed(worker_id=self._worker_id, partitions=added)
            await self._nc.publish(subjects.PARTITIONS_SERVED, codec.encode(served))
        task = asyncio.create_task(self._take(partitions, started), name="take-rooms")
        self._taking[task] = frozenset(partitions)
        task.add_done_callback(self._taking_done)

    def _taking_done(self, task: "asyncio.Task[None]") -> None:
        del self._taking[task]

    async def _take(self, partitions: list[int], started: float) -> None:
        """Load the rooms of newly served partitions, again until it succeeds
        or the partitions are no longer served."""
        delays = _TAKE_RETRY.delays()
        while served := [p for p in partitions if p in self._partitions]:
            try:
                await self._load_rooms(served, started)
                return
            except Exception:
                log.exception("reading the rooms of partitions taken over failed; retrying")
                await asyncio.sleep(next(delays))

    async def _taken(self, partitions: list[int]) -> None:
        """Wait until the rooms of these partitions are no longer being loaded."""
        wanted = set(partitions)
        pending = [task for task, taking in self._taking.items() if taking & wanted]
        if pending:
            await asyncio.wait(pending)

    async def _load_rooms(self, partitions: list[int], started: float) -> None:
        # The rooms to look at: those the index lists for each partition, or,
        # for a partition the index does not cover yet, every stored room of
        # it (one scan of room_state, after which the index covers it).
        subscribed = time.monotonic()
        listed = await self._store.indexed_rooms(partitions)
        indexed = {room for rooms in listed.values() if rooms is not None for room in rooms}
        unindexed = {p for p, rooms in listed.items() if rooms is None}
        scanned: list[str] = []
        if unindexed:
            scanned = [
                room_id
                for room_id in await self._store.room_ids()
                if ids.is_uuid(room_id) and subjects.partition_of(room_id) in unindexed
            ]

        mine = sorted(indexed | set(scanned))
        metrics.child(metrics.TAKEOVER_ROOMS_READ, "index").inc(len(indexed))
        metrics.child(metrics.TAKEOVER_ROOMS_READ, "scan").inc(len(mine) - len(indexed))
        gate = asyncio.Semaphore(_TAKEOVER_LOADS)
        loop = asyncio.get_running_loop()
        reads = {room_id: _Read(loop) for room_id in mine}
        self._reads.update(reads)
        index_writes: list[tuple[str, RoomActivity | None]] = []
        unlisted: list[str] = []

        async def take(room_id: str) -> None:
            # The rooms are read many at a time (a takeover's time is mostly
            # round trips to KV), and each is served as soon as it is read.
            try:
                async with gate:
                    loaded = await self._read(room_id)
            finally:
                if self._reads.get(room_id) is reads[room_id]:
                    del self._reads[room_id]
            if subjects.partition_of(room_id) not in self._partitions:
                return  # released or lost meanwhile
            state = loaded.state
            if state is not None and room_id not in indexed:
                unlisted.append(room_id)  # stored by a version without the indexes
            entry = activity(state) if state is not None else None
            if entry is None:
                if room_id in indexed:
                    index_writes.append((room_id, None))  # stale
                return
            if room_id not in indexed:
                index_writes.append((room_id, entry))
            if state is not None and (state.participants or state.closed):
                self.actor(room_id).activate(loaded)
            elif state is not None and state.close_at is not None:
                self._wake_at(room_id, state.close_at)

        await asyncio.gather(*map(take, mine))
        await asyncio.gather(*(self._store.index_room(r, entry) for r, entry in index_writes))
        await self._store.list_rooms(unlisted)
        await asyncio.gather(*map(self._store.index_complete, sorted(unindexed)))
        log.info(
            "serving %d partitions: subscribed in %.3f s, %d rooms read (%d from a scan) "
            "and activated in %.3f s",
            len(partitions),
            subscribed - started,
            len(mine),
            len(mine) - len(indexed),
            time.monotonic() - subscribed,
        )

    async def release(self, partitions: list[int]) -> None:
        """Stop serving partitions: no new commands, finish the turns in flight,
        save what was changed without a write and let the log confirm what was
        sent, then forget their rooms."""
        await self._unsubscribe(partitions)
        await self._taken(partitions)
        leaving = self._actors_in(partitions)
        await asyncio.gather(*(actor.settle() for actor in leaving.values()))
        for room_id, actor in leaving.items():
            actor.retire()
            self._actors.pop(room_id, None)
        self._cancel_wakeups(partitions)

    async def drop(self, partitions: list[int]) -> None:
        """The lease on these partitions is lost: stop serving them at once and
        forget their rooms, without waiting (unlike `release`). Turns in flight
        fail their fence."""
        await self._unsubscribe(partitions)
        for room_id, actor in self._actors_in(partitions).items():
            actor.retire()
            self._actors.pop(room_id, None)
        self._cancel_wakeups(partitions)

    async def _unsubscribe(self, partitions: list[int]) -> None:
        for partition in partitions:
            if partition in self._partitions:
                self._partitions.discard(partition)
                await self._service.remove(f"partition-{partition}")

    def _actors_in(self, partitions: list[int]) -> dict[str, RoomActor]:
        wanted = set(partitions)
        return {
            room_id: actor
            for room_id, actor in self._actors.items()
            if subjects.partition_of(room_id) in wanted
        }

    def _wake_at(self, room_id: str, when: float) -> None:
        """Load the room again when its closing deadline (Unix seconds) comes."""
        previous = self._wakeups.pop(room_id, None)
        if previous is not None:
            previous.cancel()

        def wake() -> None:
            self._wakeups.pop(room_id, None)
            if subjects.partition_of(room_id) in self._partitions:
                self.actor(room_id).submit(ExpireDisconnected())

        delay = max(0.0, when - time.time())
        self._wakeups[room_id] = asyncio.get_running_loop().call_later(delay, wake)

    def _cancel_wakeups(self, partitions: list[int]) -> None:
        wanted = set(partitions)
        for room_id in [r for r in self._wakeups if subjects.partition_of(r) in wanted]:
            self._wakeups.pop(room_id).cancel()

    def _forget_fenced(self, room_id: str) -> None:
        """Another worker wrote this room (its actor was fenced): forget the
        actor, whatever this worker believes it owns."""
        actor = self._actors.pop(room_id, None)
        if actor is not None:
            actor.retire()

    def _cleanup(self, request: CloseCallsTracks) -> None:
        task = asyncio.create_task(self._send_cleanup(request))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _send_cleanup(self, request: CloseCallsTracks) -> None:
        """Ask an edge with Calls configured to close a leaver's tracks (best effort)."""
        data = codec.encode(request)
        # A NATS error or a timeout: 3 attempts, 0.5 and 1 s apart; but no
        # responders means no edge has Calls configured: nothing to retry.
        policy = Retry(
            on=lambda e: (
                isinstance(e, nats.errors.Error | TimeoutError)
                and not isinstance(e, nats.errors.NoRespondersError)
            ),
            attempts=3,
            backoff=Backoff(0.5, cap=1.0),
        )
        try:
            await policy.run(lambda _: self._nc.request(subjects.CALLS_CLEANUP, data, timeout=15))
        except nats.errors.NoRespondersError:
            log.info("no edge closes Calls tracks (Calls not configured?)")
        except (nats.errors.Error, TimeoutError):
            log.warning("Calls tracks of %s were not closed", request.participant_id)

    # --- housekeeping ---------------------------------------------------------

    def passivate_idle(self, idle_for: float) -> int:
        """Evict empty rooms that saw no command for ``idle_for`` seconds; their
        state stays in KV. Rooms with participants stay active; a room due to
        close keeps only a timer that loads it again at its deadline."""
        cutoff = time.monotonic() - idle_for
        idle = [
            room_id
            for room_id, actor in self._actors.items()
            if not actor.busy
            and actor.last_active < cutoff
            and (actor.state is None or not actor.state.participants)
        ]
        for room_id in idle:
            actor = self._actors.pop(room_id)
            actor.retire()
            if actor.state is not None and actor.state.close_at is not None:
                self._wake_at(room_id, actor.state.close_at)
        return len(idle)

    def edges_in_use(self) -> dict[str, set[str]]:
        """edge id -> rooms with a connected participant on that edge."""
        edges: dict[str, set[str]] = {}
        for room_id, actor in self._actors.items():
            if actor.state is None:
                continue
            for participant in actor.state.participants.values():
                if participant.disconnected_until is None:
                    edges.setdefault(participant.edge_id, set()).add(room_id)
        return edges

    def republish_recent(self) -> None:
        """After a NATS reconnect: every active room sends its last events again."""
        for actor in self._actors.values():
            actor.submit(Republish())

    def touch_rooms_in_use(self) -> int:
        """Refresh the KV age of every room that has participants."""
        in_use = [a for a in self._actors.values() if a.state is not None and a.state.participants]
        for actor in in_use:
            actor.touch()
        return len(in_use)

    async def close(self) -> None:
        """Stop serving everything; let running turns and cleanups finish."""
        await self.release(list(self._partitions))
        for task in list(self._taking):
            task.cancel()
        await self._taken(list(range(subjects.PARTITIONS)))
        if self._cleanups:
            await asyncio.wait(self._cleanups, timeout=5)


async def _answer(msg: Msg, reply: Rejected) -> None:
    if msg.reply:
        await msg.respond(codec.encode(reply))
