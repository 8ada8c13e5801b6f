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


class EdgeHeartbeat(msgspec.Struct, frozen=True, kw_only=True):
    edge_id: str
    started_at: str
    connections: int
    rooms: int


class EdgeStatus(msgspec.Struct, frozen=True, kw_only=True):
    edge_id: str
    version: str
    started_at: str
    connections: int
    rooms: int
    draining: bool
