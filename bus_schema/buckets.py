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

Only actors create buckets; edges bind to existing ones.
"""

from bus_schema.ids import is_token_id, is_uuid

ROOMS = "rooms"
ROOM_STATE = "room_state"
LEASES = "actor_leases"
CALLS_SESSIONS = "calls_sessions"

WORKER_PREFIX = "worker."
PARTITION_PREFIX = "partition."


def room_key(room_id: str) -> str:
    """The key of a room in ``rooms`` and ``room_state``."""
    if not is_uuid(room_id):
        raise ValueError(f"not a valid room id: {room_id!r}")
    return room_id


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
