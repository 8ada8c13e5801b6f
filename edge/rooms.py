"""HTTP: health, readiness and the room endpoints (README, "API in brief";
errors as docs/protocol.md says).

Bodies and answers are typed, so the OpenAPI schema (``/schema``) describes
them; every error answers ``{"error", "code"}`` (see `edge.errors`).
"""

import asyncio
import secrets
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody

from bus_schema import ids
from bus_schema.access import JoinPolicy, secret_hash, secret_matches
from bus_schema.commands import Ack, CreateRoom
from bus_schema.errors import ErrorCode
from edge.auth import TokenService
from edge.bus import EdgeBus, NotReady
from edge.calls_proxy import CallsProxy
from edge.commands import CommandFailed
from edge.errors import RETRY_AFTER, ApiError, ErrorBody
from edge.limits import AddressLimits
from edge.settings import EdgeSettings
from runtime.clock import iso_now

_V = TypeVar("_V")

MAX_TIMEOUT = 7 * 24 * 3600


class CreateRoomBody(msgspec.Struct):
    """``name`` is required; the old service accepted both spellings of the others."""

    name: str | None = None
    max_participants: int | None = None
    maxParticipants: int | None = None
    created_by: str | None = None
    createdBy: str | None = None
    empty_timeout: float | None = None
    """Seconds a room nobody joins lives (default ``ROOM_EMPTY_TIMEOUT``; 0: no limit)."""
    emptyTimeout: float | None = None
    departure_timeout: float | None = None
    """Seconds the room lives after its last participant left (default
    ``ROOM_DEPARTURE_TIMEOUT``; 0: no limit)."""
    departureTimeout: float | None = None
    join_policy: JoinPolicy | None = None
    """``open`` (default: anyone with the room id), ``secret`` (the answer
    carries a ``join_secret`` that joining needs) or ``token`` (only minted tokens)."""
    joinPolicy: JoinPolicy | None = None


class RoomView(msgspec.Struct, rename="camel"):
    """A room as the old service answered ``GET /api/rooms/{id}``, with its
    join policy (operators see the rest through ``/api/admin``)."""

    id: str
    name: str
    created_by: str
    created_at: str
    max_participants: int
    join_policy: str


class JoinBody(msgspec.Struct):
    participant_name: str | None = None
    participantName: str | None = None
    join_secret: str | None = None
    """``secret`` rooms: the room's join secret."""
    joinSecret: str | None = None


class Health(msgspec.Struct):
    status: str
    timestamp: str


class Ready(msgspec.Struct):
    status: str


class CreatedRoom(msgspec.Struct, omit_defaults=True):
    room_id: str
    created_at: str
    join_secret: str | None = None
    """``secret`` rooms only, and only in this answer: the room keeps a hash."""


class JoinAnswer(msgspec.Struct, omit_defaults=True):
    token: str
    participant_id: str
    ice_servers: list[dict[str, Any]]
    ice_servers_ttl: int | None = None
    """Seconds the TURN credentials in ``ice_servers`` live; a participant renews
    them through ``GET /cloudflare/ice-servers`` (absent: STUN only)."""


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    return {status: ResponseSpec(ErrorBody, description="error") for status in statuses}


def check_name(value: str, field: str, settings: EdgeSettings) -> str:
    value = value.strip()
    if not value or len(value) > settings.max_name_length:
        raise ApiError(
            400, f"{field} must be 1 to {settings.max_name_length} characters", "invalid_body"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ApiError(400, f"{field} must not contain control characters", "invalid_body")
    return value


def _first(*values: _V | None) -> _V:
    """The first value that is present (the old service accepted two spellings)."""
    for value in values:
        if value is not None:
            return value
    raise AssertionError("the last value is a default")


def _room_id(room_id: str) -> str:
    if not ids.is_uuid(room_id):
        raise ApiError(404, "Room not found", ErrorCode.ROOM_NOT_FOUND)
    return room_id


@get("/health", sync_to_thread=False)
def health() -> Health:
    return Health(status="ok", timestamp=iso_now())


@get("/ready", responses=error_responses(503))
async def ready(bus: NamedDependency[EdgeBus]) -> Response[Ready | ErrorBody]:
    try:
        await bus.check_ready()
    except NotReady:
        return Response(
            ErrorBody(error="Not ready", code="not_ready"),
            status_code=503,
            headers={"Retry-After": RETRY_AFTER},
        )
    return Response(Ready(status="ready"))


@post("/api/rooms", status_code=200, responses=error_responses(400, 413, 429, 503))
async def create_room(
    request: Request[Any, Any, Any],
    bus: NamedDependency[EdgeBus],
    settings: NamedDependency[EdgeSettings],
    addresses: NamedDependency[AddressLimits],
    data: JSONBody[CreateRoomBody | None] = None,
) -> CreatedRoom:
    body = data or CreateRoomBody()
    if body.name is None:
        raise ApiError(400, "name is required", "invalid_body")
    name = check_name(body.name, "name", settings)
    created_by = check_name(
        _first(body.created_by, body.createdBy, "unknown"), "created_by", settings
    )
    maximum = _first(body.max_participants, body.maxParticipants, settings.default_max_participants)
    if not 1 <= maximum <= settings.max_participants_limit:
        raise ApiError(
            400,
            f"max_participants must be between 1 and {settings.max_participants_limit}",
            "invalid_body",
        )
    timeouts = {}
    for field, value in (
        (
            "empty_timeout",
            body.empty_timeout if body.empty_timeout is not None else body.emptyTimeout,
        ),
        (
            "departure_timeout",
            body.departure_timeout if body.departure_timeout is not None else body.departureTimeout,
        ),
    ):
        if value is None:
            continue
        if not 0 <= value <= MAX_TIMEOUT:
            raise ApiError(
                400, f"{field} must be between 0 and {MAX_TIMEOUT} seconds", "invalid_body"
            )
        timeouts[field] = float(value)
    address = addresses.address(request.client.host if request.client else None, request.headers)
    if not addresses.create_room(address):
        raise ApiError(
            429, "Too many rooms created from your address; try again later", "rate_limited"
        )
    policy = _first(body.join_policy, body.joinPolicy, "open")
    join_secret = secrets.token_urlsafe(32) if policy == "secret" else None
    room_id = ids.new_id()
    created_at = iso_now()
    command = CreateRoom(
        cmd_id=ids.new_command_id(),
        room_id=room_id,
        name=name,
        created_by=created_by,
        created_at=created_at,
        max_participants=maximum,
        join_policy=policy,
        join_secret_hash=secret_hash(join_secret) if join_secret else "",
        **timeouts,
    )
    try:
        reply = await bus.commands.send(command)
    except CommandFailed as e:
        raise ApiError(503, e.message, e.code) from None
    if not isinstance(reply, Ack):
        raise ApiError(503, "Room service unavailable, try again", ErrorCode.UNAVAILABLE)
    return CreatedRoom(room_id=room_id, created_at=created_at, join_secret=join_secret)


@get("/api/rooms/{room_id:str}", responses=error_responses(404))
async def get_room(room_id: FromPath[str], bus: NamedDependency[EdgeBus]) -> RoomView:
    meta = await bus.room_meta(_room_id(room_id))
    if meta is None or meta.join_policy != "open":
        # A private room's name and creator are its members' business: to
        # anyone else it looks like no room at all (docs/access.md).
        raise ApiError(404, "Room not found", ErrorCode.ROOM_NOT_FOUND)
    return RoomView(
        id=meta.id,
        name=meta.name,
        created_by=meta.created_by,
        created_at=meta.created_at,
        max_participants=meta.max_participants,
        join_policy=meta.join_policy,
    )


_ASK_FOR_LINK = "This room needs its join secret: ask for the full link"


@post(
    "/api/rooms/{room_id:str}/join",
    status_code=200,
    responses=error_responses(400, 403, 404, 409, 413, 429),
)
async def join_room(
    request: Request[Any, Any, Any],
    addresses: NamedDependency[AddressLimits],
    room_id: FromPath[str],
    bus: NamedDependency[EdgeBus],
    calls: NamedDependency[CallsProxy],
    tokens: NamedDependency[TokenService],
    settings: NamedDependency[EdgeSettings],
    data: JSONBody[JoinBody | None] = None,
) -> JoinAnswer:
    room_id = _room_id(room_id)
    body = data or JoinBody()
    name = check_name(
        _first(body.participant_name, body.participantName, "Guest"), "participant_name", settings
    )
    given = body.join_secret if body.join_secret is not None else body.joinSecret
    # Both reads always, at once: a room that exists costs no more to answer
    # than one that does not, so timing tells nothing either.
    state, meta = await asyncio.gather(bus.room_state(room_id), bus.room_meta(room_id))
    if state is None or state.closed or meta is None:
        if given is not None:
            # Presented a secret: the same answer, after the same work, as a
            # wrong secret, so it tells nothing about whether the room exists.
            secret_matches(given, "")
            raise ApiError(403, _ASK_FOR_LINK, ErrorCode.JOIN_SECRET_REQUIRED)
        raise ApiError(404, "Room not found", ErrorCode.ROOM_NOT_FOUND)
    policy = state.meta.join_policy
    if policy == "token":
        raise ApiError(
            403, "This room is invite-only: its app gives out the tokens", ErrorCode.INVITE_ONLY
        )
    if policy == "secret" and (given is None or not secret_matches(given, state.join_secret_hash)):
        raise ApiError(403, _ASK_FOR_LINK, ErrorCode.JOIN_SECRET_REQUIRED)
    if len(state.participants) >= state.meta.max_participants:
        raise ApiError(409, "Room is full", ErrorCode.ROOM_FULL)
    address = addresses.address(request.client.host if request.client else None, request.headers)
    if not addresses.join(address):
        raise ApiError(429, "Too many joins from your address; try again later", "rate_limited")
    participant_id = ids.new_id()
    token, _ = tokens.issue(
        room_id=room_id,
        participant_id=participant_id,
        participant_name=name,
        dated_after=state.issued_after,
    )
    ice = await calls.ice.get(participant_id)
    return JoinAnswer(
        token=token,
        participant_id=participant_id,
        ice_servers=ice.servers,
        ice_servers_ttl=ice.expires_in,
    )
