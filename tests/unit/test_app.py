"""The edge application builds cleanly (any deprecation or other warning fails)."""

from litestar.testing import TestClient

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


def test_ws_without_an_upgrade_is_426_in_plain_words() -> None:
    """A plain GET of ``/ws`` says what it wanted, without Python's type syntax.
    (The lifespan does not run: the answer needs no NATS.)"""
    client = TestClient(create_app(EdgeSettings(jwt_secret="x" * 40)))
    response = client.get("/ws")
    assert response.status_code == 426
    assert response.json() == {"error": "Expected a WebSocket upgrade", "code": "upgrade_required"}
