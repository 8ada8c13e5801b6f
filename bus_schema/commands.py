"""Commands (edge -> owning actor, request/reply) and their replies.

Every command carries ``cmd_id``; the actor remembers the ids it applied
recently, so an edge may retry a command after a timeout and it is applied once.
"""

import msgspec

from bus_schema.access import Grants
from bus_schema.events import Event
from bus_schema.state import Participant, RoomMeta, Track


class _Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    cmd_id: str
    room_id: str


class CreateRoom(_Command, frozen=True, tag="create_room"):
    name: str
    created_by: str
    created_at: str
    max_participants: int
    empty_timeout: float | None = None
    """Seconds; ``None``: the worker's default (``ROOM_EMPTY_TIMEOUT``)."""
    departure_timeout: float | None = None
    """Seconds; ``None``: the worker's default (``ROOM_DEPARTURE_TIMEOUT``)."""
    join_policy: str = "open"
    join_secret_hash: str = ""
    """``secret`` rooms: the hash of the join secret (`bus_schema.access.secret_hash`)."""


class Join(_Command, frozen=True, tag="join"):
    """A WebSocket connected with a valid token. Rejoining with the same
    participant id replaces the older connection (no leave/join for others)."""

    participant_id: str
    name: str
    edge_id: str
    conn_id: str
    identity: str | None = None
    grants: Grants | None = None
    """The token's grants (``None``: every grant)."""
    issued_at: int = 0
    """The token's ``iat``: refused when the room's tokens were revoked since."""
    connected_at: int = 0
    """When the socket was opened at its edge (Unix ms; 0: not said). A join
    older than the connection its participant (or another token of its
    identity) has in the room is refused, so a late retry for a socket that
    was given up never replaces the connection the client moved to."""


class Leave(_Command, frozen=True, tag="leave"):
    """The connection ``conn_id`` of the participant is gone. A no-op when the
    participant has a newer connection, or is not in the room."""

    participant_id: str
    conn_id: str
    reason: str = "closed"


class Disconnect(_Command, frozen=True, tag="disconnect"):
    """The connection ``conn_id`` dropped without a Close frame. The participant
    keeps its place for the resume grace period: a Join with the same
    participant id within it resumes silently; after it, the others get a leave."""

    participant_id: str
    conn_id: str


class RegisterCallsSession(_Command, frozen=True, tag="register_calls_session"):
    """The participant created this Calls session through the proxy: it owns it.
    Refused for a participant that may not use the proxy (see `CheckMember`) or
    that is at its cap of sessions, or when the room is at its cap."""

    participant_id: str
    session_id: str
    issued_at: int = 0
    """The ``iat`` of the caller's token (see `CheckMember`)."""
    identity: str | None = None


class CheckMember(_Command, frozen=True, tag="check_member"):
    """Read-only: may this participant use the Calls proxy now?

    Yes while it is in the room (also within its resume grace period), and,
    before its WebSocket first connects, while its token is fresh (issued less
    than ``CALLS_PRECONNECT_WINDOW`` ago). No once it left, was removed, or the
    room closed. Answered with `Ack` or `Rejected`."""

    participant_id: str
    issued_at: int
    """The ``iat`` of the caller's token, Unix seconds."""
    new_session: bool = False
    """The caller wants to create a Calls session: also refused at the caps."""
    identity: str | None = None
    """The caller's identity, if its token has one: refused once banned."""


class _FromParticipant(_Command, frozen=True, kw_only=True, omit_defaults=True):
    participant_id: str
    conn_id: str
    frame: msgspec.Raw
    """The client's message as other clients will see it: identity fields
    stamped, ``room_seq`` removed. Relayed untouched."""
    quiet: bool = False
    """Answer a refusal only: the sending edge learns of success from the
    event carrying this ``cmd_id`` on the room's stream, which it receives anyway."""


class PublishSession(_FromParticipant, frozen=True, tag="publish_session"):
    session_id: str
    tracks: list[Track]


class SetTrackState(_FromParticipant, frozen=True, tag="set_track_state"):
    kind: str
    enabled: bool


class Broadcast(_FromParticipant, frozen=True, tag="broadcast"):
    """Any other client message addressed ``"to": "all"``."""


class GetSnapshot(_Command, frozen=True, tag="get_snapshot"):
    """Read-only: the room's current state (an edge resynchronising).

    With ``since``, the actor answers `Catchup` with the events after that
    sequence number when it still has them all in memory, and `Snapshot`
    otherwise."""

    since: int | None = None


# --- operators (the room service API of the edges) -----------------------------


class GetRoom(_Command, frozen=True, tag="get_room"):
    """Read-only: the room's metadata and participants (answered with `RoomInfo`)."""


class UpdateRoom(_Command, frozen=True, tag="update_room"):
    """Change the room's name and/or size (answered with `RoomInfo`)."""

    name: str | None = None
    max_participants: int | None = None


class CloseRoom(_Command, frozen=True, tag="close_room"):
    """Close the room: every participant is told and disconnected; the room is gone."""

    reason: str = "admin"


class RemoveParticipant(_Command, frozen=True, tag="remove_participant"):
    """Remove a participant (told ``kicked``, disconnected); its token may not
    rejoin, and with ``ban`` neither may any token of its identity."""

    participant_id: str
    ban: bool = False
    by: str = ""
    """``""``: an operator (the room service API). Otherwise the participant
    who asked from its socket: refused unless it is in the room on ``by_conn_id``
    with the ``room_admin`` grant."""
    by_conn_id: str = ""


class MuteTrack(_Command, frozen=True, tag="mute_track"):
    """Set a participant's audio or video state; the participant and the others
    get ``track-state``."""

    participant_id: str
    kind: str
    enabled: bool = False
    by: str = ""
    """As `RemoveParticipant.by`."""
    by_conn_id: str = ""


class BanIdentity(_Command, frozen=True, tag="ban_identity"):
    """Ban an identity from the room (its participant, if present, is removed),
    or with ``lift`` let it in again."""

    identity: str
    lift: bool = False


class RevokeTokens(_Command, frozen=True, tag="revoke_tokens"):
    """Every token of the room issued until now is refused from now on; every
    participant (all hold such tokens) is removed and disconnected (4003)."""


class SetJoinSecret(_Command, frozen=True, tag="set_join_secret"):
    """A ``secret`` room's new join secret (its hash): the old one is refused."""

    join_secret_hash: str


Command = (
    CreateRoom
    | Join
    | Leave
    | Disconnect
    | RegisterCallsSession
    | CheckMember
    | PublishSession
    | SetTrackState
    | Broadcast
    | GetSnapshot
    | GetRoom
    | UpdateRoom
    | CloseRoom
    | RemoveParticipant
    | MuteTrack
    | BanIdentity
    | RevokeTokens
    | SetJoinSecret
)


class _Reply(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    pass


class Ack(_Reply, frozen=True, tag="ack"):
    seq: int
    """The room's sequence number after the command."""


class Snapshot(_Reply, frozen=True, tag="snapshot"):
    room_id: str
    seq: int
    max_participants: int
    participants: list[Participant]
    resumed: bool = False
    """For a Join: the participant was already in the room (a reconnect)."""


class Rejected(_Reply, frozen=True, tag="rejected"):
    code: str
    message: str
    retryable: bool = False


class Catchup(_Reply, frozen=True, tag="catchup"):
    """The events after ``GetSnapshot.since``, in order (possibly none)."""

    room_id: str
    events: list[Event]
    skip_to: int = 0
    """Numbers up to this one carried only broadcasts of a previous owner that
    cannot be replayed: go on from here."""


class RoomInfo(_Reply, frozen=True, tag="room"):
    """A room as operators see it."""

    meta: RoomMeta
    seq: int
    participants: list[Participant]
    banned: list[str] = msgspec.field(default_factory=list)
    """Identities banned from the room."""


Reply = Ack | Snapshot | Catchup | Rejected | RoomInfo
