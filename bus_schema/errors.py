"""Machine-readable error codes shared by actors (in replies) and edges (to clients)."""

from enum import StrEnum


class ErrorCode(StrEnum):
    ROOM_NOT_FOUND = "room_not_found"
    ROOM_FULL = "room_full"
    ROOM_EXISTS = "room_exists"
    NOT_IN_ROOM = "not_in_room"
    KICKED = "kicked"
    """The participant was removed by an operator: its token may not come back."""
    BANNED = "banned"
    """The token's identity is banned from the room."""
    TOKEN_REVOKED = "token_revoked"  # noqa: S105 (an error code, not a password)
    """The room's tokens were revoked after this one was issued."""
    JOIN_SECRET_REQUIRED = "join_secret_required"  # noqa: S105 (an error code)
    """A ``secret`` room's join endpoint without the right secret."""
    INVITE_ONLY = "invite_only"
    """A ``token`` room's join endpoint: only minted tokens get in."""
    GRANT_DENIED = "grant_denied"
    """The token does not grant what the message or call needs."""
    SUPERSEDED = "superseded"
    """A connection attempt older than the participant's connection in the
    room (a late retry of a socket that was given up): refused, the newer one stays."""
    NOT_OWNER = "not_owner"
    """The worker does not (or no longer) own the room: retry, another worker will."""
    BAD_COMMAND = "bad_command"
    CALLS_SESSION_LIMIT = "calls_session_limit"
    """The participant (or the room) holds as many Calls sessions as it may."""
    ROOM_STATE_FULL = "room_state_full"
    """The room's state would pass its byte bound (``ROOM_STATE_MAX_BYTES``)."""
    UNAVAILABLE = "unavailable"
    """No actor answered before the deadline."""
    INTERNAL = "internal"
