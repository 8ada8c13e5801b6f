"""The WebSocket endpoint ``/ws``: authenticate before the upgrade, join the room,
then relay client frames while the fan-out writes server frames."""

import asyncio
import contextlib
import logging
import time
from typing import Any, TypedDict, assert_never
from urllib.parse import parse_qs

import msgspec
from litestar import WebSocket
from litestar.types import Empty
from litestar.types.asgi_types import ReceiveMessage, WebSocketSendEvent
from litestar.utils.scope.state import ScopeState

from bus_schema import ids, subjects
from bus_schema.access import FULL, Grants
from bus_schema.closecodes import CloseCode
from bus_schema.commands import (
    Broadcast,
    Disconnect,
    Join,
    Leave,
    MuteTrack,
    PublishSession,
    Rejected,
    RemoveParticipant,
    Reply,
    SetTrackState,
    Snapshot,
)
from bus_schema.errors import ErrorCode
from edge import metrics, protocol
from edge.auth import Claims, InvalidToken, TokenService
from edge.bus import EdgeBus
from edge.commands import CommandFailed
from edge.connection import Close, Connection
from edge.fanout import RoomFeed
from edge.limits import AddressLimits, ConnectionLimits
from edge.settings import FAREWELL_WHILE_STOPPING, EdgeSettings

log = logging.getLogger(__name__)

_SETTLE_SECONDS = 2.0
_ABNORMAL_CLOSURE = 1006

_EARLY_FRAMES = 16
"""Frames a client may send before its welcome that are read (and kept for
after it) while its join is on its way; more wait in the socket."""

_REJECTION_CLOSE = {
    ErrorCode.ROOM_NOT_FOUND: CloseCode.ROOM_NOT_FOUND,
    ErrorCode.ROOM_FULL: CloseCode.ROOM_FULL,
    ErrorCode.NOT_IN_ROOM: CloseCode.NOT_IN_ROOM,
    ErrorCode.KICKED: CloseCode.NOT_IN_ROOM,
    ErrorCode.BANNED: CloseCode.NOT_IN_ROOM,
    ErrorCode.TOKEN_REVOKED: CloseCode.NOT_IN_ROOM,
    ErrorCode.SUPERSEDED: CloseCode.REPLACED,
}


def token_from(scope: dict[str, object]) -> tuple[str | None, str | None]:
    """The token from ``?token=`` or, failing that, offered as the WebSocket
    subprotocol. Returns (token, subprotocol to select in the answer)."""
    query = scope.get("query_string", b"")
    if isinstance(query, bytes) and query:
        values = parse_qs(query.decode("latin-1")).get("token")
        if values and values[0]:
            return values[0], None
    offered = scope.get("subprotocols")
    if isinstance(offered, list):
        for candidate in offered:
            if isinstance(candidate, str) and candidate.count(".") == 2:
                return candidate, candidate
    return None, None


async def deny(socket: WebSocket[Any, Any, Any], status: int, message: str) -> None:
    """Refuse the upgrade with a real HTTP response (ASGI websocket denial)."""
    await socket.receive()
    body = protocol.upgrade_refused(message)
    await socket.send(
        {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await socket.send({"type": "websocket.http.response.body", "body": body, "more_body": False})


async def serve(
    socket: WebSocket[Any, Any, Any],
    bus: EdgeBus,
    tokens: TokenService,
    settings: EdgeSettings,
    addresses: AddressLimits,
) -> None:
    """Everything is checked before the upgrade, with a real HTTP answer."""
    if bus.draining:
        await deny(socket, 503, "This edge is shutting down; connect to another")
        return
    origin = socket.headers.get("origin")
    if settings.cors_origin != "*" and origin is not None and origin != settings.cors_origin:
        await deny(socket, 403, "Origin not allowed")  # cross-site WebSocket hijacking
        return
    token, subprotocol = token_from(socket.scope)  # type: ignore[arg-type]
    if token is None:
        await deny(socket, 401, "Missing token")
        return
    try:
        claims = tokens.verify(token)
    except InvalidToken:
        await deny(socket, 401, "Invalid token")
        return
    address = addresses.address(socket.client.host if socket.client else None, socket.headers)
    if not addresses.open_connection(address):
        await deny(socket, 429, "Too many connections from your address")
        return
    del token  # verified; do not keep it for the session
    try:
        await socket.accept(subprotocols=subprotocol)
        _forget_handshake(socket)
        await ClientSession(socket, bus, claims, settings).run()
    finally:
        addresses.close_connection(address)


def _forget_handshake(socket: WebSocket[Any, Any, Any]) -> None:
    """The upgrade is done: the request's headers and query string (which carry
    the token), their parsed copy and the server's copy of the handshake are
    not needed for the connection's life. Dropped, so that an idle socket
    weighs less (about 5 KiB) and no token stays in memory. (uvicorn's
    websockets-sansio protocol keeps its handshake request and response
    otherwise; it reads neither after the upgrade.)"""
    scope = socket.scope
    scope["headers"] = []
    scope["query_string"] = b""
    ScopeState.from_scope(scope).headers = Empty
    server = _server_protocol(socket)
    if server is not None and getattr(server, "handshake_complete", False):
        for name in ("request", "response"):
            if getattr(server, name, None) is not None:
                setattr(server, name, None)


def _server_protocol(socket: WebSocket[Any, Any, Any]) -> object | None:
    """uvicorn's protocol object behind the socket: the owner of the ASGI
    ``receive`` that Litestar wraps (``None`` if it cannot be found: then
    nothing is dropped)."""
    for cell in getattr(socket.receive, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            owner: object | None = getattr(cell.cell_contents, "__self__", None)
            if owner is not None and hasattr(owner, "handshake_complete"):
                return owner
    return None


class ClientSession:
    """One accepted WebSocket for its whole life."""

    __slots__ = (
        "_bus",
        "_claims",
        "_conn",
        "_connected_at",
        "_early",
        "_identity",
        "_limits",
        "_settings",
        "_socket",
    )

    def __init__(
        self, socket: WebSocket[Any, Any, Any], bus: EdgeBus, claims: Claims, settings: EdgeSettings
    ) -> None:
        self._socket = socket
        self._bus = bus
        self._settings = settings
        self._identity = protocol.Identity(
            room_id=claims.room_id,
            participant_id=claims.participant_id,
            participant_name=claims.participant_name,
        )
        self._claims = claims
        """Checked on every frame: what the token grants (docs/access.md)."""
        self._conn = Connection(self._identity, limit_bytes=settings.send_queue_bytes)
        self._limits = ConnectionLimits(settings)
        self._connected_at = time.time_ns() // 1_000_000
        """When this socket was opened (Unix ms): the actor lets a newer
        connection of the token take the participant's place, never an older one."""
        self._early: list[ReceiveMessage] | None = None
        """Frames the client sent before its welcome, handled after it."""

    async def run(self) -> None:
        conn, fanout = self._conn, self._bus.fanout
        fanout.register(conn)
        writer = asyncio.create_task(self._write(), name=f"ws-write-{conn.conn_id}")
        feed: RoomFeed | None = None
        joined = clean = False
        try:
            feed = await fanout.acquire(self._identity.room_id)
            feed.expect(conn)  # targeted messages may come before the welcome: held
            reply = await self._join_while_open(writer)
            if isinstance(reply, Snapshot):
                feed.add(conn, reply)
                joined = True
                log.info("%s", "resumed" if reply.resumed else "joined", extra=self._context())
                del reply  # the snapshot is in the welcome; do not keep it for the session
                reader = asyncio.create_task(self._read(feed), name=f"ws-read-{conn.conn_id}")
                # A slow consumer is dropped at once, even while the writer waits.
                conn.on_abandon = reader.cancel
                await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
                clean = reader.done() and not reader.cancelled() and reader.result()
                clean = clean and conn.closing is None
                await _cancel(reader)
                if conn.closing is not None and conn.closing.discard_pending:
                    await _cancel(writer)
                    await self._abandon()
            else:
                await _settle(writer)
        finally:
            await _cancel(writer)
            if feed is not None:
                feed.remove(conn)
                await fanout.release(feed)
            fanout.unregister(conn)
            if joined:
                # A Close frame from the client: it left. Anything else (a drop,
                # a slow client, an edge restart): it may come back and resume.
                log.info("%s", "left" if clean else "disconnected", extra=self._context())
                await (self._leave() if clean else self._disconnect())

    async def _join_while_open(self, writer: "asyncio.Task[None]") -> Reply | None:
        """The join, given up if the socket closes before its answer (the
        client left, or this edge is stopping): retried for a socket nobody
        holds any more, it could only take the participant's place from the
        socket the client moved to. A `Disconnect` follows, in case an attempt
        already on its way is applied: the participant then gets its resume
        grace, as any dropped connection does."""
        join = asyncio.create_task(self._join())
        watch: asyncio.Task[ReceiveMessage] | None = asyncio.create_task(self._receive())
        try:
            while True:
                waiting: set[asyncio.Future[Any]] = {join, writer}
                if watch is not None:
                    waiting.add(watch)
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if join.done():
                    return join.result()
                if watch is not None and watch.done():
                    message, watch = watch.result(), None
                    self._early = [*(self._early or ()), message]
                    if message["type"] == "websocket.receive":
                        # A frame before the welcome: kept for after it. Past
                        # a few, the rest wait in the socket (uvicorn stops
                        # reading it) and only the writer's end is watched.
                        if len(self._early) < _EARLY_FRAMES:
                            watch = asyncio.create_task(self._receive())
                        continue
                # The client closed the socket, or this edge did.
                await _cancel(join)
                metrics.JOINS_ABANDONED.inc()
                log.info("closed before its welcome: join given up", extra=self._context())
                if await self._disconnect():
                    log.info("join given up; the room has heard", extra=self._context())
                return None
        finally:
            if watch is not None:
                if watch.done() and not watch.cancelled():
                    # Came with the join's answer: the reader's, after the welcome.
                    self._early = [*(self._early or ()), watch.result()]
                else:
                    await _cancel(watch)

    async def _receive(self) -> ReceiveMessage:
        return await self._socket.receive()

    async def _join(self) -> Reply | None:
        identity = self._identity
        command = Join(
            cmd_id=ids.new_command_id(),
            room_id=identity.room_id,
            participant_id=identity.participant_id,
            name=identity.participant_name,
            edge_id=self._bus.fanout.edge_id,
            conn_id=self._conn.conn_id,
            identity=self._claims.identity,
            grants=None if self._claims.grants == FULL else self._claims.grants,
            issued_at=self._claims.iat,
            connected_at=self._connected_at,
        )
        try:
            reply = await self._bus.commands.send(command)
        except CommandFailed as e:
            self._error(e.code, e.message)
            self._conn.close(CloseCode.TRY_AGAIN_LATER, e.message)
            return None
        if isinstance(reply, Rejected):
            self._error(reply.code, reply.message)
            code = _REJECTION_CLOSE.get(ErrorCode(reply.code), CloseCode.POLICY_VIOLATION)
            self._conn.close(code, reply.message)
            return None
        return reply

    async def _leave(self) -> None:
        await self._farewell(
            Leave(
                cmd_id=ids.new_command_id(),
                room_id=self._identity.room_id,
                participant_id=self._identity.participant_id,
                conn_id=self._conn.conn_id,
            )
        )

    async def _disconnect(self) -> bool:
        return await self._farewell(
            Disconnect(
                cmd_id=ids.new_command_id(),
                room_id=self._identity.room_id,
                participant_id=self._identity.participant_id,
                conn_id=self._conn.conn_id,
            )
        )

    async def _farewell(self, command: Leave | Disconnect) -> bool:
        """Tell the room; whether it acknowledged. While the edge stops, only
        for as long as uvicorn lets the handlers run."""
        deadline = FAREWELL_WHILE_STOPPING if self._bus.draining else None
        try:
            await self._bus.commands.send(command, deadline=deadline)
        except CommandFailed:
            log.warning("conn %s: %s not acknowledged", self._conn.conn_id, type(command).__name__)
            return False
        return True

    def _context(self) -> dict[str, str]:
        """Log fields for this connection."""
        return {
            "room_id": self._identity.room_id,
            "participant_id": self._identity.participant_id,
            "conn_id": self._conn.conn_id,
        }

    def _error(self, code: str, message: str) -> None:
        metrics.child(metrics.ERRORS, code).inc()
        self._conn.send(protocol.error(code, message))

    def _refuse(self, code: str, message: str) -> None:
        """Answer a refused message with an ``error``; a client that keeps
        sending refused messages is disconnected (1008)."""
        self._error(code, message)
        if not self._limits.strike():
            self._conn.close(
                CloseCode.POLICY_VIOLATION, "Too many invalid or rate-limited messages"
            )

    async def _owns_session(self, session_id: str) -> bool:
        """With the Calls proxy on and authenticated, a participant may only
        announce a session it created through it."""
        settings = self._settings
        if not (settings.calls_configured and settings.calls_proxy_auth):
            return True
        if not ids.is_token_id(session_id):
            return False
        owner = await self._bus.calls_session(session_id)
        return (
            owner is not None
            and owner.room_id == self._identity.room_id
            and owner.participant_id == self._identity.participant_id
        )

    def _relay_fields(self, inbound: protocol.Inbound) -> "_RelayFields":
        return {
            "cmd_id": ids.new_command_id(),
            "room_id": self._identity.room_id,
            "participant_id": self._identity.participant_id,
            "conn_id": self._conn.conn_id,
            "frame": msgspec.Raw(inbound.frame),
            "quiet": True,
        }

    async def _write(self) -> None:
        conn, socket = self._conn, self._socket
        while True:
            item = await conn.next_output()
            if conn.closing is not None and conn.closing.discard_pending:
                item = conn.closing
            if isinstance(item, Close):
                with contextlib.suppress(Exception):
                    await socket.close(code=item.code, reason=item.reason)
                return
            event: WebSocketSendEvent = {"type": "websocket.send", "text": item, "bytes": None}
            await socket.send(event)

    async def _abandon(self) -> None:
        """A slow consumer: the writer may be stuck waiting for the client to
        read. Stop it, send the close frame if the socket takes it soon, and let
        go; the server closes the connection once its buffer drains."""
        closing = self._conn.closing
        assert closing is not None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self._socket.close(code=closing.code, reason=closing.reason), _SETTLE_SECONDS
            )

    async def _read(self, feed: RoomFeed) -> bool:
        """Relay client frames until the socket closes. True when the client
        closed it with a Close frame (uvicorn then passes the frame's reason;
        a lost connection comes without one)."""
        socket = self._socket
        early, self._early = self._early or [], None
        while True:
            message: ReceiveMessage = early.pop(0) if early else await socket.receive()
            if message["type"] != "websocket.receive":
                return "reason" in message and message.get("code") != _ABNORMAL_CLOSURE
            data = message.get("text") or message.get("bytes") or b""
            if not self._limits.allow_message():
                self._refuse("rate_limited", "Too many messages; slow down")
                continue
            if not self._limits.allow_bytes(_size(data)):
                self._refuse("rate_limited", "Too much data; slow down")
                continue
            await self._handle(data, feed)
            if feed.congested:
                # The room's output on this edge is behind: this sender waits
                # (its frames stay in its socket) instead of anyone losing them.
                await feed.until_flowing()

    async def _handle(self, data: str | bytes, feed: RoomFeed) -> None:
        identity = self._identity
        arrived = time.monotonic()
        try:
            inbound = protocol.parse(
                data, identity, max_broadcast=self._settings.max_broadcast_bytes
            )
        except protocol.ProtocolError as e:
            metrics.child(metrics.MESSAGES_IN, "invalid").inc()
            self._refuse(e.code, e.message)
            return
        metrics.child(metrics.MESSAGES_IN, metrics.kind(inbound.type)).inc()
        denied = _denied(self._claims.grants, inbound)
        if denied is not None:
            self._error(ErrorCode.GRANT_DENIED, denied)  # the socket stays usable
            return
        command: PublishSession | SetTrackState | Broadcast
        match inbound:
            case protocol.MuteFrame() | protocol.RemoveFrame():
                await self._moderate(inbound)
                return
            case protocol.DirectFrame(to=to):
                if to == identity.participant_id or to not in feed.members:
                    self._refuse("unknown_participant", "`to` names no one else in this room")
                    return
                if feed.holds(to):
                    # Its socket is here: delivered as if it had come back from
                    # NATS (the same checks), without the trip.
                    feed.on_peer(to, inbound.frame)
                else:
                    await self._bus.nc.publish(
                        subjects.peer(identity.room_id, to),
                        inbound.frame,
                        headers={subjects.PEER_SENT_AT: f"{time.time():.3f}"},
                    )
                metrics.child(metrics.RELAY_SECONDS, "direct").observe(time.monotonic() - arrived)
                return
            case protocol.SessionFrame(session_id=session_id, tracks=tracks):
                if not await self._owns_session(session_id):
                    self._refuse(
                        "session_not_owned",
                        "sessionId must name a Calls session you created through this service",
                    )
                    return
                command = PublishSession(
                    **self._relay_fields(inbound), session_id=session_id, tracks=tracks
                )
            case protocol.TrackStateFrame(kind=kind, enabled=enabled):
                command = SetTrackState(**self._relay_fields(inbound), kind=kind, enabled=enabled)
            case protocol.BroadcastFrame():
                command = Broadcast(**self._relay_fields(inbound))
            case _:
                assert_never(inbound)
        try:
            reply = await self._bus.commands.relay(command)
        except CommandFailed as e:
            self._error(e.code, e.message)
            return
        if isinstance(reply, Rejected):
            self._error(reply.code, reply.message)
            if reply.code == ErrorCode.NOT_IN_ROOM:
                self._conn.close(CloseCode.NOT_IN_ROOM, reply.message)
            return
        metrics.child(metrics.RELAY_SECONDS, protocol.route(inbound)).observe(
            time.monotonic() - arrived
        )

    async def _moderate(self, inbound: "protocol.MuteFrame | protocol.RemoveFrame") -> None:
        """A room admin's ``mute`` or ``remove``: the operator's command, with
        ``by`` naming the admin (the actor checks the grant again)."""
        identity = self._identity
        command: MuteTrack | RemoveParticipant
        fields = {
            "cmd_id": ids.new_command_id(),
            "room_id": identity.room_id,
            "participant_id": inbound.participant_id,
            "by": identity.participant_id,
            "by_conn_id": self._conn.conn_id,
        }
        if isinstance(inbound, protocol.MuteFrame):
            command = MuteTrack(**fields, kind=inbound.kind, enabled=not inbound.muted)
        else:
            command = RemoveParticipant(**fields, ban=inbound.ban)
        try:
            reply = await self._bus.commands.send(command)
        except CommandFailed as e:
            self._error(e.code, e.message)
            return
        if isinstance(reply, Rejected):
            code = "unknown_participant" if reply.code == ErrorCode.NOT_IN_ROOM else reply.code
            self._error(code, reply.message)


def _denied(grants: Grants, inbound: protocol.Inbound) -> str | None:
    """Why the token's grants stop this frame, if they do."""
    match inbound:
        case protocol.SessionFrame() | protocol.TrackStateFrame():
            return None if grants.can_publish else "Your token does not allow publishing"
        case protocol.BroadcastFrame():
            return None if grants.can_send else "Your token does not allow sending messages"
        case protocol.DirectFrame():
            if not grants.can_send:
                return "Your token does not allow sending messages"
            # Nobody could check a sender they cannot see: it would be dropped.
            return "A hidden participant cannot send to one participant" if grants.hidden else None
        case protocol.MuteFrame() | protocol.RemoveFrame():
            return None if grants.room_admin else "Only a room admin may moderate"
    return None


class _RelayFields(TypedDict):
    cmd_id: str
    room_id: str
    participant_id: str
    conn_id: str
    frame: msgspec.Raw
    quiet: bool


def _size(data: str | bytes) -> int:
    """Bytes in a frame as the client sent it (UTF-8 for a text frame)."""
    if isinstance(data, bytes) or data.isascii():
        return len(data)
    return len(data.encode())


async def _cancel(task: "asyncio.Task[Any]") -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _settle(task: "asyncio.Task[None]") -> None:
    """Give the writer a moment to flush a final error and close frame."""
    with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
        await asyncio.wait_for(asyncio.shield(task), _SETTLE_SECONDS)
