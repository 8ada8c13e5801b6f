"""Room events (owning actor -> edges, core pub/sub on ``signal.room.<room>.evt``).

Each event carries the room's ``seq``, one more than the previous event of the
room. Events are published only after the state they describe is saved.
"""

import msgspec


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    room_id: str
    seq: int
    participant_id: str
    """Who the event is about; clients never receive events about themselves."""
    cmd_id: str = ""
    """The command that caused it, for events relaying a client's message: an
    edge that sees the same command twice (retried across a failover) delivers
    it once."""


class ParticipantJoined(_Event, frozen=True, tag="joined"):
    name: str


class ParticipantLeft(_Event, frozen=True, tag="left"):
    reason: str
    """``closed`` (clean close), ``timeout`` (not back within the resume grace
    period), ``edge_lost`` (its edge stopped sending heartbeats) or ``kicked``
    (removed by an operator)."""


class SessionPublished(_Event, frozen=True, tag="session"):
    session_id: str
    frame: msgspec.Raw


class TrackStateChanged(_Event, frozen=True, tag="track_state"):
    kind: str
    enabled: bool
    frame: msgspec.Raw
    by: str = ""
    """``admin`` when an operator muted the track: the participant is told too."""


class Broadcasted(_Event, frozen=True, tag="broadcast"):
    frame: msgspec.Raw


class RoomClosed(_Event, frozen=True, tag="closed"):
    """The room is gone (``participant_id`` is empty): every client gets
    ``room-closed`` and is disconnected."""

    reason: str
    """``admin``, ``empty_timeout`` or ``departure_timeout``."""


Event = (
    ParticipantJoined
    | ParticipantLeft
    | SessionPublished
    | TrackStateChanged
    | Broadcasted
    | RoomClosed
)
