"""The room service API (``/api/admin``): operators manage rooms from their own
backends. Authenticated by ``ADMIN_API_KEY`` or an admin JWT (``admin: true``,
signed with ``JWT_SECRET``); participant tokens are refused.

Every change goes through the room's owning actor as a command, so it is ordered
with everything else that happens in the room. Listing reads the stored room
states (the source of truth; webhooks may be late)."""

import asyncio
import hmac
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
from litestar import Router, delete, get, patch, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body, FromPath, Parameter
from litestar.types import ControllerRouterHandler, Guard
from nats.errors import Error as NatsError

from bus_schema import ids
from bus_schema.access import FULL, Grants
from bus_schema.commands import (
    Ack,
    CloseRoom,
    Command,
    GetRoom,
    MuteTrack,
    Rejected,
    RemoveParticipant,
    Reply,
    RoomInfo,
    UpdateRoom,
)
from bus_schema.errors import ErrorCode
from bus_schema.state import Participant, RoomState, Track, TrackKind
from edge.auth import InvalidToken, NotAdmin, TokenService
from edge.bus import EdgeBus, NotReady
from edge.commands import CommandFailed
from edge.errors import ApiError
from edge.rooms import check_name, error_responses
from edge.settings import EdgeSettings

MAX_PAGE = 100

_ROOM_ID = "6f1c2a9e-4b7d-4c1e-9a53-2f0e8d7c6b5a"
_PID = "0b8e3f5a-7c2d-4e19-8f6a-1d2c3b4a5e6f"


class AdminParticipant(msgspec.Struct, kw_only=True):
    id: str
    name: str
    joined_at: str
    edge_id: str
    """The edge holding the participant's connection."""
    connected: bool
    """False while the connection is gone and the participant may still resume."""
    session_id: str | None = None
    tracks: list[Track] = msgspec.field(default_factory=list)
    audio: bool | None = None
    video: bool | None = None
    identity: str | None = None
    """The app's user id, for a participant of a minted token that has one."""
    grants: Grants = FULL
    """What its token allows; ``hidden`` participants are seen only here and
    in the event log."""


class AdminRoom(msgspec.Struct, kw_only=True):
    id: str
    name: str
    created_by: str
    created_at: str
    max_participants: int
    empty_timeout: float
    departure_timeout: float
    room_seq: int
    participants: list[AdminParticipant]
    join_policy: str = "open"
    banned: list[str] = msgspec.field(default_factory=list)
    """Identities banned from the room."""


class AdminRoomSummary(msgspec.Struct, kw_only=True):
    id: str
    name: str
    created_at: str
    max_participants: int
    num_participants: int


class AdminRoomPage(msgspec.Struct, kw_only=True):
    rooms: list[AdminRoomSummary]
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next page; absent on the last page."""


class UpdateRoomBody(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None
    max_participants: int | None = None


class MuteBody(msgspec.Struct, forbid_unknown_fields=True):
    kind: TrackKind
    """Another kind is refused with 400 ``invalid_body`` before the handler runs."""
    muted: bool = True


class Done(msgspec.Struct, kw_only=True):
    room_id: str
    room_seq: int
    """The room's sequence number after the action."""


def admin_guard(admin_api_key: str | None, tokens: TokenService) -> Guard:
    """``Authorization: Bearer <ADMIN_API_KEY or admin JWT>``. Litestar passes a
    guard the connection and the handler only (no dependencies), so the app
    factory hands it what it checks against."""

    async def guard(
        connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        del handler
        header = connection.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise ApiError(401, "Admin credentials required", "unauthorized")
        if admin_api_key is not None and hmac.compare_digest(
            credential.encode(), admin_api_key.encode()
        ):
            return
        try:
            tokens.verify_admin(credential)
        except NotAdmin:
            raise ApiError(403, "Admin credentials required", "forbidden") from None
        except InvalidToken:
            raise ApiError(401, "Invalid admin credentials", "unauthorized") from None

    return guard


def checked_room_id(room_id: str) -> str:
    if not ids.is_uuid(room_id):
        raise ApiError(404, "Room not found", ErrorCode.ROOM_NOT_FOUND)
    return room_id


def checked_participant_id(participant_id: str) -> str:
    if not ids.is_uuid(participant_id):
        raise ApiError(404, "Participant not found", "participant_not_found")
    return participant_id


async def send_command(bus: EdgeBus, command: Command) -> Reply:
    try:
        reply = await bus.commands.send(command)
    except CommandFailed as e:
        raise ApiError(503, e.message, e.code) from None
    if isinstance(reply, Rejected):
        if reply.code == ErrorCode.ROOM_NOT_FOUND:
            raise ApiError(404, "Room not found", reply.code)
        if reply.code == ErrorCode.NOT_IN_ROOM:
            raise ApiError(404, "Participant not found", "participant_not_found")
        if reply.code == ErrorCode.BAD_COMMAND:
            raise ApiError(400, reply.message, "invalid_body")
        raise ApiError(503, "Room service unavailable, try again", ErrorCode.UNAVAILABLE)
    return reply


def _participant(p: Participant) -> AdminParticipant:
    return AdminParticipant(
        id=p.id,
        name=p.name,
        joined_at=p.joined_at,
        edge_id=p.edge_id,
        connected=p.disconnected_until is None,
        session_id=p.session_id,
        tracks=p.tracks,
        audio=p.audio,
        video=p.video,
        identity=p.identity,
        grants=p.grants or FULL,
    )


def _room(info: RoomInfo) -> AdminRoom:
    meta = info.meta
    return AdminRoom(
        id=meta.id,
        name=meta.name,
        created_by=meta.created_by,
        created_at=meta.created_at,
        max_participants=meta.max_participants,
        empty_timeout=meta.empty_timeout,
        departure_timeout=meta.departure_timeout,
        room_seq=info.seq,
        participants=[_participant(p) for p in info.participants],
        join_policy=meta.join_policy,
        banned=info.banned,
    )


def _summary(state: RoomState) -> AdminRoomSummary:
    return AdminRoomSummary(
        id=state.meta.id,
        name=state.meta.name,
        created_at=state.meta.created_at,
        max_participants=state.meta.max_participants,
        num_participants=len(state.participants),
    )


_ROOM_EXAMPLE = Example(
    summary="A room with one participant",
    value={
        "id": _ROOM_ID,
        "name": "Standup",
        "created_by": "unknown",
        "created_at": "2026-11-26T10:00:00.000Z",
        "max_participants": 10,
        "empty_timeout": 7200.0,
        "departure_timeout": 300.0,
        "room_seq": 4,
        "participants": [
            {
                "id": _PID,
                "name": "Ann",
                "joined_at": "2026-11-26T10:00:02.120Z",
                "edge_id": "edge-1-3fa2",
                "connected": True,
                "session_id": "3c9d…",
                "tracks": [{"trackName": "ann-video", "kind": "video"}],
                "audio": False,
                "video": True,
            }
        ],
    },
)


def ok_response(container: type, example: Example, description: str) -> dict[int, ResponseSpec]:
    return {200: ResponseSpec(container, description=description, examples=[example])}


@get(
    "/rooms",
    summary="List rooms",
    description="Rooms in id order with their participant counts, a page at a time.",
    responses={
        **ok_response(
            AdminRoomPage,
            Example(
                summary="One page",
                value={
                    "rooms": [
                        {
                            "id": _ROOM_ID,
                            "name": "Standup",
                            "created_at": "2026-11-26T10:00:00.000Z",
                            "max_participants": 10,
                            "num_participants": 3,
                        }
                    ],
                    "next_cursor": _ROOM_ID,
                },
            ),
            "a page of rooms",
        ),
        **error_responses(400, 401, 403, 503),
    },
)
async def list_rooms(
    bus: NamedDependency[EdgeBus],
    limit: Annotated[int, Parameter(ge=1, le=MAX_PAGE, description="rooms per page")] = 50,
    cursor: Annotated[str | None, Parameter(description="next_cursor of the previous page")] = None,
) -> AdminRoomPage:
    if cursor is not None and not ids.is_uuid(cursor):
        raise ApiError(400, "cursor must be the next_cursor of a previous page", "invalid_body")
    try:
        page_ids, more = await bus.room_page(cursor, limit)
    except (NatsError, TimeoutError, NotReady):
        raise ApiError(503, "Room list unavailable, try again", ErrorCode.UNAVAILABLE) from None
    states = await asyncio.gather(*(bus.room_state(room_id) for room_id in page_ids))
    rooms = [_summary(state) for state in states if state is not None and not state.closed]
    return AdminRoomPage(rooms=rooms, next_cursor=page_ids[-1] if more and page_ids else None)


@get(
    "/rooms/{room_id:str}",
    summary="Get a room",
    description="The room and its participants, as its owning actor sees it now.",
    responses={
        **ok_response(AdminRoom, _ROOM_EXAMPLE, "the room"),
        **error_responses(401, 403, 404, 503),
    },
)
async def get_room(room_id: FromPath[str], bus: NamedDependency[EdgeBus]) -> AdminRoom:
    reply = await send_command(
        bus, GetRoom(cmd_id=ids.new_command_id(), room_id=checked_room_id(room_id))
    )
    if not isinstance(reply, RoomInfo):
        raise ApiError(503, "Room service unavailable, try again", ErrorCode.UNAVAILABLE)
    return _room(reply)


@patch(
    "/rooms/{room_id:str}",
    summary="Update a room",
    description="Change the name and/or the maximum number of participants. A smaller "
    "maximum refuses new joins; nobody already in the room is removed.",
    responses={
        **ok_response(AdminRoom, _ROOM_EXAMPLE, "the room after"),
        **error_responses(400, 401, 403, 404),
    },
)
async def update_room(
    room_id: FromPath[str],
    bus: NamedDependency[EdgeBus],
    settings: NamedDependency[EdgeSettings],
    data: Annotated[
        UpdateRoomBody,
        Body(
            examples=[
                Example(
                    summary="Rename and resize", value={"name": "All hands", "max_participants": 50}
                )
            ]
        ),
    ],
) -> AdminRoom:
    if data.name is None and data.max_participants is None:
        raise ApiError(400, "Give name and/or max_participants", "invalid_body")
    name = None if data.name is None else check_name(data.name, "name", settings)
    maximum = data.max_participants
    if maximum is not None and not 1 <= maximum <= settings.max_participants_limit:
        raise ApiError(
            400,
            f"max_participants must be between 1 and {settings.max_participants_limit}",
            "invalid_body",
        )
    command = UpdateRoom(
        cmd_id=ids.new_command_id(),
        room_id=checked_room_id(room_id),
        name=name,
        max_participants=maximum,
    )
    reply = await send_command(bus, command)
    if not isinstance(reply, RoomInfo):
        raise ApiError(503, "Room service unavailable, try again", ErrorCode.UNAVAILABLE)
    return _room(reply)


@delete(
    "/rooms/{room_id:str}",
    status_code=200,
    summary="Close a room",
    description="Every participant gets `room-closed` and is disconnected (close code "
    "4004); the room is gone.",
    responses={
        **ok_response(Done, Example(value={"room_id": _ROOM_ID, "room_seq": 7}), "closed"),
        **error_responses(401, 403, 404, 503),
    },
)
async def close_room(room_id: FromPath[str], bus: NamedDependency[EdgeBus]) -> Done:
    room_id = checked_room_id(room_id)
    reply = await send_command(bus, CloseRoom(cmd_id=ids.new_command_id(), room_id=room_id))
    return Done(room_id=room_id, room_seq=reply.seq if isinstance(reply, Ack) else 0)


@delete(
    "/rooms/{room_id:str}/participants/{participant_id:str}",
    status_code=200,
    summary="Remove a participant",
    description="The participant gets `kicked` and is disconnected (close code 4003); the "
    "others see `leave`; its token can no longer connect to this room. With `ban=true` its "
    "identity is banned too: no token of that identity gets in (docs/access.md).",
    responses={
        **ok_response(Done, Example(value={"room_id": _ROOM_ID, "room_seq": 5}), "removed"),
        **error_responses(401, 403, 404, 503),
    },
)
async def remove_participant(
    room_id: FromPath[str],
    participant_id: FromPath[str],
    bus: NamedDependency[EdgeBus],
    ban: Annotated[bool, Parameter(description="Also ban its identity")] = False,
) -> Done:
    command = RemoveParticipant(
        cmd_id=ids.new_command_id(),
        room_id=checked_room_id(room_id),
        participant_id=checked_participant_id(participant_id),
        ban=ban,
    )
    reply = await send_command(bus, command)
    return Done(room_id=room_id, room_seq=reply.seq if isinstance(reply, Ack) else 0)


@post(
    "/rooms/{room_id:str}/participants/{participant_id:str}/mute",
    status_code=200,
    summary="Mute (or unmute) a participant's track",
    description='The participant and everyone else get `track-state` with `"by": "admin"`; '
    "the web client turns its own track off when told so.",
    responses={
        **ok_response(Done, Example(value={"room_id": _ROOM_ID, "room_seq": 6}), "done"),
        **error_responses(400, 401, 403, 404, 503),
    },
)
async def mute_participant(
    room_id: FromPath[str],
    participant_id: FromPath[str],
    bus: NamedDependency[EdgeBus],
    data: Annotated[
        MuteBody,
        Body(
            examples=[
                Example(summary="Mute the microphone", value={"kind": "audio", "muted": True})
            ]
        ),
    ],
) -> Done:
    command = MuteTrack(
        cmd_id=ids.new_command_id(),
        room_id=checked_room_id(room_id),
        participant_id=checked_participant_id(participant_id),
        kind=data.kind,
        enabled=not data.muted,
    )
    reply = await send_command(bus, command)
    return Done(room_id=room_id, room_seq=reply.seq if isinstance(reply, Ack) else 0)


def admin_router(
    settings: EdgeSettings, tokens: TokenService, more: Sequence[ControllerRouterHandler] = ()
) -> Router:
    """The room service API; ``more``: further handlers behind the same guard
    (access control's, from `edge.access`)."""
    return Router(
        path="/api/admin",
        route_handlers=[
            list_rooms,
            get_room,
            update_room,
            close_room,
            remove_participant,
            mute_participant,
            *more,
        ],
        guards=[admin_guard(settings.admin_api_key, tokens)],
        tags=["room service (admin)"],
        security=[{"AdminBearer": []}],
    )
