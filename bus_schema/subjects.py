"""Every NATS subject the service uses, built here and nowhere else.

Delivery guarantees, by subject:

- ``signal.room.<room>.cmd.<partition>``: request/reply, edge -> the actor owning
  the partition. The edge retries until a reply arrives (commands carry an id and
  are applied once), so a command is never lost silently.
- ``signal.room.<room>.evt``: core pub/sub, at most once, in order per room. Each
  event carries the room's sequence number; a receiver that sees a gap resyncs.
- ``signal.room.<room>.peer.<participant>``: core pub/sub, at most once, edge ->
  edge: a targeted client message (``"to": "<participant>"``), already stamped.
- ``signal.edge.<edge>.ctl``: core pub/sub, actor -> one edge: close a connection.
- ``signal.edge.<edge>.hb``: core pub/sub, every edge -> every worker, each
  ``HEARTBEAT_INTERVAL``: `bus_schema.status.EdgeHeartbeat`. Workers treat an
  edge silent for ``EDGE_TIMEOUT`` as dead.
- ``signal.calls.cleanup``: request/reply, actor -> any one edge with Calls
  configured (queue group ``calls-cleanup``): close a leaver's pushed tracks.
- ``signal.edge.<edge>.status``: request/reply: the edge's view
  (`bus_schema.status.EdgeStatus`).
- ``signal.actors.<worker>.status``: request/reply, anyone -> one worker: its view
  (`bus_schema.status.WorkerStatus`).
- ``signal.actors.served``: core pub/sub, at most once, actor -> every edge: a
  worker answers these partitions' commands now
  (`bus_schema.status.PartitionsServed`); a command waiting to be retried for
  one of them goes at once (without it, at the next retry).

``nats sub 'signal.room.<room>.>'`` shows everything that happens in one room.
"""

import functools

from bus_schema.ids import is_token_id, is_uuid

PREFIX = "signal"
PARTITIONS = 1024
"""Rooms are spread over this many partitions: at most this many workers share
the rooms (docs/capacity.md: enough for a million participants; a small
deployment pays about 12 MiB and 0.6 % of a core per worker for them).
Changing it re-shards every room: edges and workers of different counts do
not talk, so a change is an upgrade with everything stopped (docs/operations.md)."""


class InvalidSubjectToken(ValueError):
    """An id that would change the shape of a subject (a dot, a wildcard, a space...)."""


def _uuid(value: str) -> str:
    if not is_uuid(value):
        raise InvalidSubjectToken(f"not a valid id: {value!r}")
    return value


def _token(value: str) -> str:
    if not is_token_id(value):
        raise InvalidSubjectToken(f"not a valid subject token: {value!r}")
    return value


def fnv1a32(data: bytes) -> int:
    """FNV-1a, 32 bit: the same hash nats-server's ``partition()`` mapping uses."""
    h = 0x811C9DC5
    for byte in data:
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


@functools.lru_cache(maxsize=65536)
def partition_of(room_id: str) -> int:
    """The partition that owns a room: stable, shared by edges and actors."""
    return fnv1a32(room_id.encode()) % PARTITIONS


@functools.lru_cache(maxsize=65536)
def room_command(room_id: str) -> str:
    """Where an edge sends a command for a room (request/reply)."""
    return f"{PREFIX}.room.{_uuid(room_id)}.cmd.{partition_of(room_id)}"


def partition_commands(partition: int) -> str:
    """What the owner of one partition subscribes to."""
    if not 0 <= partition < PARTITIONS:
        raise InvalidSubjectToken(f"partition out of range: {partition}")
    return f"{PREFIX}.room.*.cmd.{partition}"


@functools.lru_cache(maxsize=65536)
def room_events(room_id: str) -> str:
    """Ordered room events, actor -> edges with clients in the room."""
    return f"{PREFIX}.room.{_uuid(room_id)}.evt"


def peer(room_id: str, participant_id: str) -> str:
    """Targeted client messages for one participant, edge -> edge."""
    return f"{PREFIX}.room.{_uuid(room_id)}.peer.{_uuid(participant_id)}"


PEER_SENT_AT = "Signal-Sent-At"
"""Header of a targeted frame between edges: when the sending edge sent it
(Unix seconds). A frame the network held is not delivered to a connection
opened after it was sent (it was meant for an earlier one)."""


def room_peers(room_id: str) -> str:
    """Targeted messages for every participant of a room: what an edge with
    clients in the room subscribes to (one subscription per room, not per socket)."""
    return f"{PREFIX}.room.{_uuid(room_id)}.peer.*"


def edge_control(edge_id: str) -> str:
    """Control messages for one edge (close a connection)."""
    return f"{PREFIX}.edge.{_token(edge_id)}.ctl"


def worker_status(worker_id: str) -> str:
    """A worker's status endpoint (request/reply)."""
    return f"{PREFIX}.actors.{_token(worker_id)}.status"


PARTITIONS_SERVED = f"{PREFIX}.actors.served"

ROOM_OWNER = f"{PREFIX}.actors.owner"
"""Which worker owns a room (request: the room id; any worker answers)."""

EDGE_HEARTBEATS = f"{PREFIX}.edge.*.hb"


def edge_heartbeat(edge_id: str) -> str:
    """Where an edge says it is alive."""
    return f"{PREFIX}.edge.{_token(edge_id)}.hb"


CALLS_CLEANUP = f"{PREFIX}.calls.cleanup"
CALLS_CLEANUP_QUEUE = "calls-cleanup"


def edge_status(edge_id: str) -> str:
    """An edge's status endpoint (request/reply)."""
    return f"{PREFIX}.edge.{_token(edge_id)}.status"


# --- the durable event log and webhooks -------------------------------------------

LOG_PARTITIONS = 16
"""The log's subjects carry a partition of the room, so webhook dispatchers can
deliver in per-room order (one delivery in flight per partition) and still
share the work."""

LOG_ALL = f"{PREFIX}.log.>"
"""Every subject of the ``SIGNALING_LOG`` stream."""


def log_partition_of(room_id: str) -> int:
    return fnv1a32(room_id.encode()) % LOG_PARTITIONS


def log_event(room_id: str, event: str) -> str:
    """``signal.log.<partition>.<room>.<event>``: one room lifecycle event."""
    return f"{PREFIX}.log.{log_partition_of(room_id)}.{_uuid(room_id)}.{_token(event)}"


def log_room(room_id: str) -> str:
    """Every log subject of one room (its entries' order is checked against it)."""
    return f"{PREFIX}.log.{log_partition_of(room_id)}.{_uuid(room_id)}.*"


def log_partition(partition: int) -> str:
    """Every log subject of one partition (a webhook consumer's filter)."""
    if not 0 <= partition < LOG_PARTITIONS:
        raise InvalidSubjectToken(f"log partition out of range: {partition}")
    return f"{PREFIX}.log.{partition}.>"


WEBHOOK_DEAD_ALL = f"{PREFIX}.webhooks.dead.>"
"""Every subject of the ``SIGNALING_WEBHOOKS_DEAD`` stream."""
WEBHOOK_DEAD_UNREADABLE = f"{PREFIX}.webhooks.dead.unreadable"
"""Dead letters of log entries that could not be decoded."""


def dispatcher_status(dispatcher_id: str) -> str:
    """A webhook dispatcher's status endpoint (request/reply)."""
    return f"{PREFIX}.webhooks.{_token(dispatcher_id)}.status"


def webhook_dead_letter(room_id: str) -> str:
    """Where a log event goes when its webhook could not be delivered in time."""
    return f"{PREFIX}.webhooks.dead.{_uuid(room_id)}"
