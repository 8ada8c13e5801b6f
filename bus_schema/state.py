"""Values kept in JetStream KV (see `bus_schema.buckets`)."""

from typing import Any

import msgspec


class RoomMeta(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A room's metadata, in the old service's camelCase shape (``rooms`` bucket)."""

    id: str
    name: str
    created_by: str
    created_at: str
    max_participants: int


class Participant(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One participant of a room, as the owning actor keeps it."""

    id: str
    name: str
    joined_at: str
    edge_id: str
    """The edge holding the participant's current connection."""
    conn_id: str
    """The current connection; commands from an older connection are refused."""
    session_id: str | None = None
    """The Calls session the participant published, if any."""
    tracks: list[dict[str, Any]] = msgspec.field(default_factory=list)
    """The tracks published with the session, as the client sent them."""
    audio: bool | None = None
    """Last ``track-state`` for audio; ``None`` until the participant sent one."""
    video: bool | None = None


class RoomState(msgspec.Struct, frozen=True, kw_only=True):
    """A room's whole state (``room_state`` bucket), written only by its owner."""

    meta: RoomMeta
    seq: int = 0
    """The room's event sequence number: every published event increments it."""
    participants: dict[str, Participant] = msgspec.field(default_factory=dict)
    recent_commands: list[str] = msgspec.field(default_factory=list)
    """Ids of the last applied commands, oldest first: a retried command is a no-op."""

    @property
    def room_id(self) -> str:
        return self.meta.id
