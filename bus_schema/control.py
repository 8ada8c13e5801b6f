"""Control messages for one edge (``signal.edge.<edge>.ctl``)."""

import msgspec


class CloseConnection(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="close"):
    conn_id: str
    code: int
    reason: str
    notice: str = ""
    """What the client is told before the close, as a kind its edge renders:
    ``""`` (nothing) or `KICKED`."""
    by: str = ""
    """`KICKED` by a room admin: its participant id (``""``: an operator)."""


KICKED = "kicked"
"""`CloseConnection.notice`: the participant was removed from the room."""


EdgeControl = CloseConnection


class CloseCallsTracks(msgspec.Struct, frozen=True, kw_only=True):
    """A participant left: close the tracks it pushed on these Calls sessions
    (``signal.calls.cleanup``, request/reply, any edge with Calls configured)."""

    room_id: str
    participant_id: str
    session_ids: list[str]
