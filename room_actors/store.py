"""Room state in JetStream KV: load, and save with compare-and-set on the revision."""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import nats.errors
from nats.aio.client import Client
from nats.js.api import DiscardPolicy, KeyValueConfig, PubAck, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from bus_schema import buckets, codec, subjects
from bus_schema import log as event_log
from bus_schema.log import LOG_STREAM, LogEntry
from bus_schema.state import CallsSession, RoomActivity, RoomMeta, RoomState
from room_actors import metrics
from runtime.outage import Outage
from runtime.retry import Attempt, Backoff, Retry
from runtime.streams import bucket_keys, ensure_limits, ensure_stream, kv_stream

log = logging.getLogger(__name__)


class Fenced(Exception):
    """The revision moved under us: another writer owns the room now."""


class Overtaken(Exception):
    """A later entry of the room is in the event log already: this one, older,
    would break the room's order there (a previous owner's entry)."""


class ActorStore(Protocol):
    """What a room actor needs of storage: `RoomStore` in JetStream KV, or a
    fake in a unit test. Only the state is written with compare-and-set; the
    projections are read models the actor overwrites."""

    async def load(self, room_id: str) -> "Loaded":
        """The room's state (``None`` if absent) and its key's revision."""
        ...

    async def save(self, state: RoomState, revision: int | None) -> int:
        """Write ``state`` if the key is still at ``revision`` (``None``: absent),
        else raise `Fenced`; return the new revision."""
        ...

    async def delete(self, room_id: str, revision: int | None) -> int | None:
        """Delete a closed room's state (if still at ``revision``, else raise
        `Fenced`) and metadata; return the key's revision after the delete."""
        ...

    async def publish_meta(self, meta: RoomMeta) -> None:
        """Write the room's metadata into ``rooms``."""
        ...

    async def publish_calls_session(self, session: CallsSession) -> None:
        """Write a Calls session's owner into ``calls_sessions``."""
        ...

    async def forget_calls_session(self, session_id: str) -> None:
        """Remove a Calls session's owner from ``calls_sessions`` (best effort)."""
        ...

    async def send_log(self, entries: list[LogEntry], after: int | None) -> "LogBatch":
        """Put the first of ``entries`` on its way to the event log without
        waiting for the stream (the event it records, published next, reaches
        the server after it); `confirm_log` sends the others, one by one.
        ``after`` is the stream sequence of the room's last entry (``None``:
        unknown, read when confirmed): an entry is stored only if it still is,
        so an entry a fenced owner sent cannot land after the new owner's."""
        ...

    async def confirm_log(
        self, batch: "LogBatch", *, owned: Callable[[], bool] = lambda: True
    ) -> int | None:
        """Wait until the log has every entry of ``batch``, sending in order
        what it did not confirm (each entry is stored once, by its ``id``),
        while ``owned()``, else raise `Fenced`; the stream sequence of the
        room's last entry (``None``: unknown, after an entry given up)."""
        ...

    async def append_log(self, entries: list[LogEntry], after: int | None) -> int | None:
        """Append to the event log, in order, and wait for it (see `confirm_log`)."""
        ...

    async def index_room(self, room_id: str, activity: RoomActivity | None) -> None:
        """Write the room's entry in ``active_rooms`` (``None``: remove it)."""
        ...

    @property
    def log_seq(self) -> int:
        """The log's sequence number as last confirmed (or when the store
        started): every entry sent from now on is stored after it."""
        ...

    async def track_changes(self, room_id: str, after: RoomState) -> list[LogEntry]:
        """The mute changes of the room logged after the state ``after`` was
        saved (at or after its ``log_seq``), in order."""
        ...


@dataclass(slots=True)
class LogBatch:
    """Entries on their way to the event log."""

    entries: list[LogEntry]
    after: int | None
    """The stream sequence of the room's last entry before these (``None``: unknown)."""
    first: "asyncio.Future[PubAck] | None"
    """The stream's acknowledgement of the first entry to come (``None``: not
    sent; it is sent when confirmed)."""


_LIST_WHOLE_INDEX = 16
"""A takeover of more partitions than this lists the whole index at once."""
LOG_DUPLICATE_WINDOW = 120.0
"""Seconds the event log recognises a repeated entry (by its ``Nats-Msg-Id``)."""
LOG_ACK_TIMEOUT = 1.0
"""Seconds to wait for the stream to acknowledge a log entry before sending it again."""
LOG_RETRY_SECONDS = 20.0
"""Seconds an entry is sent again before it is given up as lost (logged as an
error): JetStream elects a stream's new leader in 4-9 s after a node's death."""
APPENDS = Outage(log, "event log appends", "log", metrics.BUS_OUTAGES, metrics.BUS_FAILURES)
WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code for a publish whose expected last sequence is not the last."""
TRACK_CHANGES_READ = 1024
"""Log entries a new owner reads back for one room at most (the actor saves
after at most `room_actors.actor.UNSAVED_MAX` unsaved changes, so far fewer)."""


@dataclass(frozen=True, slots=True)
class Loaded:
    state: RoomState | None
    revision: int | None
    """The key's revision, also when the value is absent (a tombstone or an
    expiry marker): the next write must name it."""


async def ensure_buckets(
    js: JetStreamContext, *, ttl: float, replicas: int, max_bytes: int
) -> None:
    """Create the buckets actors write if they are missing, and bring the TTL and
    byte limit of existing ones to ``ttl`` and ``max_bytes`` (idempotent). The
    leases bucket, created by `room_actors.leases`, gets its byte limit here too
    once it exists.

    A bucket at ``max_bytes`` refuses every write (nats-py creates KV streams
    with discard ``new``, which this keeps): creating a room, a join, any turn
    that saves state fails with a retryable error; nothing stored is removed to
    make room, so no room loses its state to another's growth."""
    for bucket, description in (
        (buckets.ROOMS, "room metadata, projected from room_state by the owning actor"),
        (buckets.ROOM_STATE, "room state, written only by the owning actor with CAS"),
        (buckets.CALLS_SESSIONS, "Calls session owners, projected by the owning actor"),
        (buckets.ACTIVE_ROOMS, "rooms a takeover loads, by partition (the owning actor)"),
        (buckets.ROOM_LIST, "every stored room by shard, for the admin listing (the owning actor)"),
    ):
        try:
            await js.key_value(bucket)
        except BucketNotFoundError:
            await js.create_key_value(
                KeyValueConfig(
                    bucket=bucket,
                    description=description,
                    history=1,
                    ttl=ttl,
                    max_bytes=max_bytes,
                    storage=StorageType.FILE,
                    replicas=replicas,
                    direct=True,
                )
            )
            continue
        await ensure_limits(
            js, kv_stream(bucket), max_age=ttl, max_bytes=max_bytes, discard=DiscardPolicy.NEW
        )
    with contextlib.suppress(NotFoundError):
        await ensure_limits(
            js, kv_stream(buckets.LEASES), max_bytes=max_bytes, discard=DiscardPolicy.NEW
        )


async def ensure_log_stream(
    js: JetStreamContext, *, max_age: float, max_bytes: int, replicas: int
) -> None:
    """Create the durable room event log, or bring its limits to the settings."""
    await ensure_stream(
        js,
        StreamConfig(
            name=LOG_STREAM,
            description="room lifecycle events, appended by the owning actors (docs/admin.md)",
            subjects=[subjects.LOG_ALL],
            storage=StorageType.FILE,
            max_age=max_age,
            max_bytes=max_bytes,
            discard=DiscardPolicy.OLD,
            num_replicas=replicas,
            duplicate_window=LOG_DUPLICATE_WINDOW,
        ),
    )


class RoomStore:
    def __init__(
        self,
        state_kv: KeyValue,
        rooms_kv: KeyValue,
        calls_kv: KeyValue,
        js: JetStreamContext | None = None,
        active_kv: KeyValue | None = None,
        list_kv: KeyValue | None = None,
    ) -> None:
        self._state = state_kv
        self._rooms = rooms_kv
        self._calls = calls_kv
        self._active = active_kv
        self._list = list_kv
        self._js = js
        self._nc: Client | None = None
        self._log_seq = 0

    @classmethod
    async def bind(cls, nc: Client, js: JetStreamContext) -> "RoomStore":
        store = cls(
            await js.key_value(buckets.ROOM_STATE),
            await js.key_value(buckets.ROOMS),
            await js.key_value(buckets.CALLS_SESSIONS),
            js,
            await js.key_value(buckets.ACTIVE_ROOMS),
            await js.key_value(buckets.ROOM_LIST),
        )
        store._nc = nc
        with contextlib.suppress(NotFoundError):
            # Entries sent from now on come after the log's end as it is now.
            store._log_seq = (await js.stream_info(LOG_STREAM)).state.last_seq
        return store

    async def delete(self, room_id: str, revision: int | None) -> int | None:
        """Delete a closed room's state (if still at ``revision``) and metadata."""
        try:
            await self._state.delete(buckets.room_key(room_id), last=revision)
        except KeyWrongLastSequenceError as e:
            raise Fenced(room_id) from e
        await self._rooms.delete(buckets.room_key(room_id))
        await self._purge(buckets.ROOM_LIST, buckets.list_key(room_id))
        loaded = await self.load(room_id)
        return loaded.revision

    @property
    def log_seq(self) -> int:
        return self._log_seq

    async def send_log(self, entries: list[LogEntry], after: int | None) -> LogBatch:
        """Put the first entry on its way to the event log without waiting for
        the stream. The others wait for its acknowledgement (`confirm_log`):
        each expects the one before it to be the room's last entry, which only
        that one's acknowledgement tells."""
        js = self._js
        first: asyncio.Future[PubAck] | None = None
        if js is not None and entries and after is not None:
            entry = entries[0]
            try:
                first = await js.publish_async(
                    subjects.log_event(entry.room_id, entry.event),
                    codec.encode(entry),
                    headers=_guarded(entry, after),
                )
            except nats.errors.Error:
                first = None  # not connected: `confirm_log` sends it again
        return LogBatch(entries, after, first)

    async def confirm_log(
        self, batch: LogBatch, *, owned: Callable[[], bool] = lambda: True
    ) -> int | None:
        """Wait for the stream's acknowledgements, in order; an entry it did not
        confirm is sent again (and waited for) before the next one is sent. An
        entry that still fails after its attempts is counted and logged, and
        the next is appended (the turn it records is saved already).

        Each entry is stored only if the room's last entry is still the one
        before it: an entry that a fenced owner sent (held by the network, or
        sent by a worker paused past its lease) is refused once the new owner
        has appended anything. An owner refused this way reads the room's last
        entry: its own entry, stored without an acknowledgement, or another's
        (a previous owner's late entry, or a stale ``after``) to append after.

        Nothing is sent while ``owned()`` is false: then `Fenced`, and the
        caller waits for its lease to come back, or leaves the entries to the
        room's next owner (who appends a recent save's outbox)."""
        js = self._js
        if js is None:
            return batch.after
        last = batch.after
        for index, entry in enumerate(batch.entries):
            confirmed: PubAck | None = None
            if index == 0 and batch.first is not None:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    confirmed = await asyncio.wait_for(batch.first, LOG_ACK_TIMEOUT)
            if confirmed is None:
                try:
                    confirmed = await self._append(js, entry, last, owned)
                except Overtaken:
                    log.info(
                        "a log entry is left out: a later one of the room is there already",
                        extra={"room_id": entry.room_id},
                    )
                    last = None
                    continue
                except Fenced:  # the caller decides: wait for the lease, or leave them
                    raise
                except (nats.errors.Error, TimeoutError) as e:
                    metrics.LOG_FAILED.inc()
                    log.error(
                        "event log append failed: %s",
                        type(e).__name__,
                        extra={"room_id": entry.room_id},
                    )
                    last = None  # read again for the next entry
                    continue
            # A repeat is acknowledged with the sequence it was first stored
            # at, which may not be the room's last entry any more: read it then.
            last = None if confirmed.duplicate else confirmed.seq
            self._log_seq = max(self._log_seq, confirmed.seq)
            metrics.LOG_APPENDED.inc()
        return last

    async def _append(
        self,
        js: JetStreamContext,
        entry: LogEntry,
        after: int | None,
        owned: Callable[[], bool],
    ) -> PubAck:
        """Send ``entry`` until the stream stores it (or recognises it) after
        the room's last entry, for `LOG_RETRY_SECONDS`: long enough for
        JetStream to elect the stream's new leader after a node died.

        When the room's last entry is read, it decides, not the time: a later
        entry there (a new owner's) means this one is `Overtaken`, however
        sure this worker still is that the room is its own (it may have been
        paused between that check and the read)."""
        expected = after
        subject = subjects.log_event(entry.room_id, entry.event)
        payload = codec.encode(entry)

        async def attempt(_: Attempt) -> PubAck:
            nonlocal expected
            if not owned():
                raise Fenced(entry.room_id)
            if expected is None:
                expected, landed = await self._room_last(js, entry)
                if landed is not None:
                    return landed
                if not owned():
                    raise Fenced(entry.room_id)
            try:
                return await js.publish(
                    subject, payload, timeout=1.0, headers=_guarded(entry, expected)
                )
            except APIError as e:
                if e.err_code == WRONG_LAST_SEQUENCE:
                    expected = None  # another entry is the room's last: read it
                raise

        policy = Retry(
            on=(nats.errors.Error, TimeoutError),
            deadline=LOG_RETRY_SECONDS,
            backoff=Backoff(0.1, cap=1.0),
        )
        confirmed = await policy.run(attempt, on_retry=_append_failed)
        APPENDS.over()
        return confirmed

    async def _room_last(self, js: JetStreamContext, entry: LogEntry) -> tuple[int, PubAck | None]:
        """The stream sequence of the room's last log entry, and an
        acknowledgement if it is ``entry`` (stored, its acknowledgement lost);
        `Overtaken` if it is a later entry of the room."""
        try:
            last = await js.get_last_msg(LOG_STREAM, subjects.log_room(entry.room_id))
        except NotFoundError:
            return 0, None
        seq = last.seq or 0
        if last.data is None:
            return seq, None
        found = event_log.log_entry.decode(last.data)
        if found.id == entry.id:
            return seq, PubAck(stream=LOG_STREAM, seq=seq)
        if found.room_seq > entry.room_seq:
            raise Overtaken(entry.room_id)
        return seq, None

    async def append_log(self, entries: list[LogEntry], after: int | None) -> int | None:
        return await self.confirm_log(await self.send_log(entries, after))

    async def track_changes(self, room_id: str, after: RoomState) -> list[LogEntry]:
        """The room's mute changes logged after ``after`` was saved: first the
        last one (usually older than the save: nothing to read), else every
        one from the state's ``log_seq`` on, at most `TRACK_CHANGES_READ`."""
        js = self._js
        if js is None:
            return []
        subject = subjects.log_event(room_id, event_log.TRACK_STATE_CHANGED)
        try:
            last = await js.get_msg(LOG_STREAM, subject=subject)
        except NotFoundError:
            return []
        if last.data is None or event_log.log_entry.decode(last.data).room_seq <= after.seq:
            return []
        found: list[LogEntry] = []
        cursor = max(after.log_seq, 1)
        while len(found) < TRACK_CHANGES_READ:
            try:
                message = await js.get_msg(LOG_STREAM, seq=cursor, subject=subject, next=True)
            except NotFoundError:
                break
            if message.data is not None:
                entry = event_log.log_entry.decode(message.data)
                if entry.room_seq > after.seq:
                    found.append(entry)
            if message.seq is None or message.seq >= (last.seq or 0):
                break
            cursor = message.seq + 1
        else:
            log.warning("too many unsaved mute changes to read back", extra={"room_id": room_id})
        return found

    async def load(self, room_id: str) -> Loaded:
        try:
            entry = await self._state.get(buckets.room_key(room_id))
        except KeyNotFoundError as e:
            # A deleted key raises too, but names the tombstone's revision.
            return Loaded(None, e.entry.revision if e.entry is not None else None)
        if entry.value is None or entry.operation in ("DEL", "PURGE"):
            return Loaded(None, entry.revision)
        return Loaded(codec.room_state.decode(entry.value), entry.revision)

    async def save(self, state: RoomState, revision: int | None) -> int:
        """Write ``state`` if the key is still at ``revision``; return the new revision."""
        key = buckets.room_key(state.room_id)
        value = codec.encode(state)
        try:
            if revision is None:
                return await self._state.create(key, value)
            return await self._state.update(key, value, last=revision)
        except KeyWrongLastSequenceError as e:
            raise Fenced(state.room_id) from e

    async def publish_meta(self, meta: RoomMeta) -> None:
        """Project the room's metadata into the ``rooms`` bucket, and list the
        room in ``room_list`` (refreshing the age of both)."""
        await self._rooms.put(buckets.room_key(meta.id), codec.encode(meta))
        if self._list is not None:
            await self._list.put(buckets.list_key(meta.id), meta.id.encode())

    async def list_rooms(self, room_ids: list[str]) -> None:
        """List rooms in ``room_list`` (a takeover filling it for rooms stored
        by a version without it)."""
        if self._list is not None:
            for room_id in room_ids:
                await self._list.put(buckets.list_key(room_id), room_id.encode())

    async def _purge(self, bucket: str, key: str) -> None:
        """Remove a key with no marker left behind (a listing would show it)."""
        if self._js is not None:
            await self._js.purge_stream(kv_stream(bucket), subject=f"$KV.{bucket}.{key}")

    async def publish_calls_session(self, session: CallsSession) -> None:
        """Project a Calls session's owner into ``calls_sessions`` (refreshing its age)."""
        await self._calls.put(buckets.calls_session_key(session.session_id), codec.encode(session))

    async def forget_calls_session(self, session_id: str) -> None:
        """Remove a dropped Calls session's owner from ``calls_sessions`` (best
        effort: the key ages out with the room TTL anyway)."""
        try:
            await self._calls.delete(buckets.calls_session_key(session_id))
        except (nats.errors.Error, TimeoutError) as e:
            log.warning("could not forget a Calls session: %s", type(e).__name__)

    async def index_room(self, room_id: str, activity: RoomActivity | None) -> None:
        """Write the room's entry in ``active_rooms``, or remove it: purged from
        the bucket's stream, not deleted, so that no marker stays behind to be
        listed by the next takeover."""
        if self._active is None or self._js is None:
            return
        key = buckets.active_key(subjects.partition_of(room_id), room_id)
        if activity is not None:
            await self._active.put(key, codec.encode(activity))
            return
        await self._purge(buckets.ACTIVE_ROOMS, key)

    async def indexed_rooms(self, partitions: list[int]) -> dict[int, list[str] | None]:
        """The rooms of each partition in ``active_rooms``; ``None`` for a
        partition the index does not cover yet (`index_complete`). One listing
        per partition, or one of the whole index for a takeover of many."""
        nc = self._nc
        assert nc is not None, "bind() the store first"
        markers = await bucket_keys(nc, buckets.ACTIVE_ROOMS, keys=f"{buckets.INDEX_COMPLETE}.>")
        covered = {int(key.rsplit(".", 1)[1]) for key in markers}
        found: dict[int, list[str] | None] = {p: ([] if p in covered else None) for p in partitions}
        wanted = [p for p in partitions if p in covered]
        if len(wanted) > _LIST_WHOLE_INDEX:
            listings = [await bucket_keys(nc, buckets.ACTIVE_ROOMS)]
        else:
            listings = await asyncio.gather(
                *(bucket_keys(nc, buckets.ACTIVE_ROOMS, keys=f"{p}.>") for p in wanted)
            )
        for keys in listings:
            for key in keys:
                partition, _, room_id = key.partition(".")
                rooms = found.get(int(partition)) if partition.isdigit() else None
                if rooms is not None:
                    rooms.append(room_id)
        return found

    async def index_complete(self, partition: int) -> None:
        """Mark the index as covering every room of the partition."""
        if self._active is not None:
            await self._active.put(f"{buckets.INDEX_COMPLETE}.{partition}", b"true")

    async def room_ids(self) -> list[str]:
        """Every room key of ``room_state``, deleted ones included (reading the
        key tells): the server's own list, not nats-py's ``keys()``, which may
        come back short (`runtime.streams.bucket_keys`)."""
        assert self._nc is not None, "bind() the store to list rooms"
        return await bucket_keys(self._nc, buckets.ROOM_STATE)


def _guarded(entry: LogEntry, after: int) -> dict[str, str]:
    """The headers of a log entry: its id (a repeat is stored once) and the
    room's last entry it must come after."""
    return {
        "Nats-Msg-Id": entry.id,
        "Nats-Expected-Last-Subject-Sequence": str(after),
        "Nats-Expected-Last-Subject-Sequence-Subject": subjects.log_room(entry.room_id),
    }


def _append_failed(error: object, delay: float) -> None:
    if isinstance(error, APIError) and error.err_code == WRONG_LAST_SEQUENCE:
        return  # not an outage: the entry is sent after the room's last one
    if isinstance(error, BaseException):
        APPENDS.failed(error)
