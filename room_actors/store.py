"""Room state in JetStream KV: load, and save with compare-and-set on the revision."""

import dataclasses
import logging
from dataclasses import dataclass

from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from bus_schema import buckets, codec
from bus_schema.state import CallsSession, RoomMeta, RoomState

log = logging.getLogger(__name__)


class Fenced(Exception):
    """The revision moved under us: another writer owns the room now."""


@dataclass(frozen=True, slots=True)
class Loaded:
    state: RoomState | None
    revision: int | None
    """The key's revision, also when the value is absent (a tombstone or an
    expiry marker): the next write must name it."""


async def ensure_buckets(js: JetStreamContext, *, ttl: float, replicas: int) -> None:
    """Create the buckets actors write if they are missing, and bring the TTL of
    existing ones to ``ttl`` (idempotent)."""
    for bucket, description in (
        (buckets.ROOMS, "room metadata, projected from room_state by the owning actor"),
        (buckets.ROOM_STATE, "room state, written only by the owning actor with CAS"),
        (buckets.CALLS_SESSIONS, "Calls session owners, projected by the owning actor"),
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
                    storage=StorageType.FILE,
                    replicas=replicas,
                    direct=True,
                )
            )
            continue
        info = await js.stream_info(f"KV_{bucket}")
        if info.config.max_age is None or abs(info.config.max_age - ttl) > 0.001:
            log.info("bucket %s: TTL %s -> %s s", bucket, info.config.max_age, ttl)
            await js.update_stream(dataclasses.replace(info.config, max_age=ttl))


class RoomStore:
    def __init__(self, state_kv: KeyValue, rooms_kv: KeyValue, calls_kv: KeyValue) -> None:
        self._state = state_kv
        self._rooms = rooms_kv
        self._calls = calls_kv

    @classmethod
    async def bind(cls, js: JetStreamContext) -> "RoomStore":
        return cls(
            await js.key_value(buckets.ROOM_STATE),
            await js.key_value(buckets.ROOMS),
            await js.key_value(buckets.CALLS_SESSIONS),
        )

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
        """Project the room's metadata into the ``rooms`` bucket (refreshing its age)."""
        await self._rooms.put(buckets.room_key(meta.id), codec.encode(meta))

    async def publish_calls_session(self, session: CallsSession) -> None:
        """Project a Calls session's owner into ``calls_sessions`` (refreshing its age)."""
        await self._calls.put(buckets.calls_session_key(session.session_id), codec.encode(session))

    async def room_ids(self) -> list[str]:
        """Every room with stored state (raises ``NoKeysError`` when there is none)."""
        return await self._state.keys()
