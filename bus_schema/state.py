"""Values kept in JetStream KV (see `bus_schema.buckets`)."""

import msgspec

from bus_schema.access import Grants
from bus_schema.events import TRACK_KINDS as TRACK_KINDS
from bus_schema.events import Event
from bus_schema.events import TrackKind as TrackKind

TRACK_LOCATIONS: tuple[str, ...] = ("local", "remote")


class RoomMeta(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A room's metadata, in the old service's camelCase shape (``rooms`` bucket)."""

    id: str
    name: str
    created_by: str
    created_at: str
    max_participants: int
    empty_timeout: float = 0.0
    """Seconds a room nobody has joined lives (0: until ``ROOM_TTL``)."""
    departure_timeout: float = 0.0
    """Seconds a room lives after its last participant left (0: until ``ROOM_TTL``)."""
    join_policy: str = "open"
    """``open``, ``secret`` or ``token`` (`bus_schema.access.JoinPolicy`); chosen
    at creation and never changed."""


class Track(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An announced track, as a room keeps and replays it: only the fields Calls
    clients use (`bus_schema.limits.track_problem` says which values fit).
    Unknown fields a client adds are relayed in its frame but never kept."""

    trackName: str
    kind: str | None = None
    mid: str | None = None
    location: str | None = None
    sessionId: str | None = None


class Participant(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One participant of a room, as the owning actor keeps it."""

    id: str
    name: str
    joined_at: str
    edge_id: str
    """The edge holding the participant's current connection."""
    conn_id: str
    """The current connection; commands from an older connection are refused."""
    connected_at: int = 0
    """When the current connection was opened at its edge (Unix ms; 0: not
    known): an older connection attempt may not replace it."""
    session_id: str | None = None
    """The Calls session the participant published, if any."""
    tracks: list[Track] = msgspec.field(default_factory=list)
    """The tracks announced with the session (known fields only)."""
    audio: bool | None = None
    """Last ``track-state`` for audio; ``None`` until the participant sent one."""
    video: bool | None = None
    disconnected_until: float | None = None
    """Set while the participant's connection is gone: the Unix time at which its
    resume grace period ends and it leaves the room."""
    identity: str | None = None
    """The app's user id from a minted token: one participant per identity."""
    grants: Grants | None = None
    """What the participant's token allows (``None``: everything, not hidden)."""
    issued_at: int = 0
    """The ``iat`` of the participant's token (a revocation removes it)."""

    @property
    def hidden(self) -> bool:
        return self.grants is not None and self.grants.hidden


class RoomState(msgspec.Struct, frozen=True, kw_only=True):
    """A room's whole state (``room_state`` bucket), written only by its owner."""

    meta: RoomMeta
    seq: int = 0
    """The room's event sequence number: every published event increments it."""
    seq_reserved: int = 0
    """Sequence numbers up to this one may already be in use. Broadcasts (which
    change nothing but the sequence number) are numbered from this reservation
    without a write; a new owner starts after it, so no number is ever reused."""
    participants: dict[str, Participant] = msgspec.field(default_factory=dict)
    recent_commands: list[str] = msgspec.field(default_factory=list)
    """Ids of the last applied commands, oldest first: a retried command is a no-op."""
    calls_sessions: dict[str, str] = msgspec.field(default_factory=dict)
    """Calls session id -> the participant that created it through the proxy.
    A participant's sessions are dropped when it leaves."""
    departed: dict[str, float] = msgspec.field(default_factory=dict)
    """Participants who left (or were removed), with when they left (Unix
    seconds), for as long as their token could otherwise still pass as a fresh
    one not yet connected (``CALLS_PRECONNECT_WINDOW``): the Calls proxy refuses
    them. Bounded by time and count."""
    preconnect: dict[str, float] = msgspec.field(default_factory=dict)
    """Participants holding Calls sessions before their WebSocket first
    connected, with when their token stops passing as fresh (Unix seconds):
    if they have not joined by then, their sessions are dropped."""
    outbox: list[Event] = msgspec.field(default_factory=list)
    """The events of the last saved turn, and those of earlier turns whose
    event-log entries were not yet confirmed. The next owner publishes them
    again when it loads the room, in case the previous one died before it
    could, and appends their log entries (each is stored once); receivers drop
    events whose sequence number they have already seen. Only while the save is
    recent (`saved_at`): later, the previous owner had long confirmed them, and
    the log would no longer recognise a repeat."""
    saved_at: float = 0.0
    """When the owner wrote this state (Unix seconds; 0: by a version that did
    not say)."""
    log_seq: int = 0
    """A sequence number of the event log (``SIGNALING_LOG``) at or before the
    first entry of a change made after this save: mute changes are numbered
    from the reservation and written lazily, and a new owner reads their
    entries from the log after this point (`room_actors.state.with_track_changes`)."""
    close_at: float | None = None
    """Unix seconds when the empty room is closed (empty or departure timeout)."""
    close_reason: str = ""
    kicked: list[str] = msgspec.field(default_factory=list)
    """Participants removed by an operator: their tokens may not rejoin."""
    banned: list[str] = msgspec.field(default_factory=list)
    """Identities banned from the room: none of their tokens gets in (bounded,
    oldest forgotten first)."""
    tokens_revoked_at: int = 0
    """Unix second of the last revocation: tokens issued at or before it are refused."""
    join_secret_hash: str = ""
    """``secret`` rooms: the SHA-256 of the join secret (the secret is never kept)."""
    secret_rotated_at: int = 0
    """Unix second of the last rotation of the join secret: tokens without an
    identity issued at or before it (join tokens got with the old secret) no
    longer enter, unless their participant is in the room."""

    @property
    def issued_after(self) -> int:
        """A token issued now must be dated after this second to be accepted."""
        return max(self.tokens_revoked_at, self.secret_rotated_at)

    closed: bool = False
    """The room was closed; its closing events are in ``outbox``. Written just
    before the keys are deleted, so an owner that dies in between leaves the
    close for the next owner to finish (publish, then delete)."""

    @property
    def room_id(self) -> str:
        return self.meta.id


class CallsSession(msgspec.Struct, frozen=True, kw_only=True):
    """Who owns a Calls session (``calls_sessions`` bucket, key = session id)."""

    session_id: str
    room_id: str
    participant_id: str


class RoomActivity(msgspec.Struct, frozen=True, kw_only=True):
    """Why a room is in ``active_rooms``: a new owner of its partition loads it."""

    room_id: str
    occupied: bool
    """Someone is in the room (connected or within the resume grace)."""
    close_at: float | None = None
    """Unix seconds when the empty room is to close, if set."""


class WorkerLease(msgspec.Struct, frozen=True, kw_only=True):
    """A live room actor worker (``actor_leases`` bucket, key ``worker.<id>``)."""

    worker_id: str
    started_at: str
    renewed_at: str
    leaving: bool = False
    """Set while the worker hands its partitions over before it stops."""
    partitions: list[int] = msgspec.field(default_factory=list)
    """The partitions it owned at its last renewal (for operators)."""
    incarnation: str = ""
    """New each time the worker registers (at start, and after it lost its
    lease): its partition keys of an earlier incarnation are not its own."""


class PartitionLease(msgspec.Struct, frozen=True, kw_only=True):
    """The owner of one partition (``actor_leases`` bucket, key ``partition.<n>``)."""

    partition: int
    worker_id: str
    since: str
    incarnation: str = ""
    """The owner's incarnation when it claimed the partition (see
    `WorkerLease.incarnation`; empty: written before incarnations, any)."""
