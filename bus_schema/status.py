"""Status replies: what a process says about itself when asked."""

import msgspec


class WorkerStatus(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    partitions: list[int]
    """The partitions this worker owns and serves."""
    rooms_active: int
    """Rooms in memory (the rest are passivated: their state is only in KV)."""
    ownership_changes: int
    """Partitions acquired, released or lost since start."""


class PartitionsServed(msgspec.Struct, frozen=True, kw_only=True):
    """A worker now answers the commands of these partitions (it took them
    over): edges waiting to retry a command for one of them send it at once."""

    worker_id: str
    partitions: list[int]


class EdgeHeartbeat(msgspec.Struct, frozen=True, kw_only=True):
    edge_id: str
    started_at: str
    connections: int
    rooms: int


class DispatcherStatus(msgspec.Struct, frozen=True, kw_only=True):
    dispatcher_id: str
    version: str
    delivered: int
    """Events the receiver accepted (2xx) since start."""
    dead_lettered: int
    failed_attempts: int
    """POSTs that failed (network error, timeout, non-2xx) since start."""
    holding: int
    """Events this dispatcher holds right now (at most one per log partition)."""


class EdgeStatus(msgspec.Struct, frozen=True, kw_only=True):
    edge_id: str
    version: str
    started_at: str
    connections: int
    rooms: int
    draining: bool


class RoomOwner(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to ``nats req signal.actors.owner <room_id>``."""

    room_id: str
    partition: int
    worker_id: str | None
    """The worker whose claim the partition holds (``None``: unclaimed)."""
    since: str | None
    alive: bool
    """Whether that worker's lease is alive (if not, a survivor takes the
    partition once it expires)."""
