"""JetStream KV buckets and their keys.

- ``rooms``: key = room id, value = `bus_schema.state.RoomMeta` (camelCase JSON,
  as the old service stored it). Written only by the owning actor, as a
  projection of the room's state; read by edges (GET /api/rooms/{id}). Keys age
  out after the room TTL; the owner refreshes them while the room is in use.
- ``room_state``: key = room id, value = `bus_schema.state.RoomState`. Written
  only by the owning actor, always with compare-and-set on the revision.

Only actors create buckets; edges bind to existing ones.
"""

from bus_schema.ids import is_uuid

ROOMS = "rooms"
ROOM_STATE = "room_state"


def room_key(room_id: str) -> str:
    """The key of a room in ``rooms`` and ``room_state``."""
    if not is_uuid(room_id):
        raise ValueError(f"not a valid room id: {room_id!r}")
    return room_id
