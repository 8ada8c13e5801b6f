"""Room events (owning actor -> edges, core pub/sub on ``signal.room.<room>.evt``).

Each event carries the room's ``seq``, one more than the previous event of the
room. Events are published only after the state they describe is saved.
"""

from typing import Literal, TypeGuard, get_args

import msgspec

TrackKind = Literal["audio", "video"]
"""The kinds of media track: in ``track-state``, in announced tracks, in mutes
(declared here, the lowest module that needs it; `bus_schema.state` re-exports it)."""
TRACK_KINDS: tuple[str, ...] = get_args(TrackKind)


def is_track_kind(value: object) -> TypeGuard[TrackKind]:
    return value in TRACK_KINDS


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
    identity: str = ""
    """The app's user id of a minted token (for the event log; clients never see it)."""


class ParticipantLeft(_Event, frozen=True, tag="left"):
    reason: str
    """``closed`` (clean close), ``timeout`` (not back within the resume grace
    period), ``edge_lost`` (its edge stopped sending heartbeats), ``kicked``
    (removed by an operator or a room admin), ``banned`` (its identity was),
    ``revoked`` (the room's tokens were) or ``replaced`` (a newer token of its
    identity joined)."""
    by: str = ""
    """``kicked``/``banned`` by a room admin: its participant id."""


class SessionPublished(_Event, frozen=True, tag="session"):
    session_id: str
    frame: msgspec.Raw


class TrackStateChanged(_Event, frozen=True, tag="track_state"):
    """A participant's own ``track-state``: its frame is relayed as sent."""

    kind: TrackKind
    enabled: bool
    frame: msgspec.Raw


class TrackMuted(_Event, frozen=True, tag="track_muted"):
    """Someone else set the participant's track (an operator: ``by`` is
    ``admin``). Edges render it as a ``track-state`` with ``by``, and the
    participant is told too."""

    kind: TrackKind
    enabled: bool
    by: str


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
    | TrackMuted
    | Broadcasted
    | RoomClosed
)
