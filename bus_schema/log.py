"""The durable room event log: JetStream stream ``SIGNALING_LOG``.

The owning actor appends one `LogEntry` per room lifecycle event, after the
state it describes is saved, on ``signal.log.<partition>.<room>.<event>``
(`bus_schema.subjects.log_event`), with ``Nats-Msg-Id`` set to the entry's
``id`` so a repeated append is stored once. Webhook dispatchers read it; so can
operators (``nats stream view SIGNALING_LOG``, ``nats sub 'signal.log.>'``).
"""

import msgspec

from bus_schema.state import RoomMeta

LOG_STREAM = "SIGNALING_LOG"
DEAD_LETTER_STREAM = "SIGNALING_WEBHOOKS_DEAD"
"""Webhook deliveries that kept failing, kept for inspection."""

ROOM_CREATED = "room_created"
ROOM_CLOSED = "room_closed"
PARTICIPANT_JOINED = "participant_joined"
PARTICIPANT_LEFT = "participant_left"
SESSION_PUBLISHED = "session_published"
TRACK_STATE_CHANGED = "track_state_changed"


class LogEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One event of the log, and the body of its webhook."""

    id: str
    """``<room_id>.<room_seq>``: unique, the same on every retry and redelivery."""
    event: str
    room_id: str
    room_seq: int
    """The room's sequence number of the event (``room_created`` is 0): per
    room, increasing; webhooks arrive in this order."""
    at: str
    """When the owning actor decided it (ISO 8601, UTC)."""
    participant_id: str | None = None
    participant_name: str | None = None
    reason: str | None = None
    """``participant_left``: ``closed``, ``timeout``, ``kicked`` or ``edge_lost``;
    ``room_closed``: ``admin``, ``empty_timeout`` or ``departure_timeout``."""
    session_id: str | None = None
    kind: str | None = None
    enabled: bool | None = None
    by: str | None = None
    """``admin`` when an operator caused it, the participant id of a room admin."""
    room: RoomMeta | None = None
    """``room_created``: the room's metadata."""
    identity: str | None = None
    """``participant_joined``: the identity of a minted token, if any."""
    hidden: bool | None = None
    """The participant is hidden (``participant_joined``/``participant_left``):
    kept for operators, never sent to webhooks. Its ``id`` is
    ``<room_id>.<room_seq>.<participant_id>.<event>``, since it takes no
    number of the room's own."""


log_entry = msgspec.json.Decoder(LogEntry)
