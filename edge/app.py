"""The edge application: ``create_app(settings) -> Litestar``."""

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, Response, WebSocket, get, websocket
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge import rooms
from edge import socket as client_socket
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


@get("/ws", sync_to_thread=False, include_in_schema=False)
def ws_without_upgrade() -> None:
    raise ApiError(426, "Expected a WebSocket[Any, Any, Any] upgrade", "upgrade_required")


def create_app(settings: EdgeSettings) -> Litestar:
    tokens = TokenService(
        settings.jwt_secret, ttl=settings.token_ttl, previous=settings.jwt_secret_previous
    )
    addresses = AddressLimits(settings)

    @contextlib.asynccontextmanager
    async def resources(app: Litestar) -> AsyncIterator[None]:
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
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,
    )
