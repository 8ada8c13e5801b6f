"""The HTTP API (README, "API in brief"; docs/protocol.md) against a real edge,
worker and nats-server."""

import time
import uuid
from datetime import datetime

import httpx
import jwt
import pytest

from tests.harness import JWT_SECRET, Api, System, WsClient

pytestmark = pytest.mark.asyncio(loop_scope="session")


def parse_iso(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_health(api: Api) -> None:
    response = await api.http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert abs(parse_iso(body["timestamp"]).timestamp() - time.time()) < 60


async def test_ready_when_nats_and_kv_reachable(api: Api) -> None:
    response = await api.http.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_create_room_returns_id_and_time(api: Api) -> None:
    response = await api.http.post("/api/rooms", json={"name": "Standup"})
    assert response.status_code == 200
    body = response.json()
    assert str(uuid.UUID(body["room_id"])) == body["room_id"]
    parse_iso(body["created_at"])


async def test_get_room_in_old_camel_case_shape_with_its_join_policy(api: Api) -> None:
    created = (
        await api.http.post(
            "/api/rooms", json={"name": "Design review", "max_participants": 4, "created_by": "ana"}
        )
    ).json()
    response = await api.http.get(f"/api/rooms/{created['room_id']}")
    assert response.status_code == 200
    assert response.json() == {
        "id": created["room_id"],
        "name": "Design review",
        "createdBy": "ana",
        "createdAt": created["created_at"],
        "maxParticipants": 4,
        "joinPolicy": "open",
    }


async def test_create_room_accepts_camel_case_fields(api: Api) -> None:
    room_id = await api.create_room("Camel", maxParticipants=3, createdBy="bo")
    body = (await api.http.get(f"/api/rooms/{room_id}")).json()
    assert body["maxParticipants"] == 3
    assert body["createdBy"] == "bo"


async def test_create_room_defaults(api: Api) -> None:
    room_id = await api.create_room("Defaults")
    body = (await api.http.get(f"/api/rooms/{room_id}")).json()
    assert body["maxParticipants"] == 10
    assert body["createdBy"] == "unknown"  # what the old service answered


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "Invalid request body"),
        (b"[1, 2]", "Invalid request body"),
        (b'{"name": 5}', "Invalid request body"),
        (b"{}", "name is required"),
        (b'{"name": ""}', "name must be"),
        (b'{"name": "x", "max_participants": 0}', "max_participants"),
        (b'{"name": "x", "max_participants": 100000}', "max_participants"),
        (b'{"name": "x", "max_participants": "ten"}', "Invalid request body"),
        (b'{"name": "a\\u0000b"}', "control characters"),
    ],
)
async def test_create_room_rejects_bad_bodies(api: Api, body: bytes, fragment: str) -> None:
    response = await api.http.post(
        "/api/rooms", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert fragment in response.json()["error"]


async def test_get_unknown_room_is_404(api: Api) -> None:
    for room_id in (str(uuid.uuid4()), "not-a-uuid", "a.b.c", "*", "%3E"):
        response = await api.http.get(f"/api/rooms/{room_id}")
        assert response.status_code == 404, room_id
        assert response.json()["error"] == "Room not found"


async def test_join_issues_an_hs256_token_with_the_old_claims(api: Api) -> None:
    room_id = await api.create_room("Tokens")
    response = await api.http.post(f"/api/rooms/{room_id}/join", json={"participant_name": "Kim"})
    assert response.status_code == 200
    body = response.json()
    assert body["ice_servers"] == [{"urls": "stun:stun.cloudflare.com:3478"}]
    assert jwt.get_unverified_header(body["token"])["alg"] == "HS256"
    claims = jwt.decode(body["token"], JWT_SECRET, algorithms=["HS256"])
    assert claims["room_id"] == room_id
    assert claims["participant_id"] == body["participant_id"]
    assert claims["participant_name"] == "Kim"
    assert claims["exp"] - claims["iat"] == 24 * 3600


async def test_join_defaults_to_guest_and_accepts_camel_case(api: Api) -> None:
    room_id = await api.create_room("Names")
    guest = (await api.http.post(f"/api/rooms/{room_id}/join")).json()
    assert (
        jwt.decode(guest["token"], JWT_SECRET, algorithms=["HS256"])["participant_name"] == "Guest"
    )
    camel = (
        await api.http.post(f"/api/rooms/{room_id}/join", json={"participantName": "Lee"})
    ).json()
    assert jwt.decode(camel["token"], JWT_SECRET, algorithms=["HS256"])["participant_name"] == "Lee"


async def test_join_unknown_room_is_404(api: Api) -> None:
    response = await api.http.post(f"/api/rooms/{uuid.uuid4()}/join", json={})
    assert response.status_code == 404
    assert response.json()["error"] == "Room not found"


async def test_join_full_room_is_409(api: Api, ws_url: str) -> None:
    room_id = await api.create_room("Tiny", max_participants=1)
    first = await api.join(room_id, "first")
    client = await WsClient.connect(ws_url, first["token"])
    await client.recv_type("welcome")
    response = await api.http.post(f"/api/rooms/{room_id}/join", json={})
    assert response.status_code == 409
    assert response.json() == {"error": "Room is full", "code": "room_full"}
    await client.close()


async def test_cors_preflight_is_answered(api: Api) -> None:
    response = await api.http.options(
        "/api/rooms",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] in ("*", "https://app.example")
    assert "POST" in response.headers["access-control-allow-methods"]


async def test_cors_origin_setting_restricts_origins(make_system) -> None:  # type: ignore[no-untyped-def]
    system: System = make_system(CORS_ORIGIN="https://app.example")
    await system.start()
    async with httpx.AsyncClient(base_url=system.edges[0].url) as http:
        allowed = await http.options(
            "/api/rooms",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = await http.options(
            "/api/rooms",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/cloudflare/session"),
        ("POST", "/cloudflare/session/abc/tracks/new"),
        ("PUT", "/cloudflare/session/abc/renegotiate"),
    ],
)
async def test_calls_routes_answer_503_until_configured(api: Api, method: str, path: str) -> None:
    response = await api.http.request(method, path, json={})
    assert response.status_code == 503
    assert response.json()["error"] == "Cloudflare Calls is not configured"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/cloudflare/nothing"),
        ("POST", "/cloudflare/session/abc/unknown"),
        ("GET", "/cloudflare/session"),
        ("DELETE", "/cloudflare/session/abc"),
    ],
)
async def test_unknown_calls_paths_are_404(api: Api, method: str, path: str) -> None:
    response = await api.http.request(method, path)
    assert response.status_code == 404
    assert response.json()["error"] == "Unknown Cloudflare endpoint"


async def test_unknown_route_is_json_404(api: Api) -> None:
    response = await api.http.get("/no/such/thing")
    assert response.status_code == 404
    assert response.json()["error"] == "Not found"


async def test_plain_get_on_ws_asks_for_upgrade(api: Api) -> None:
    response = await api.http.get("/ws")
    assert response.status_code == 426
    assert "WebSocket" in response.json()["error"]
