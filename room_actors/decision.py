"""What a turn must do, and the vocabulary `room_actors.state.decide` speaks:
`Decision`, the `Limits` it applies, the internal messages a room's actor sends
itself, and the standard refusals. Pure: no I/O."""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from bus_schema.commands import (
    Rejected,
    Reply,
    RoomInfo,
    Snapshot,
)
from bus_schema.control import CloseCallsTracks, CloseConnection
from bus_schema.errors import ErrorCode
from bus_schema.events import (
    Event,
)
from bus_schema.log import LogEntry
from bus_schema.state import CallsSession, RoomState

if TYPE_CHECKING:
    from room_actors.settings import ActorSettings


class Decision(msgspec.Struct, frozen=True):
    """Everything one message makes its room's turn do. (A Struct, not a
    dataclass: a turn copies it with one field changed on every message, and
    `msgspec.structs.replace` is several times faster than `dataclasses.replace`.)"""

    state: RoomState | None
    """The room after the message (``None``: there is none, or it just closed)."""
    reply: Reply
    events: tuple[Event, ...] = ()
    """Published in order once the state is saved (and saved with it: the outbox)."""
    control: tuple[tuple[str, CloseConnection], ...] = ()
    """(edge id, message) pairs to send once the state is saved."""
    cleanup: tuple[CloseCallsTracks, ...] = ()
    """Calls sessions of participants who left: their owners are forgotten in
    ``calls_sessions`` (before the events go out) and an edge closes their tracks."""
    log: tuple[LogEntry, ...] = ()
    """Event log entries, in order: ``room_created``, then one per logged event."""
    sessions: tuple[CallsSession, ...] = ()
    """Calls session owners to write into ``calls_sessions`` (the proxy reads them)."""
    meta: bool = False
    """Write the room's metadata into ``rooms`` (created, changed, kept alive)."""
    write: bool = False
    """Save the state before anything goes out: a durable change, or a keep-alive
    (the unchanged state written again so that it does not age out of KV)."""
    durable: bool = True
    """False when a change need not be written before it is published: a
    broadcast numbered within the sequence reservation."""
    closed: RoomState | None = None
    """The room closed: its last state, saved with its events, then deleted."""
    republish: bool = False
    """Publish the room's last events again (they live in the actor's memory)."""
    catch_up_since: int | None = None
    """An edge missed events after this number: the actor answers them from
    its memory instead of ``reply`` when it still has them all."""

    @property
    def deleted(self) -> bool:
        """The room is closed: its stored state and metadata are deleted."""
        return self.closed is not None


SEQ_BLOCK = 1000
"""How many sequence numbers one write reserves for broadcasts."""


KICKED_KEPT = 1000
"""How many removed participants a room remembers (their tokens stay refused)."""
BANNED_KEPT = 500
"""How many banned identities a room remembers (the oldest ban is forgotten first)."""
DEPARTED_KEPT = 256
"""How many recent leavers a room remembers for the Calls proxy at most (each
only for ``preconnect_window`` seconds)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds and timeouts `decide` applies. Built from the worker's
    settings (`from_settings`): each default is written once, in
    `room_actors.settings`; the two list bounds that are not settings are the
    constants above."""

    recent_commands: int
    resume_grace: float
    """Seconds a participant whose connection dropped keeps its place."""
    empty_timeout: float
    """Default seconds a room nobody joins lives (0: no limit but ``ROOM_TTL``)."""
    departure_timeout: float
    """Default seconds a room lives after its last participant left."""
    calls_sessions_per_participant: int
    calls_sessions_per_room: int
    preconnect_window: float
    """Seconds a token may use the Calls proxy before its WebSocket first connects."""
    state_max_bytes: int
    """A command that would make the stored state larger is refused."""
    kicked_kept: int
    departed_kept: int
    banned_kept: int = BANNED_KEPT
    mute_save_delay: float = 1.0
    """Seconds a mute change (numbered from the reservation) may go unsaved."""

    @classmethod
    def from_settings(cls, settings: "ActorSettings") -> "Limits":
        return cls(
            recent_commands=settings.recent_commands,
            resume_grace=settings.resume_grace,
            empty_timeout=settings.empty_timeout,
            departure_timeout=settings.departure_timeout,
            calls_sessions_per_participant=settings.calls_sessions_per_participant,
            calls_sessions_per_room=settings.calls_sessions_per_room,
            preconnect_window=settings.calls_preconnect_window,
            state_max_bytes=settings.room_state_max_bytes,
            kicked_kept=KICKED_KEPT,
            departed_kept=DEPARTED_KEPT,
            mute_save_delay=settings.mute_save_delay,
        )


@dataclass(frozen=True, slots=True)
class ExpireDisconnected:
    """Internal: a deadline passed: remove participants whose resume grace
    period has ended, and close the room if its empty or departure timeout is due."""


@dataclass(frozen=True, slots=True)
class EdgesLost:
    """Internal: these edges stopped sending heartbeats; their connected
    participants leave."""

    edge_ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Internal: the room is in use: write its state and projections again,
    unchanged, so that they do not age out of KV."""


@dataclass(frozen=True, slots=True)
class Republish:
    """Internal: publish the last events again (after a NATS reconnect, events
    may have been lost with a node)."""


@dataclass(frozen=True, slots=True)
class Flush:
    """Internal: changes were made without a write (mute changes numbered from
    the reservation): save the state now."""


@dataclass(frozen=True, slots=True)
class Activate:
    """Internal: the room was taken over: load it (its deadlines are set and
    its outbox replayed) and change nothing."""


Internal = ExpireDisconnected | EdgesLost | KeepAlive | Republish | Flush | Activate


ROOM_NOT_FOUND = Rejected(code=ErrorCode.ROOM_NOT_FOUND, message="Room not found")
NOT_IN_ROOM = Rejected(code=ErrorCode.NOT_IN_ROOM, message="Not in this room")
BAD_KIND = Rejected(code=ErrorCode.BAD_COMMAND, message="kind must be audio or video")
KICKED = Rejected(code=ErrorCode.KICKED, message="Removed from this room")
BANNED = Rejected(code=ErrorCode.BANNED, message="Banned from this room")
TOKEN_REVOKED = Rejected(
    code=ErrorCode.TOKEN_REVOKED, message="This room's tokens were revoked; get a new one"
)
SUPERSEDED = Rejected(
    code=ErrorCode.SUPERSEDED, message="This token is connected on a newer socket"
)
SECRET_ROTATED = Rejected(
    code=ErrorCode.TOKEN_REVOKED,
    message="The room's join secret changed since this token was issued; join again",
)
GRANT_DENIED_PUBLISH = Rejected(
    code=ErrorCode.GRANT_DENIED, message="Your token does not allow publishing"
)
GRANT_DENIED_SEND = Rejected(
    code=ErrorCode.GRANT_DENIED, message="Your token does not allow sending messages"
)
NO_JOIN_SECRET = Rejected(
    code=ErrorCode.BAD_COMMAND, message="Only secret rooms have a join secret"
)
NOT_ROOM_ADMIN = Rejected(code=ErrorCode.GRANT_DENIED, message="Only a room admin may moderate")
NO_SUCH_PARTICIPANT = Rejected(code=ErrorCode.NOT_IN_ROOM, message="No such participant")
STATE_FULL = Rejected(
    code=ErrorCode.ROOM_STATE_FULL, message="The room cannot keep more; leave something out"
)


def snapshot(state: RoomState, *, resumed: bool = False) -> Snapshot:
    return Snapshot(
        room_id=state.room_id,
        seq=state.seq,
        max_participants=state.meta.max_participants,
        participants=list(state.participants.values()),
        resumed=resumed,
    )


def room_info(state: RoomState) -> RoomInfo:
    return RoomInfo(
        meta=state.meta,
        seq=state.seq,
        participants=list(state.participants.values()),
        banned=state.banned,
    )


def sessions_of(state: RoomState, ids: Iterable[str] | None = None) -> tuple[CallsSession, ...]:
    """The owner records of these Calls sessions of the room (all by default)."""
    owners = state.calls_sessions
    return tuple(
        CallsSession(session_id=sid, room_id=state.room_id, participant_id=owners[sid])
        for sid in (owners if ids is None else ids)
        if sid in owners
    )
