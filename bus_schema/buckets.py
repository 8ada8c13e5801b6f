"""JetStream KV buckets and their keys.

- ``rooms``: key = room id, value = `bus_schema.state.RoomMeta` (camelCase JSON,
  as the old service stored it). Written only by the owning actor, as a
  projection of the room's state; read by edges (GET /api/rooms/{id}). Keys age
  out after the room TTL; the owner refreshes them while the room is in use.
- ``room_state``: key = room id, value = `bus_schema.state.RoomState`. Written
  only by the owning actor, always with compare-and-set on the revision.

- ``actor_leases``: who owns what, readable with ``nats kv ls/get actor_leases``.

  - ``worker.<worker id>``: `bus_schema.state.WorkerLease`, a heartbeat written
    with a per-key TTL (the lease TTL) and renewed with compare-and-set. A worker
    whose key expired is dead; its partitions may be claimed.
  - ``partition.<n>``: `bus_schema.state.PartitionLease`, the worker that owns
    partition ``n`` (see `bus_schema.subjects.partition_of`). Claimed and released
    with compare-and-set; valid only while its worker's key is alive.

- ``calls_sessions``: key = Calls session id, value = `bus_schema.state.CallsSession`:
  the participant (and room) that created the session through the proxy. Written
  by the room's owning actor; read by edges to check ownership. Keys age out
  after the room TTL; the owner refreshes those of rooms in use.

- ``active_rooms``: key = ``<partition>.<room id>``, value =
  `bus_schema.state.RoomActivity`: the rooms a worker taking a partition over
  must load (someone is in them, or they close at a set time), so that a
  takeover reads those and not every stored room. Written by the owning actor
  when that changes (not per join); keys age out with the room TTL and are
  refreshed while the room is in use. The key ``complete`` says the index
  covers every room (a worker that finds it missing scans ``room_state`` once
  and fills the index).

- ``room_list``: key = ``<first two hex digits of the room id>.<room id>``,
  value = the room id: every stored room, in 256 shards, so that the admin
  listing reads a page from the shard its cursor is in (a subject filter),
  not every key. Written with the metadata, purged when the room closes.

Only actors create buckets; edges bind to existing ones.
"""

from bus_schema.ids import is_token_id, is_uuid

ROOMS = "rooms"
ROOM_STATE = "room_state"
LEASES = "actor_leases"
CALLS_SESSIONS = "calls_sessions"
ACTIVE_ROOMS = "active_rooms"
ROOM_LIST = "room_list"
LIST_SHARDS = tuple(f"{n:02x}" for n in range(256))
"""The shards of ``room_list``, in key order."""
INDEX_COMPLETE = "complete"
"""The key in ``active_rooms`` that says the index covers every stored room."""

WORKER_PREFIX = "worker."
PARTITION_PREFIX = "partition."


def room_key(room_id: str) -> str:
    """The key of a room in ``rooms`` and ``room_state``."""
    if not is_uuid(room_id):
        raise ValueError(f"not a valid room id: {room_id!r}")
    return room_id


def active_key(partition: int, room_id: str) -> str:
    """A room's key in ``active_rooms``: its partition first, so one
    partition's rooms are listed by a subject filter."""
    return f"{partition}.{room_key(room_id)}"


def list_key(room_id: str) -> str:
    """A room's key in ``room_list``: its shard, then its id."""
    return f"{room_key(room_id)[:2]}.{room_id}"


def worker_key(worker_id: str) -> str:
    if not is_token_id(worker_id):
        raise ValueError(f"not a valid worker id: {worker_id!r}")
    return f"{WORKER_PREFIX}{worker_id}"


def partition_key(partition: int) -> str:
    return f"{PARTITION_PREFIX}{partition}"


def calls_session_key(session_id: str) -> str:
    if not is_token_id(session_id):
        raise ValueError(f"not a valid Calls session id: {session_id!r}")
    return session_id
