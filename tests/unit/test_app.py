"""The edge application builds cleanly (any deprecation or other warning fails)."""

from edge.app import create_app
from edge.settings import EdgeSettings


def test_create_app_without_warnings() -> None:
    app = create_app(EdgeSettings(jwt_secret="x" * 40))
    paths = {route.path for route in app.routes}
    assert {"/health", "/ready", "/api/rooms", "/ws", "/cloudflare/{path:path}"} <= paths
