"""The edge application builds cleanly (any deprecation or other warning fails)."""

from bus_schema.state import TRACK_KINDS
from edge.app import create_app
from edge.settings import EdgeSettings


def test_create_app_without_warnings() -> None:
    app = create_app(EdgeSettings(jwt_secret="x" * 40))
    paths = {route.path for route in app.routes}
    assert {"/health", "/ready", "/api/rooms", "/ws", "/cloudflare/{path:path}"} <= paths


def test_the_admin_mute_body_takes_the_track_kinds_of_bus_schema() -> None:
    """The kind of a mute is `bus_schema.state.TrackKind`: the OpenAPI schema
    lists its values, and the body is refused before the handler for any other."""
    schema = create_app(EdgeSettings(jwt_secret="x" * 40)).openapi_schema.to_schema()
    kind = schema["components"]["schemas"]["MuteBody"]["properties"]["kind"]
    assert kind["enum"] == list(TRACK_KINDS)
