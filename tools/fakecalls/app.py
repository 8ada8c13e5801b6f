"""A local stand-in for Cloudflare Calls (the Realtime SFU API), following the
contract in CALLS_API.md: sessions, push/pull of tracks with SDP, the pending
offer rule, renegotiate, close by mid, session state, data channels, TURN
credentials, bearer checks and the documented error bodies.

It keeps everything in memory. Behaviour the contract leaves unconfirmed is a
`FakeCallsConfig` setting. Tests can also inject faults (delay, error statuses)
and read the requests it served.
"""

import asyncio
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, route
from litestar.enums import HttpMethod
from litestar.params import FromPath

from tools.fakecalls import sdp

MAX_TRACKS = 64


@dataclass
class FakeCallsConfig:
    apps: dict[str, str] = field(default_factory=dict)
    """app id -> app secret."""
    turn_keys: dict[str, str] = field(default_factory=dict)
    """TURN key id -> its API token."""
    unauthorized_status: int = 401
    unknown_app_status: int = 404
    gone_status: int = 410
    renegotiate_without_offer_status: int = 406
    rate_limit_per_second: int = 50
    rate_limit_status: int = 429
    turn_max_ttl: int = 48 * 3600


class CallsError(Exception):
    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description


@dataclass
class Track:
    mid: str
    track_name: str
    location: str
    kind: str
    session_id: str | None = None
    status: str = "active"

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "location": self.location,
            "mid": self.mid,
            "trackName": self.track_name,
            "status": self.status,
        }
        if self.session_id:
            out["sessionId"] = self.session_id
        return out


@dataclass
class DataChannel:
    id: int
    name: str
    location: str
    session_id: str | None = None
    status: str = "active"


@dataclass
class Session:
    id: str
    app_id: str
    tracks: dict[str, Track] = field(default_factory=dict)
    channels: dict[int, DataChannel] = field(default_factory=dict)
    pending_offer: bool = False
    next_mid: int = 0
    recent: deque[float] = field(default_factory=deque)
    transport: sdp.Transport = field(default_factory=sdp.Transport)
    sections: list[sdp.Media] = field(default_factory=list)
    """The negotiated m-sections in order, each with the SFU's direction."""

    def new_mid(self) -> str:
        taken = {m.mid for m in self.sections}
        while str(self.next_mid) in self.tracks or str(self.next_mid) in taken:
            self.next_mid += 1
        mid = str(self.next_mid)
        self.next_mid += 1
        return mid


@dataclass
class Served:
    method: str
    path: str
    body: Any
    raw: bytes = b""
    """The body as it arrived."""
    query: str = ""


class _Description(msgspec.Struct):
    type: str
    sdp: str


class _TrackIn(msgspec.Struct, omit_defaults=True):
    location: str | None = None
    mid: str | None = None
    trackName: str | None = None
    sessionId: str | None = None
    kind: str | None = None
    bidirectionalMediaStream: bool | None = None
    simulcast: dict[str, Any] | None = None


class _TracksNew(msgspec.Struct):
    tracks: list[_TrackIn]
    sessionDescription: _Description | None = None
    autoDiscover: bool | None = None


class _Renegotiate(msgspec.Struct):
    sessionDescription: _Description


class _Close(msgspec.Struct):
    tracks: list[_TrackIn]
    force: bool = False
    sessionDescription: _Description | None = None


class _Update(msgspec.Struct):
    tracks: list[_TrackIn]


class _ChannelIn(msgspec.Struct):
    location: str | None = None
    dataChannelName: str | None = None
    sessionId: str | None = None
    id: int | None = None


class _ChannelsNew(msgspec.Struct):
    dataChannels: list[_ChannelIn]


class _Establish(msgspec.Struct):
    dataChannel: _ChannelIn
    sessionDescription: _Description | None = None


class _ChannelsClose(msgspec.Struct):
    dataChannels: list[_ChannelIn]


class _TurnRequest(msgspec.Struct):
    ttl: int = 86400


Handler = Callable[["FakeCalls", Request[Any, Any, Any], "re.Match[str]"], Awaitable[Response[Any]]]
_ROUTES: list[tuple[str, re.Pattern[str], Handler]] = []


def _handles(method: str, pattern: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        _ROUTES.append((method, re.compile(pattern), handler))
        return handler

    return register


def _json(body: Any, status: int = 200) -> Response[Any]:
    return Response(body, status_code=status, media_type="application/json")


class FakeCalls:
    def __init__(self, config: FakeCallsConfig) -> None:
        self.config = config
        self.sessions: dict[str, Session] = {}
        self.served: list[Served] = []
        self.delay = 0.0
        """Seconds to wait before answering (a slow upstream)."""
        self.fail_next: deque[int] = deque()
        """Statuses to answer the next requests with, before any other check."""
        self.revoked: set[str] = set()

    # --- plumbing -------------------------------------------------------------

    def app(self) -> Litestar:
        fake = self

        @route(
            "/{path:path}",
            http_method=[HttpMethod.GET, HttpMethod.POST, HttpMethod.PUT, HttpMethod.DELETE],
        )
        async def dispatch(path: FromPath[str], request: Request[Any, Any, Any]) -> Response[Any]:
            return await fake.handle(request, path.strip("/"))

        return Litestar(route_handlers=[dispatch], logging_config=None, openapi_config=None)

    async def handle(self, request: Request[Any, Any, Any], path: str) -> Response[Any]:
        raw = await request.body()
        try:
            body = msgspec.json.decode(raw) if raw.strip() else None
        except (msgspec.DecodeError, RecursionError):
            body = raw.decode(errors="replace")
        query = request.scope.get("query_string", b"").decode("latin-1")
        self.served.append(Served(request.method, "/" + path, body, raw, query))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_next:
            status = self.fail_next.popleft()
            return _json(
                {"errorCode": "injected", "errorDescription": f"injected {status}"}, status
            )
        for method, pattern, handler in _ROUTES:
            match = pattern.fullmatch(path)
            if match and method == request.method:
                try:
                    return await handler(self, request, match)
                except CallsError as e:
                    return _json({"errorCode": e.code, "errorDescription": e.description}, e.status)
        return _json({"errorCode": "not_found", "errorDescription": "no such endpoint"}, 404)

    def _authorize(self, request: Request[Any, Any, Any], app_id: str) -> None:
        secret = self.config.apps.get(app_id)
        if secret is None:
            raise CallsError(self.config.unknown_app_status, "not_found", "app not found")
        if request.headers.get("authorization") != f"Bearer {secret}":
            raise CallsError(self.config.unauthorized_status, "unauthorized", "invalid app secret")

    def _session(self, request: Request[Any, Any, Any], match: "re.Match[str]") -> Session:
        self._authorize(request, match["app"])
        session = self.sessions.get(match["sid"])
        if session is None or session.app_id != match["app"]:
            raise CallsError(
                self.config.gone_status, "session_error", "session not found or expired"
            )
        now = time.monotonic()
        while session.recent and now - session.recent[0] > 1.0:
            session.recent.popleft()
        if len(session.recent) >= self.config.rate_limit_per_second:
            raise CallsError(self.config.rate_limit_status, "rate_limited", "too many requests")
        session.recent.append(now)
        return session

    @staticmethod
    async def _body(request: Request[Any, Any, Any], shape: type[Any]) -> Any:
        try:
            return msgspec.json.decode(await request.body(), type=shape)
        except msgspec.DecodeError as e:
            raise CallsError(400, "decoding_error", str(e)) from None

    @staticmethod
    def _not_pending(session: Session) -> None:
        if session.pending_offer:
            raise CallsError(
                406,
                "invalid_session_description",
                "an SFU offer awaits renegotiate before any other change",
            )


# --- sessions -------------------------------------------------------------------

_APP = r"v1/apps/(?P<app>[^/]+)"
_SID = _APP + r"/sessions/(?P<sid>[^/]+)"


def _answer(session: Session, offered: list[sdp.Media]) -> str:
    """Answer a client's offer; its m-sections become the session's."""
    names = {t.mid: t.track_name for t in session.tracks.values()}
    session.sections = [
        sdp.Media(m.kind, m.mid, names.get(m.mid, ""), _SFU_SIDE.get(m.direction, "recvonly"))
        for m in offered
    ]
    return sdp.answer(offered, session.transport)


_SFU_SIDE = {
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "sendrecv": "sendrecv",
    "inactive": "inactive",
}


@_handles("POST", _APP + r"/sessions/new")
async def _new_session(
    fake: FakeCalls, request: Request[Any, Any, Any], match: "re.Match[str]"
) -> Response[Any]:
    fake._authorize(request, match["app"])
    session = Session(id=secrets.token_hex(16), app_id=match["app"])
    fake.sessions[session.id] = session
    body: dict[str, Any] = {"sessionId": session.id}
    raw = await request.body()
    if raw.strip():  # the legacy form: an offer with the create
        legacy = msgspec.json.decode(raw)
        description = legacy.get("sessionDescription") if isinstance(legacy, dict) else None
        if isinstance(description, dict) and isinstance(description.get("sdp"), str):
            offered = sdp.media_of(description["sdp"])
            body["sessionDescription"] = {"type": "answer", "sdp": _answer(session, offered)}
    return _json(body, 201)


@_handles("GET", _SID)
async def _get_session(
    fake: FakeCalls, request: Request[Any, Any, Any], match: "re.Match[str]"
) -> Response[Any]:
    session = fake._session(request, match)
    channels = [
        {"location": c.location, "dataChannelName": c.name, "id": c.id, "status": c.status}
        for c in session.channels.values()
    ]
    return _json({"tracks": [t.view() for t in session.tracks.values()], "dataChannels": channels})


@_handles("POST", _SID + r"/tracks/new")
async def _new_tracks(
    fake: FakeCalls, request: Request[Any, Any, Any], match: "re.Match[str]"
) -> Response[Any]:
    session = fake._session(request, match)
    body: _TracksNew = await fake._body(request, _TracksNew)
    fake._not_pending(session)
    if not body.tracks or len(body.tracks) > MAX_TRACKS:
        raise CallsError(406, "invalid_params", f"between 1 and {MAX_TRACKS} tracks per call")
    locations = {t.location for t in body.tracks}
    if locations not in ({"local"}, {"remote"}):
        raise CallsError(406, "invalid_params", "tracks must be all local or all remote")
    if locations == {"local"}:
        return _push(session, body)
    return _pull(fake, session, body)


def _push(session: Session, body: _TracksNew) -> Response[Any]:
    description = body.sessionDescription
    if description is None or description.type != "offer":
        raise CallsError(406, "invalid_params", "pushing tracks needs an offer")
    try:
        sections = sdp.media_of(description.sdp)
    except sdp.SdpError as e:
        raise CallsError(406, "invalid_session_description", str(e)) from None
    offered = {m.mid: m for m in sections}
    out = []
    for track in body.tracks:
        if not track.trackName or track.mid is None or track.mid not in offered:
            raise CallsError(
                406, "invalid_params", "each local track needs a trackName and an offered mid"
            )
        media = offered[track.mid]
        session.tracks[track.mid] = Track(track.mid, track.trackName, "local", media.kind)
        out.append({"location": "local", "mid": track.mid, "trackName": track.trackName})
    return _json(
        {
            "requiresImmediateRenegotiation": False,
            "sessionDescription": {"type": "answer", "sdp": _answer(session, sections)},
            "tracks": out,
        }
    )


def _pull(fake: FakeCalls, session: Session, body: _TracksNew) -> Response[Any]:
    out: list[dict[str, Any]] = []
    offered = []
    for track in body.tracks:
        publisher = fake.sessions.get(track.sessionId or "")
        source = None
        if publisher is not None and publisher.app_id == session.app_id:
            source = next(
                (
                    t
                    for t in publisher.tracks.values()
                    if t.location == "local"
                    and t.track_name == track.trackName
                    and t.status == "active"
                ),
                None,
            )
        if source is None:
            out.append(
                {
                    "location": "remote",
                    "sessionId": track.sessionId,
                    "trackName": track.trackName,
                    "errorCode": "not_found_track_error",
                    "errorDescription": "track not found",
                }
            )
            continue
        mid = session.new_mid()
        kind = track.kind or source.kind
        assert publisher is not None
        session.tracks[mid] = Track(mid, source.track_name, "remote", kind, publisher.id)
        offered.append(sdp.Media(kind, mid, source.track_name, "sendonly"))
        out.append(
            {
                "location": "remote",
                "sessionId": track.sessionId,
                "trackName": track.trackName,
                "mid": mid,
            }
        )
    body_out: dict[str, Any] = {"requiresImmediateRenegotiation": bool(offered), "tracks": out}
    if offered:
        session.pending_offer = True
        session.sections.extend(offered)
        body_out["sessionDescription"] = {
            "type": "offer",
            "sdp": sdp.offer(session.sections, session.transport),
        }
    return _json(body_out)


@_handles("PUT", _SID + r"/renegotiate")
async def _renegotiate(
    fake: FakeCalls, request: Request[Any, Any, Any], match: "re.Match[str]"
) -> Response[Any]:
    session = fake._session(request, match)
    body: _Renegotiate = await fake._body(request, _Renegotiate)
    if not session.pending_offer:
        raise CallsError(
            fake.config.renegotiate_without_offer_status,
            "invalid_session_description",
            "nothing to renegotiate",
        )
    if body.sessionDescription.type != "answer":
        raise CallsError(406, "invalid_session_description", "renegotiate takes an answer")
    try:
        sdp.media_of(body.sessionDescription.sdp)
    except sdp.SdpError as e:
        raise CallsError(406, "invalid_session_description", str(e)) from None
    session.pending_offer = False
    return _json({})


@_handles("PUT", _SID + r"/tracks/close")
async def _close_tracks(
    fake: FakeCalls, request: Request[Any, Any, Any], match: "re.Match[str]"
) -> Response[Any]:
    session = fake._session(request, match)
    body: _Close = await fake._body(request, _Close)
    fake._not_pending(session)
    out = []
    for item in body.tracks:
        track = session.tracks.get(item.mid or "")
        if track is None or track.status != "active":
            out.append(
                {
                    "mid": item.mid,
                    "errorCode": "close_track_error",
                    "errorDescription": "track is not active",
                }
            )
            continue
        track.status = "inactive"
        out.append({"mid": item.mid})
    reply: dict[str, Any] = {"requiresImmediateRenegotiation": False, "tracks": out}
    if not body.force and body.sessionDescription is not None:
        try:
            sections = sdp.media_of(body.sessionDescription.sdp)
        except sdp.SdpError as e:
            raise CallsError(406, "invalid_session_description", str(e)) from None
        reply["sessionDescription"] = {"type": "answer", "sdp": _answer(session, sections)}
    return _json(reply)


@_handles("PUT", _SID + r"/tracks/update")
async def _update_tracks(
    fake: FakeCalls, request: Request[Any, Any, Any], match: "re.Match[str]"
) -> Response[Any]:
    session = fake._session(request, match)
    body: _Update = await fake._body(request, _Update)
    fake._not_pending(session)
    out = []
    for item in body.tracks:
        track = session.tracks.get(item.mid or "")
        if track is None:
            out.append(
                {
                    "mid": item.mid,
                    "errorCode": "update_track_error",
                    "errorDescription": "no such mid",
                }
            )
            continue
        out.append(track.view())
    return _json({"requiresImmediateRenegotiation": False, "tracks": out})


# --- data channels ----------------------------------------------------------------


@_handles("POST", _SID + r"/datachannels/new")
async def _new_channels(
    fake: FakeCalls, request: Request[Any, Any, Any], match: "re.Match[str]"
) -> Response[Any]:
    session = fake._session(request, match)
    body: _ChannelsNew = await fake._body(request, _ChannelsNew)
    fake._not_pending(session)
    out = []
    for item in body.dataChannels:
        if item.location not in ("local", "remote") or not item.dataChannelName:
            raise CallsError(406, "invalid_params", "each data channel needs a location and a name")
        entry: dict[str, Any] = {"location": item.location, "dataChannelName": item.dataChannelName}
        if item.location == "remote":
            entry["sessionId"] = item.sessionId
            publisher = fake.sessions.get(item.sessionId or "")
            if publisher is None or not any(
                c.name == item.dataChannelName and c.location == "local"
                for c in publisher.channels.values()
            ):
                entry |= {
                    "errorCode": "not_found_error",
                    "errorDescription": "no such data channel",
                }
                out.append(entry)
                continue
        channel_id = len(session.channels) + 1
        session.channels[channel_id] = DataChannel(
            channel_id, item.dataChannelName, item.location, item.sessionId
        )
        out.append(entry | {"id": channel_id})
    return _json({"dataChannels": out})


@_handles("POST", _SID + r"/datachannels/establish")
async def _establish_channel(
    fake: FakeCalls, request: Request[Any, Any, Any], match: "re.Match[str]"
) -> Response[Any]:
    session = fake._session(request, match)
    body: _Establish = await fake._body(request, _Establish)
    fake._not_pending(session)
    name = body.dataChannel.dataChannelName
    if not name:
        raise CallsError(406, "invalid_params", "dataChannelName is required")
    channel_id = len(session.channels) + 1
    session.channels[channel_id] = DataChannel(
        channel_id, name, body.dataChannel.location or "remote"
    )
    session.pending_offer = True
    if not any(m.kind == "application" for m in session.sections):
        session.sections.append(sdp.Media("application", session.new_mid()))
    return _json(
        {
            "requiresImmediateRenegotiation": True,
            "sessionDescription": {
                "type": "offer",
                "sdp": sdp.offer(session.sections, session.transport),
            },
            "dataChannel": {"dataChannelName": name, "id": channel_id},
        }
    )


@_handles("PUT", _SID + r"/datachannels/close")
async def _close_channels(
    fake: FakeCalls, request: Request[Any, Any, Any], match: "re.Match[str]"
) -> Response[Any]:
    session = fake._session(request, match)
    body: _ChannelsClose = await fake._body(request, _ChannelsClose)
    out = []
    for item in body.dataChannels:
        channel = session.channels.get(item.id or -1)
        if channel is None or channel.status != "active":
            out.append(
                {
                    "id": item.id,
                    "errorCode": "close_error",
                    "errorDescription": "no such data channel",
                }
            )
            continue
        channel.status = "inactive"
        out.append({"id": item.id})
    return _json({"dataChannels": out})


# --- TURN -------------------------------------------------------------------------

_TURN = r"v1/turn/keys/(?P<key>[^/]+)/credentials"


def _turn_authorize(fake: FakeCalls, request: Request[Any, Any, Any], key_id: str) -> None:
    token = fake.config.turn_keys.get(key_id)
    if token is None:
        raise CallsError(fake.config.unknown_app_status, "not_found", "TURN key not found")
    if request.headers.get("authorization") != f"Bearer {token}":
        raise CallsError(fake.config.unauthorized_status, "unauthorized", "invalid TURN key token")


@_handles("POST", _TURN + r"/generate-ice-servers")
async def _generate_ice_servers(
    fake: FakeCalls, request: Request[Any, Any, Any], match: "re.Match[str]"
) -> Response[Any]:
    _turn_authorize(fake, request, match["key"])
    body: _TurnRequest = await fake._body(request, _TurnRequest)
    if not 0 < body.ttl <= fake.config.turn_max_ttl:
        raise CallsError(400, "invalid_params", f"ttl must be 1..{fake.config.turn_max_ttl}")
    username = secrets.token_hex(16)
    return _json(
        {
            "iceServers": [
                {"urls": ["stun:stun.cloudflare.com:3478", "stun:stun.cloudflare.com:53"]},
                {
                    "urls": [
                        "turn:turn.cloudflare.com:3478?transport=udp",
                        "turn:turn.cloudflare.com:53?transport=udp",
                        "turn:turn.cloudflare.com:3478?transport=tcp",
                        "turns:turn.cloudflare.com:5349?transport=tcp",
                    ],
                    "username": username,
                    "credential": secrets.token_urlsafe(24),
                },
            ]
        },
        201,
    )


@_handles("POST", _TURN + r"/(?P<user>[^/]+)/revoke")
async def _revoke(
    fake: FakeCalls, request: Request[Any, Any, Any], match: "re.Match[str]"
) -> Response[Any]:
    _turn_authorize(fake, request, match["key"])
    fake.revoked.add(match["user"])
    return Response(None, status_code=204)
