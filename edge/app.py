"""The edge application: ``create_app(settings) -> Litestar``."""

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from litestar import Litestar, Response, WebSocket, get, websocket
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.response import File
from litestar.static_files import create_static_files_router
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge import access, rooms
from edge import socket as client_socket
from edge.admin import admin_router
from edge.auth import TokenService
from edge.bus import EdgeBus, open_bus
from edge.calls_proxy import CallsProxy, calls_proxy, open_calls
from edge.errors import ApiError, exception_handlers
from edge.limits import AddressLimits
from edge.settings import EdgeSettings


@websocket("/ws")
async def ws_endpoint(
    socket: WebSocket[Any, Any, Any],
    bus: NamedDependency[EdgeBus],
    tokens: NamedDependency[TokenService],
    settings: NamedDependency[EdgeSettings],
    addresses: NamedDependency[AddressLimits],
) -> None:
    await client_socket.serve(socket, bus, tokens, settings, addresses)


@get("/metrics", sync_to_thread=False, include_in_schema=False)
def metrics_endpoint() -> Response[bytes]:
    """Prometheus metrics of this edge."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


STATIC_DIR = Path(__file__).parent / "static"
PAGE_HEADERS = {
    # The page loads only its own script and style and talks only to this edge.
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; media-src 'self' blob: mediastream:; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@get("/", sync_to_thread=False, include_in_schema=False)
def index_page() -> File:
    """The web client (edge/static): create or join a room, talk."""
    return File(
        STATIC_DIR / "index.html",
        filename="index.html",
        media_type="text/html; charset=utf-8",
        content_disposition_type="inline",
        headers=PAGE_HEADERS,
    )


static_files = create_static_files_router(
    path="/static", directories=[STATIC_DIR], include_in_schema=False, name="static"
)


@get("/ws", sync_to_thread=False, include_in_schema=False)
def ws_without_upgrade() -> None:
    raise ApiError(426, "Expected a WebSocket upgrade", "upgrade_required")


def start_draining(app: Litestar) -> None:
    """Stop taking clients (SIGTERM): ``/ready`` answers 503 and new sockets are
    refused. Nothing to do before the lifespan has connected to NATS."""
    bus: EdgeBus | None = getattr(app.state, "bus", None)
    if bus is not None:
        bus.draining = True


def create_app(settings: EdgeSettings) -> Litestar:
    tokens = TokenService(
        settings.jwt_secret,
        ttl=settings.token_ttl,
        previous=settings.jwt_secret_previous,
        max_name_length=settings.max_name_length,
    )
    addresses = AddressLimits(settings)

    @contextlib.asynccontextmanager
    async def resources(app: Litestar) -> AsyncIterator[None]:
        """The NATS connection and the Calls client live as long as the app: the
        lifespan opens them and keeps them in ``app.state`` (Litestar's place for
        what a lifespan makes), whence the providers below hand them to handlers.
        What exists before the app (settings, tokens, limits) is handed out by
        closures, and ``app.state`` is read in this module only."""
        async with open_bus(settings) as bus, open_calls(settings, bus, tokens) as calls:
            app.state.bus = bus
            app.state.calls = calls
            yield

    def provide_bus(state: State) -> EdgeBus:
        bus: EdgeBus = state.bus
        return bus

    def provide_calls(state: State) -> CallsProxy:
        calls: CallsProxy = state.calls
        return calls

    return Litestar(
        route_handlers=[
            rooms.health,
            rooms.ready,
            rooms.create_room,
            rooms.get_room,
            rooms.join_room,
            ws_endpoint,
            ws_without_upgrade,
            metrics_endpoint,
            calls_proxy,
            index_page,
            static_files,
            admin_router(settings, tokens, access.HANDLERS),
        ],
        lifespan=[resources],
        dependencies={
            "bus": Provide(provide_bus, sync_to_thread=False),
            "calls": Provide(provide_calls, sync_to_thread=False),
            "tokens": Provide(lambda: tokens, sync_to_thread=False, use_cache=True),
            "settings": Provide(lambda: settings, sync_to_thread=False, use_cache=True),
            "addresses": Provide(lambda: addresses, sync_to_thread=False, use_cache=True),
        },
        cors_config=CORSConfig(
            allow_origins=[settings.cors_origin],
            allow_methods=["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"],
            allow_headers=["Content-Type", "Authorization"],
            max_age=86400,
        ),
        exception_handlers=exception_handlers(),
        openapi_config=OpenAPIConfig(
            title="signaling",
            version="1",
            description="WebRTC signaling service: rooms, join tokens, the Calls proxy "
            "and the room service API for operators.",
            components=Components(
                security_schemes={
                    "AdminBearer": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        description="ADMIN_API_KEY, or a JWT with `admin: true` signed "
                        "with JWT_SECRET (`signaling admin-token`).",
                    )
                }
            ),
        ),
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,
    )
