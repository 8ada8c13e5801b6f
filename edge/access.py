"""Access control's part of the room service API (``/api/admin``, behind its
guard; docs/access.md): mint tokens, ban identities, revoke a room's tokens,
rotate a secret room's join secret. Every change goes through the room's
actor, which owns the truth; minting reads the room's stored state only to
refuse a room that is not there."""

import secrets
from typing import Annotated, Any

import msgspec
from litestar import Request, delete, post
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import Body, FromPath

from bus_schema import ids
from bus_schema.access import FULL, MAX_IDENTITY, Grants, identity_problem, secret_hash
from bus_schema.commands import Ack, BanIdentity, RevokeTokens, SetJoinSecret
from bus_schema.errors import ErrorCode
from edge.admin import Done, checked_room_id, ok_response, send_command
from edge.auth import TokenService
from edge.bus import EdgeBus
from edge.errors import ApiError
from edge.rooms import check_name, error_responses
from edge.settings import EdgeSettings
from runtime.clock import iso_at

MAX_TOKEN_TTL = 7 * 24 * 3600
"""Seconds a minted token may live at most."""

_ROOM_ID = "6f1c2a9e-4b7d-4c1e-9a53-2f0e8d7c6b5a"
_PID = "0b8e3f5a-7c2d-4e19-8f6a-1d2c3b4a5e6f"


class MintBody(msgspec.Struct, forbid_unknown_fields=True):
    identity: str | None = None
    """The app's user id: one participant per identity in the room; bans hold for it."""
    name: str | None = None
    """The participant's display name (default: the identity, or ``Guest``)."""
    grants: Grants = FULL
    """Grants left out keep their defaults; unknown names are refused."""
    ttl: int | None = None
    """Seconds the token lives (default ``JWT_TTL``, at most a week)."""


_mint_body = msgspec.json.Decoder(MintBody)


class Minted(msgspec.Struct, kw_only=True):
    token: str
    participant_id: str
    expires_at: str
    """ISO 8601, UTC."""


class BanBody(msgspec.Struct, forbid_unknown_fields=True):
    identity: str


class JoinSecret(msgspec.Struct, kw_only=True):
    join_secret: str


@post(
    "/rooms/{room_id:str}/tokens",
    status_code=200,
    summary="Mint a participant token",
    description="A token for this room with an identity, a name and grants, signed with "
    "`JWT_SECRET`. The way into `token` rooms; works for every room. Bad grants or "
    "identities are refused with 400.",
    responses={
        **ok_response(
            Minted,
            Example(
                value={
                    "token": "eyJhbGciOiJIUzI1NiIs…",
                    "participant_id": _PID,
                    "expires_at": "2026-11-30T10:00:00.000Z",
                }
            ),
            "minted",
        ),
        **error_responses(400, 401, 403, 404, 503),
    },
)
async def mint_token(
    request: Request[Any, Any, Any],
    room_id: FromPath[str],
    bus: NamedDependency[EdgeBus],
    tokens: NamedDependency[TokenService],
    settings: NamedDependency[EdgeSettings],
    data: Annotated[
        MintBody,
        Body(
            examples=[
                Example(
                    summary="A viewer who may not publish",
                    value={
                        "identity": "user-42",
                        "name": "Ann",
                        "grants": {"can_publish": False},
                        "ttl": 3600,
                    },
                ),
                Example(
                    summary="A hidden recorder",
                    value={
                        "identity": "recorder-1",
                        "grants": {"hidden": True, "can_publish": False, "can_send": False},
                    },
                ),
                Example(summary="A moderator", value={"grants": {"room_admin": True}}),
            ]
        ),
    ],
) -> Minted:
    room_id = checked_room_id(room_id)
    del data  # declared for the schema; decoded again strictly below
    try:
        # Litestar converts loosely ("60" for 60, 0 for false); a token's grants
        # are decoded strictly, so minting is too: a wrong type is a 400 here
        # as it would be a 401 in a hand-made token.
        body = _mint_body.decode(await request.body() or b"{}")
    except (msgspec.DecodeError, RecursionError) as e:
        raise ApiError(400, f"Invalid request body: {e}", "invalid_body") from None
    if body.identity is not None and (problem := identity_problem(body.identity)):
        raise ApiError(400, problem, "invalid_body")
    default_name = (body.identity or "Guest")[: settings.max_name_length]
    name = check_name(body.name or default_name, "name", settings)
    ttl = settings.token_ttl if body.ttl is None else body.ttl
    if not 1 <= ttl <= MAX_TOKEN_TTL:
        raise ApiError(400, f"ttl must be between 1 and {MAX_TOKEN_TTL} seconds", "invalid_body")
    state = await bus.room_state(room_id)
    if state is None or state.closed:
        raise ApiError(404, "Room not found", ErrorCode.ROOM_NOT_FOUND)
    participant_id = ids.new_id()
    token, expires = tokens.issue(
        room_id=room_id,
        participant_id=participant_id,
        participant_name=name,
        identity=body.identity,
        grants=body.grants,
        ttl=ttl,
        dated_after=state.issued_after,
    )
    return Minted(token=token, participant_id=participant_id, expires_at=iso_at(expires))


@post(
    "/rooms/{room_id:str}/bans",
    status_code=200,
    summary="Ban an identity",
    description="No token of this identity gets into the room, through any edge, across "
    "failovers; its participant, if present, is removed (`kicked`, close code 4003). "
    f"A room keeps up to 500 bans; identities are 1 to {MAX_IDENTITY} bytes of printable text.",
    responses={
        **ok_response(Done, Example(value={"room_id": _ROOM_ID, "room_seq": 8}), "banned"),
        **error_responses(400, 401, 403, 404, 503),
    },
)
async def ban_identity(
    room_id: FromPath[str],
    bus: NamedDependency[EdgeBus],
    data: Annotated[BanBody, Body(examples=[Example(value={"identity": "user-42"})])],
) -> Done:
    return await _ban(bus, checked_room_id(room_id), data.identity, lift=False)


@delete(
    "/rooms/{room_id:str}/bans/{identity:str}",
    status_code=200,
    summary="Lift a ban",
    description="Tokens of this identity may enter the room again.",
    responses={
        **ok_response(Done, Example(value={"room_id": _ROOM_ID, "room_seq": 8}), "lifted"),
        **error_responses(400, 401, 403, 404, 503),
    },
)
async def lift_ban(
    room_id: FromPath[str], identity: FromPath[str], bus: NamedDependency[EdgeBus]
) -> Done:
    return await _ban(bus, checked_room_id(room_id), identity, lift=True)


async def _ban(bus: EdgeBus, room_id: str, identity: str, *, lift: bool) -> Done:
    problem = identity_problem(identity)
    if problem is not None:
        raise ApiError(400, problem, "invalid_body")
    command = BanIdentity(
        cmd_id=ids.new_command_id(), room_id=room_id, identity=identity, lift=lift
    )
    reply = await send_command(bus, command)
    return Done(room_id=room_id, room_seq=reply.seq if isinstance(reply, Ack) else 0)


@post(
    "/rooms/{room_id:str}/revoke-tokens",
    status_code=200,
    summary="Revoke the room's tokens",
    description="Every token of the room issued until now (to the second) is refused from "
    "now on, by the WebSocket endpoint and the Calls proxy; every participant is "
    "disconnected (close code 4003). Tokens issued afterwards work.",
    responses={
        **ok_response(Done, Example(value={"room_id": _ROOM_ID, "room_seq": 12}), "revoked"),
        **error_responses(401, 403, 404, 503),
    },
)
async def revoke_tokens(room_id: FromPath[str], bus: NamedDependency[EdgeBus]) -> Done:
    room_id = checked_room_id(room_id)
    reply = await send_command(bus, RevokeTokens(cmd_id=ids.new_command_id(), room_id=room_id))
    return Done(room_id=room_id, room_seq=reply.seq if isinstance(reply, Ack) else 0)


@post(
    "/rooms/{room_id:str}/join-secret",
    status_code=200,
    summary="Rotate a secret room's join secret",
    description="Answers the new secret, once; the old one is refused from now on. "
    "Participants already in the room stay. Only for `secret` rooms (400 otherwise).",
    responses={
        **ok_response(
            JoinSecret,
            Example(value={"join_secret": "mJ0x0fS1Zr6V2Q-4kE8y8oB3cQp7tW9uXnYhLdA5sGc"}),
            "rotated",
        ),
        **error_responses(400, 401, 403, 404, 503),
    },
)
async def rotate_join_secret(room_id: FromPath[str], bus: NamedDependency[EdgeBus]) -> JoinSecret:
    room_id = checked_room_id(room_id)
    fresh = secrets.token_urlsafe(32)
    command = SetJoinSecret(
        cmd_id=ids.new_command_id(), room_id=room_id, join_secret_hash=secret_hash(fresh)
    )
    await send_command(bus, command)
    return JoinSecret(join_secret=fresh)


HANDLERS = (mint_token, ban_identity, lift_ban, revoke_tokens, rotate_join_secret)
