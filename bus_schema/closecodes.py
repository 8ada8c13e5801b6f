"""WebSocket close codes the service uses, and whether a client should reconnect.

1000-1015 are the standard codes; 4000-4999 are ours.
"""

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    POLICY_VIOLATION = 1008
    """The client kept misbehaving (rate, invalid frames). Do not reconnect at once."""
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    """The edge is draining: reconnect (to any edge) with the same token and resume."""
    TRY_AGAIN_LATER = 1013
    """No room actor answered: reconnect after a short delay."""
    REPLACED = 4000
    """The same token connected again elsewhere; this older socket is closed. Do not reconnect."""
    NOT_IN_ROOM = 4003
    """The participant is no longer in the room. Join again to get a new token."""
    ROOM_NOT_FOUND = 4004
    SLOW_CONSUMER = 4008
    """The client did not read fast enough and its pending output passed the bound."""
    ROOM_FULL = 4009
