"""The client-facing WebSocket protocol (docs/protocol.md): parsing client frames and
rendering server frames.

Client frames are JSON objects. Identity fields are stamped from the verified
token (``from``; and ``roomId``/``participantId``/``participantName`` on
``cloudflare-session``), server-only fields (`SERVER_FIELDS`) are removed, and
every other field is relayed untouched. `parse` answers one `Inbound`: a small
struct per route, for the socket to dispatch with one ``match``.

Targeted frames come from other edges over NATS; `peer_frame` checks that they
are what an edge's `parse` produces before one reaches a client.
"""

from collections.abc import Container
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from bus_schema.commands import Snapshot
from bus_schema.events import ParticipantJoined, ParticipantLeft, RoomClosed, TrackMuted
from bus_schema.ids import is_uuid
from bus_schema.limits import track_problem
from bus_schema.state import Track, TrackKind

SESSION = "cloudflare-session"
TRACK_STATE = "track-state"
RESERVED_TYPES = frozenset({"welcome", "join", "leave", "error", "room-closed", "kicked"})
"""Types only the server sends: a client cannot forge a join or a welcome."""
SERVER_FIELDS = frozenset({"room_seq", "by"})
"""Fields only the server sets (the room's sequence number, ``"by":"admin"`` on an
operator's mute): removed from every client frame, whatever it sent under them."""
ALL = "all"
MAX_STRING = 256
"""Characters in ``type``, ``to`` and ``sessionId``."""

_T = TypeVar("_T")
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class ProtocolError(Exception):
    """A client frame the server refuses; ``code`` and ``message`` go back in an ``error``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Inbound(msgspec.Struct, frozen=True, kw_only=True, tag_field="route"):
    """A client frame, validated and stamped: ``frame`` is what is relayed,
    ``type`` the client's own type (a metric label). The tag is the route."""

    frame: bytes
    type: str


class SessionFrame(_Inbound, frozen=True, tag="session"):
    """``cloudflare-session``: the room's actor keeps the session and its tracks."""

    session_id: str
    tracks: list[Track]


class TrackStateFrame(_Inbound, frozen=True, tag="track-state"):
    """``track-state``: the room's actor keeps the mute state."""

    kind: TrackKind
    enabled: bool


class BroadcastFrame(_Inbound, frozen=True, tag="broadcast"):
    """Any other frame to ``"all"`` (or with no ``to``): ordered by the room's actor."""


class DirectFrame(_Inbound, frozen=True, tag="direct"):
    """Any other frame to one participant: published to it, not through the actor."""

    to: str


class MuteFrame(_Inbound, frozen=True, tag="mute"):
    """``mute`` from a room admin: as the room service API's mute."""

    participant_id: str
    kind: TrackKind
    muted: bool


class RemoveFrame(_Inbound, frozen=True, tag="remove"):
    """``remove`` from a room admin: as the room service API's removal."""

    participant_id: str
    ban: bool


Inbound = SessionFrame | TrackStateFrame | BroadcastFrame | DirectFrame | MuteFrame | RemoveFrame


def route(inbound: Inbound) -> str:
    """How a frame travels (``session``, ``track-state``, ``broadcast``,
    ``direct``): its tag, a metric label."""
    return str(inbound.__struct_config__.tag)


class _SessionFields(msgspec.Struct):
    sessionId: str
    tracks: list[Track] = []


class _TrackStateFields(msgspec.Struct):
    kind: TrackKind
    enabled: bool


class _MuteFields(msgspec.Struct):
    participant_id: str
    kind: TrackKind
    muted: bool = True


class _RemoveFields(msgspec.Struct):
    participant_id: str
    ban: bool = False


MUTE = "mute"
REMOVE = "remove"
MODERATION_TYPES = frozenset({MUTE, REMOVE})
"""A room admin's requests (docs/access.md): never relayed to anyone."""


@dataclass(frozen=True, slots=True)
class Identity:
    room_id: str
    participant_id: str
    participant_name: str


def parse(
    data: str | bytes,
    who: Identity,
    *,
    max_string: int = MAX_STRING,
    max_broadcast: int | None = None,
) -> Inbound:
    """Validate one client frame and stamp it with the sender's identity. A
    frame that fans out to the room may take at most ``max_broadcast`` bytes as
    relayed; a targeted one is bounded by the WebSocket frame size only."""
    try:
        inbound = _parse(data, who, max_string)
    except RecursionError:
        # msgspec decodes (and encodes) nested values recursively: a frame of
        # 100,000 brackets is refused like any other bad frame, not a crash.
        raise ProtocolError("too_deep", "Message is nested too deeply") from None
    if (
        max_broadcast is not None
        and isinstance(inbound, SessionFrame | TrackStateFrame | BroadcastFrame)
        and len(inbound.frame) > max_broadcast
    ):
        raise ProtocolError(
            "too_large",
            f"Messages to the whole room may take at most {max_broadcast} bytes; "
            "send larger ones to one participant",
        )
    return inbound


def _parse(data: str | bytes, who: Identity, max_string: int) -> Inbound:
    try:
        message = _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        # msgspec raises UnicodeDecodeError for invalid UTF-8 inside a string.
        raise ProtocolError("invalid_json", "Message is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("invalid_message", "Message must be a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str) or not kind or len(kind) > max_string:
        raise ProtocolError("invalid_message", "Message needs a string `type`")
    if kind in RESERVED_TYPES:
        raise ProtocolError("reserved_type", f"Clients cannot send `{kind}` messages")
    for name in SERVER_FIELDS:
        message.pop(name, None)
    message["from"] = who.participant_id
    if kind == SESSION:
        fields = _convert(message, _SessionFields)
        if not fields.sessionId or len(fields.sessionId) > max_string:
            raise ProtocolError("invalid_message", "`sessionId` must be a non-empty string")
        problem = track_problem(fields.tracks)
        if problem is not None:
            raise ProtocolError("invalid_message", problem)
        message["roomId"] = who.room_id
        message["participantId"] = who.participant_id
        message["participantName"] = who.participant_name
        return SessionFrame(
            frame=_encoder.encode(message),
            type=kind,
            session_id=fields.sessionId,
            tracks=fields.tracks,
        )
    if kind == TRACK_STATE:
        state = _convert(message, _TrackStateFields)
        return TrackStateFrame(
            frame=_encoder.encode(message), type=kind, kind=state.kind, enabled=state.enabled
        )
    target = message.get("participant_id")
    if kind in MODERATION_TYPES and not (isinstance(target, str) and is_uuid(target)):
        raise ProtocolError("invalid_message", "`participant_id` must name a participant")
    if kind == MUTE:
        mute = _convert(message, _MuteFields)
        return MuteFrame(
            frame=b"",
            type=kind,
            participant_id=mute.participant_id,
            kind=mute.kind,
            muted=mute.muted,
        )
    if kind == REMOVE:
        removal = _convert(message, _RemoveFields)
        return RemoveFrame(
            frame=b"", type=kind, participant_id=removal.participant_id, ban=removal.ban
        )
    to = message.get("to", ALL)
    if not isinstance(to, str):
        raise ProtocolError("invalid_message", '`to` must be a participant id or "all"')
    if to == ALL:
        return BroadcastFrame(frame=_encoder.encode(message), type=kind)
    return DirectFrame(frame=_encoder.encode(message), type=kind, to=to)


def _convert(message: dict[str, Any], shape: type[_T]) -> _T:
    try:
        return msgspec.convert(message, shape)
    except msgspec.ValidationError as e:
        raise ProtocolError("invalid_message", str(e)) from None


class _UpgradeRefused(msgspec.Struct):
    error: str


def upgrade_refused(message: str) -> bytes:
    """The body of the HTTP answer that refuses a WebSocket upgrade (no token, a
    bad one, a foreign origin, too many sockets, a draining edge)."""
    return _encoder.encode(_UpgradeRefused(error=message))


# --- edge -> edge (targeted frames) ----------------------------------------------


PEER_REFUSED_TYPES = RESERVED_TYPES | MODERATION_TYPES | {SESSION, TRACK_STATE}
"""Types an edge never relays to one participant: server-only types, a room
admin's requests, and the two that `parse` routes through the room's actor."""


class RefusedPeerFrame(Exception):
    """A targeted frame from another edge that `parse` could not have produced;
    ``reason`` is one of a few fixed words (a metric label)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _PeerFields(msgspec.Struct):
    """What is checked in a targeted frame; every other field is skipped."""

    type: str
    from_: str = msgspec.field(name="from")
    to: str
    room_seq: Any = msgspec.UNSET
    by: Any = msgspec.UNSET


_peer_decoder = msgspec.json.Decoder(_PeerFields)


def peer_frame(data: bytes, target: str, members: Container[str]) -> str:
    """The text of a targeted frame for ``target``, published by another edge,
    if an edge's `parse` could have produced it: one JSON object (valid UTF-8) of
    a relayable type, ``to`` naming ``target``, ``from`` naming another member of
    the room, no server-only field. Checked without re-encoding: what passes is
    written to the client as it came. Raises `RefusedPeerFrame` otherwise."""
    try:
        fields = _peer_decoder.decode(data)
        text = data.decode()
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise RefusedPeerFrame("malformed") from None
    if not fields.type or len(fields.type) > MAX_STRING or fields.type in PEER_REFUSED_TYPES:
        raise RefusedPeerFrame("type")
    if fields.to != target or fields.from_ == target or fields.from_ not in members:
        raise RefusedPeerFrame("sender")
    if fields.room_seq is not msgspec.UNSET or fields.by is not msgspec.UNSET:
        raise RefusedPeerFrame("server_field")
    return text


# --- server -> client ---------------------------------------------------------


class _WelcomeParticipant(msgspec.Struct, omit_defaults=True):
    id: str
    name: str
    session: str | None = None
    tracks: list[Track] | None = None
    audio: bool | None = None
    video: bool | None = None


class _Welcome(msgspec.Struct, tag_field="type", tag="welcome"):
    participant_id: str
    room_id: str
    participants: list[_WelcomeParticipant]
    room_seq: int


class _SessionReplay(msgspec.Struct, tag_field="type", tag=SESSION):
    from_: str = msgspec.field(name="from")
    roomId: str
    participantId: str
    participantName: str
    sessionId: str
    tracks: list[Track]


class _JoinData(msgspec.Struct):
    participant_id: str
    participant_name: str


class _LeaveData(msgspec.Struct):
    participant_id: str


class _Join(msgspec.Struct, tag_field="type", tag="join"):
    from_: str = msgspec.field(name="from")
    to: str
    data: _JoinData
    room_seq: int


class _Leave(msgspec.Struct, tag_field="type", tag="leave"):
    from_: str = msgspec.field(name="from")
    to: str
    data: _LeaveData
    room_seq: int


class _RoomClosed(msgspec.Struct, tag_field="type", tag="room-closed"):
    room_id: str
    reason: str
    room_seq: int


class _TrackMuted(msgspec.Struct, tag_field="type", tag=TRACK_STATE):
    from_: str = msgspec.field(name="from")
    kind: str
    enabled: bool
    by: str
    room_seq: int


class _Kicked(msgspec.Struct, tag_field="type", tag="kicked", omit_defaults=True):
    room_id: str
    message: str
    by: str | None = None


class _Error(msgspec.Struct, tag_field="type", tag="error"):
    code: str
    message: str


def _text(value: Any) -> str:
    return _encoder.encode(value).decode()


def welcome(participant_id: str, snapshot: Snapshot) -> str:
    participants = [
        _WelcomeParticipant(
            id=p.id,
            name=p.name,
            session=p.session_id,
            tracks=p.tracks if p.session_id is not None else None,
            audio=p.audio,
            video=p.video,
        )
        for p in snapshot.participants
        if not p.hidden or p.id == participant_id
    ]
    return _text(
        _Welcome(
            participant_id=participant_id,
            room_id=snapshot.room_id,
            participants=participants,
            room_seq=snapshot.seq,
        )
    )


def session_replays(participant_id: str, snapshot: Snapshot) -> list[str]:
    """One old-format ``cloudflare-session`` per other participant with a session."""
    return [
        _text(
            _SessionReplay(
                from_=p.id,
                roomId=snapshot.room_id,
                participantId=p.id,
                participantName=p.name,
                sessionId=p.session_id,
                tracks=p.tracks,
            )
        )
        for p in snapshot.participants
        if p.session_id is not None and p.id != participant_id and not p.hidden
    ]


def joined(event: ParticipantJoined) -> str:
    data = _JoinData(participant_id=event.participant_id, participant_name=event.name)
    return _text(_Join(from_=event.participant_id, to=ALL, data=data, room_seq=event.seq))


def left(event: ParticipantLeft) -> str:
    data = _LeaveData(participant_id=event.participant_id)
    return _text(_Leave(from_=event.participant_id, to=ALL, data=data, room_seq=event.seq))


def room_closed(event: RoomClosed) -> str:
    return _text(_RoomClosed(room_id=event.room_id, reason=event.reason, room_seq=event.seq))


def track_muted(event: TrackMuted) -> str:
    """Someone else set a participant's track: a ``track-state`` saying ``by`` whom."""
    return _text(
        _TrackMuted(
            from_=event.participant_id,
            kind=event.kind,
            enabled=event.enabled,
            by=event.by,
            room_seq=event.seq,
        )
    )


def kicked(room_id: str, by: str = "") -> str:
    """Told to a participant removed from the room, just before its socket is
    closed (``by``: the room admin who removed it, if one did)."""
    return _text(_Kicked(room_id=room_id, message="You were removed from the room", by=by or None))


def relayed(frame: msgspec.Raw, seq: int) -> str:
    """A stamped client frame with ``room_seq`` added. The frame is a JSON object
    we encoded ourselves (compact, ``room_seq`` removed), so appending the field
    before its closing brace yields valid JSON without decoding it again."""
    text = bytes(frame).decode()
    return f'{text[:-1]},"room_seq":{seq}}}'


def error(code: str, message: str) -> str:
    return _text(_Error(code=code, message=message))
