"""``/cloudflare/...``: the Cloudflare Calls proxy (docs/calls.md).

Callers present their join token (``Authorization: Bearer <jwt>``). A session
created through the proxy is registered with the room's actor as owned by its
creator (readable with ``nats kv get calls_sessions <id>``); only the owner may
change it, and a pull or a remote data channel may only name a session of the
same room. The app secret is added here, on the way out, and never appears in a
log line, an error body or an exception. Upstream status and JSON come back as
they are; an unreachable or slow upstream gives 502 / 504. Network errors,
timeouts, 429 and 5xx are retried, except for calls that create something once
the request may have reached Cloudflare.

``CALLS_PROXY_AUTH=off`` restores the old open proxy for legacy clients.
"""

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from litestar import Request, Response, route
from litestar.di import NamedDependency
from litestar.enums import HttpMethod
from litestar.params import FromPath
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus_schema import codec, ids, subjects
from bus_schema.commands import Ack, CheckMember, RegisterCallsSession, Rejected, Reply
from bus_schema.errors import ErrorCode
from edge import metrics
from edge.auth import Claims, InvalidToken, TokenService
from edge.bus import EdgeBus
from edge.calls_rules import Route, find_route, session_references
from edge.commands import CommandFailed
from edge.errors import ApiError
from edge.ice import IceServers
from edge.settings import EdgeSettings
from runtime.retry import Backoff, Retry

log = logging.getLogger(__name__)


class _Created(msgspec.Struct):
    sessionId: str


class _SessionTracks(msgspec.Struct):
    tracks: list[dict[str, Any]] = []


def _error(status: int, message: str, code: str) -> ApiError:
    return ApiError(status, message, code)


_REFUSALS = {
    ErrorCode.CALLS_SESSION_LIMIT: (409, "calls_session_limit"),
    ErrorCode.KICKED: (403, "not_in_room"),
    ErrorCode.BANNED: (403, ErrorCode.BANNED),
    ErrorCode.TOKEN_REVOKED: (403, ErrorCode.TOKEN_REVOKED),
}


class CallsProxy:
    def __init__(
        self,
        settings: EdgeSettings,
        bus: EdgeBus,
        tokens: TokenService,
        http: httpx.AsyncClient,
    ) -> None:
        self._settings = settings
        self._bus = bus
        self._tokens = tokens
        self._http = http
        self.ice = IceServers(settings, http)
        self._cleanup: Subscription | None = None

    # --- the HTTP surface -------------------------------------------------------

    async def handle(self, request: Request[Any, Any, Any], path: str) -> Response[bytes]:
        found = find_route(request.method, path.strip("/"))
        route = found[0].upstream or "/ice-servers" if found else "unknown"
        try:
            response = await self._handle(request, found)
        except ApiError as e:
            metrics.child(metrics.CALLS_REQUESTS, route, str(e.status_code)).inc()
            raise
        metrics.child(metrics.CALLS_REQUESTS, route, str(response.status_code)).inc()
        return response

    async def _handle(
        self, request: Request[Any, Any, Any], found: "tuple[Route, str | None] | None"
    ) -> Response[bytes]:
        if found is None:
            raise _error(404, "Unknown Cloudflare endpoint", "unknown_endpoint")
        entry, session_id = found
        settings = self._settings
        turn_only = entry.access == "ice" and settings.turn_configured
        if not (settings.calls_configured or turn_only):
            raise _error(503, "Cloudflare Calls is not configured", "calls_not_configured")
        claims = self._caller(request)
        if session_id is not None and not ids.is_token_id(session_id):
            raise _error(400, "Invalid session id", "invalid_session_id")
        body = await request.body()
        if claims is not None:
            if entry.access == "create" and not (
                claims.grants.can_publish or claims.grants.can_subscribe
            ):
                raise _error(403, "Your token allows no media", ErrorCode.GRANT_DENIED)
            # Every call: the token's holder must still belong to the room.
            await self._check_member(claims, new_session=entry.access == "create")
        if entry.access == "ice":
            grant = await self.ice.get(claims.participant_id if claims else None)
            answer: dict[str, Any] = {"iceServers": grant.servers}
            if grant.expires_in is not None:
                answer["ttl"] = grant.expires_in  # renew before then
            return _json(msgspec.json.encode(answer), 200)
        if claims is not None:
            body = await self._check_access(entry, session_id, claims, body)
        upstream_path = entry.upstream.format(sid=session_id)
        # The client's query string is not forwarded: nothing of ours needs it,
        # and it would let a caller reach Cloudflare options we do not check.
        response = await self.forward(
            request.method, upstream_path, body or None, creates=entry.creates
        )
        if entry.access == "create" and claims is not None and response.status_code == 201:
            await self._register(response.content, claims)
        return _json(response.content, response.status_code)

    def _caller(self, request: Request[Any, Any, Any]) -> Claims | None:
        if not self._settings.calls_proxy_auth:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _error(401, "Missing token", "missing_token")
        try:
            return self._tokens.verify(token.strip())
        except InvalidToken:
            raise _error(401, "Invalid token", "invalid_token") from None

    async def _check_member(self, claims: Claims, *, new_session: bool) -> None:
        """Ask the room's actor whether the caller may use the proxy now."""
        command = CheckMember(
            cmd_id=ids.new_command_id(),
            room_id=claims.room_id,
            participant_id=claims.participant_id,
            issued_at=claims.iat,
            new_session=new_session,
            identity=claims.identity,
        )
        self._refuse_unless_acked(await self._send(command))

    async def _send(self, command: CheckMember | RegisterCallsSession) -> Reply:
        try:
            return await self._bus.commands.send(command)
        except CommandFailed as e:
            raise _error(503, e.message, e.code) from None

    @staticmethod
    def _refuse_unless_acked(reply: Reply) -> None:
        if isinstance(reply, Ack):
            return
        if isinstance(reply, Rejected) and reply.code in _REFUSALS:
            status, code = _REFUSALS[ErrorCode(reply.code)]
            raise _error(status, reply.message, code)
        raise _error(403, "You are not in this room", "not_in_room")

    async def _check_access(
        self, entry: Route, session_id: str | None, claims: Claims, body: bytes
    ) -> bytes:
        """Check the session in the path and every session the body names;
        return the body to forward."""
        if session_id is not None:
            owner = await self._bus.calls_session(session_id)
            allowed = owner is not None and owner.room_id == claims.room_id
            if allowed and entry.access == "owner":
                allowed = owner is not None and owner.participant_id == claims.participant_id
            if not allowed:
                raise _error(403, "Not your Calls session", "not_session_owner")
        asked = session_references(body, pulls=entry.pulls)
        if entry.located:
            grants = claims.grants
            if asked.local and not grants.can_publish:
                raise _error(403, "Your token does not allow publishing", ErrorCode.GRANT_DENIED)
            if asked.remote and not grants.can_subscribe:
                raise _error(403, "Your token does not allow subscribing", ErrorCode.GRANT_DENIED)
        forwarded, named = asked.body, asked.named
        for remote in sorted(named):
            owner = await self._bus.calls_session(remote) if ids.is_token_id(remote) else None
            if owner is None or owner.room_id != claims.room_id:
                raise _error(403, "That session is not in your room", "session_outside_room")
        return forwarded

    async def _register(self, body: bytes, claims: Claims) -> None:
        try:
            session_id = msgspec.json.decode(body, type=_Created).sessionId
        except (msgspec.DecodeError, RecursionError):
            raise _error(502, "Unexpected response from Cloudflare Calls", "bad_upstream") from None
        if not ids.is_token_id(session_id):
            raise _error(502, "Unexpected response from Cloudflare Calls", "bad_upstream")
        command = RegisterCallsSession(
            cmd_id=ids.new_command_id(),
            room_id=claims.room_id,
            participant_id=claims.participant_id,
            session_id=session_id,
            issued_at=claims.iat,
            identity=claims.identity,
        )
        self._refuse_unless_acked(await self._send(command))

    # --- upstream ---------------------------------------------------------------

    async def forward(
        self, method: str, path: str, body: bytes | None, *, creates: bool = False
    ) -> httpx.Response:
        """Send a request to Cloudflare with the app secret, retrying what is safe."""
        settings = self._settings
        url = f"{settings.calls_api_url}/apps/{settings.calls_app_id}{path}"
        headers = {
            "Authorization": f"Bearer {settings.calls_app_secret}",
            "Content-Type": "application/json",
        }
        # A connection that failed reached nothing: always tried again. A
        # timeout, another transport error, 429 or 5xx: only for calls that
        # create nothing (Cloudflare may have created it already).
        policy = Retry(
            on=_NOT_SENT if creates else (httpx.HTTPError,),
            result=None if creates else _overloaded,
            attempts=settings.calls_retries + 1,
            backoff=Backoff(0.2, cap=1.0),
        )
        try:
            response = await policy.run(
                lambda _: self._http.request(method, url, content=body, headers=headers)
            )
        except _NOT_SENT:
            raise _error(502, "Cloudflare Calls is unreachable", "upstream_unreachable") from None
        except httpx.TimeoutException:
            raise _error(504, "Cloudflare Calls timed out", "upstream_timeout") from None
        except httpx.HTTPError:
            raise _error(502, "Cloudflare Calls is unreachable", "upstream_unreachable") from None
        if not _is_json(response):
            raise _error(502, "Unexpected response from Cloudflare Calls", "bad_upstream")
        return response

    # --- cleanup when a participant leaves ------------------------------------------

    async def start(self) -> None:
        if self._settings.calls_configured:
            self._cleanup = await self._bus.nc.subscribe(
                subjects.CALLS_CLEANUP, queue=subjects.CALLS_CLEANUP_QUEUE, cb=self._on_cleanup
            )

    async def stop(self) -> None:
        if self._cleanup is not None:
            with contextlib.suppress(Exception):
                await self._cleanup.unsubscribe()

    async def _on_cleanup(self, msg: Msg) -> None:
        try:
            request = codec.close_calls_tracks.decode(msg.data)
        except codec.DecodeError:
            log.warning("dropped an undecodable Calls cleanup request")
            return
        for session_id in request.session_ids:
            try:
                await self.close_pushed_tracks(session_id)
            except ApiError as e:
                log.warning("closing tracks of a Calls session failed: %s", e.detail)
        if msg.reply:
            await msg.respond(b"{}")

    async def close_pushed_tracks(self, session_id: str) -> int:
        """Close every active track a session pushed (``force``); gone sessions
        and already closed tracks count as closed. Returns how many were closed."""
        if not ids.is_token_id(session_id):
            return 0
        state = await self.forward("GET", f"/sessions/{session_id}", None)
        if state.status_code in (404, 410):
            return 0
        tracks = msgspec.json.decode(state.content, type=_SessionTracks).tracks
        mids = [
            t["mid"]
            for t in tracks
            if t.get("location") == "local" and t.get("status", "active") == "active" and "mid" in t
        ]
        if not mids:
            return 0
        body = msgspec.json.encode({"tracks": [{"mid": m} for m in mids], "force": True})
        await self.forward("PUT", f"/sessions/{session_id}/tracks/close", body)
        return len(mids)


_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
"""Failures before the request reached Cloudflare."""


def _overloaded(response: httpx.Response) -> bool:
    return response.status_code == 429 or response.status_code >= 500


def _is_json(response: httpx.Response) -> bool:
    if not response.content:
        return True
    try:
        msgspec.json.decode(response.content)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


def _json(content: bytes, status: int) -> Response[bytes]:
    return Response(content or b"{}", status_code=status, media_type="application/json")


@contextlib.asynccontextmanager
async def open_calls(
    settings: EdgeSettings, bus: EdgeBus, tokens: TokenService
) -> AsyncIterator[CallsProxy]:
    """One pooled HTTP client per edge, with explicit timeouts."""
    if settings.calls_configured and not settings.calls_proxy_auth:
        log.warning(
            "CALLS_PROXY_AUTH=off: the Calls proxy is OPEN. Anyone who can reach this edge "
            "can create and change Calls sessions with your app secret."
        )
    timeout = httpx.Timeout(settings.calls_timeout, connect=min(3.0, settings.calls_timeout))
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        proxy = CallsProxy(settings, bus, tokens, http)
        await proxy.start()
        try:
            yield proxy
        finally:
            await proxy.stop()


@route(
    "/cloudflare/{path:path}",
    include_in_schema=False,  # a pass-through to Cloudflare's own API (docs/calls.md)
    http_method=[
        HttpMethod.GET,
        HttpMethod.POST,
        HttpMethod.PUT,
        HttpMethod.DELETE,
        HttpMethod.PATCH,
    ],
)
async def calls_proxy(
    path: FromPath[str], request: Request[Any, Any, Any], calls: NamedDependency[CallsProxy]
) -> Response[bytes]:
    return await calls.handle(request, path)
