"""The Calls stand-in follows CALLS_API.md (checked directly, without the proxy)."""

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from tools.fakecalls import FakeCalls, FakeCallsConfig, FakeCallsServer, sdp

pytestmark = pytest.mark.asyncio(loop_scope="session")
APP, SECRET = "app1", "app-secret-1"


def client_offer(*kinds: str) -> str:
    return sdp.offer([sdp.Media(kind, str(i)) for i, kind in enumerate(kinds)])


@pytest_asyncio.fixture(loop_scope="session")
async def calls() -> AsyncIterator[tuple[FakeCalls, httpx.AsyncClient]]:
    fake = FakeCalls(FakeCallsConfig(apps={APP: SECRET}, turn_keys={"k1": "turn-token"}))
    server = await FakeCallsServer(fake).start()
    async with httpx.AsyncClient(
        base_url=f"{server.base_url}/apps/{APP}",
        headers={"Authorization": f"Bearer {SECRET}"},
    ) as http:
        yield fake, http
    await server.stop()


async def new_session(http: httpx.AsyncClient) -> str:
    response = await http.post("/sessions/new")
    assert response.status_code == 201
    session_id: str = response.json()["sessionId"]
    assert len(session_id) == 32
    int(session_id, 16)
    return session_id


async def push(http: httpx.AsyncClient, sid: str, *names: str) -> dict[str, object]:
    offer = client_offer(*("audio" if "audio" in n else "video" for n in names))
    tracks = [{"location": "local", "mid": str(i), "trackName": n} for i, n in enumerate(names)]
    response = await http.post(
        f"/sessions/{sid}/tracks/new",
        json={"sessionDescription": {"type": "offer", "sdp": offer}, "tracks": tracks},
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def test_push_answers_with_valid_sdp_echoing_mids_and_names(calls) -> None:  # type: ignore[no-untyped-def]
    _, http = calls
    sid = await new_session(http)
    body = await push(http, sid, "cam-audio", "cam-video")
    assert body["requiresImmediateRenegotiation"] is False
    answer = body["sessionDescription"]
    assert isinstance(answer, dict)
    assert answer["type"] == "answer"
    assert [(m.kind, m.mid) for m in sdp.media_of(answer["sdp"])] == [
        ("audio", "0"),
        ("video", "1"),
    ]
    assert "a=recvonly" in answer["sdp"]
    assert body["tracks"] == [
        {"location": "local", "mid": "0", "trackName": "cam-audio"},
        {"location": "local", "mid": "1", "trackName": "cam-video"},
    ]


async def test_pull_offers_new_mids_and_requires_renegotiation(calls) -> None:  # type: ignore[no-untyped-def]
    _, http = calls
    publisher, puller = await new_session(http), await new_session(http)
    await push(http, publisher, "a-audio", "a-video")
    response = await http.post(
        f"/sessions/{puller}/tracks/new",
        json={
            "tracks": [
                {"location": "remote", "sessionId": publisher, "trackName": "a-video"},
                {"location": "remote", "sessionId": publisher, "trackName": "missing"},
            ]
        },
    )
    body = response.json()
    assert response.status_code == 200
    assert body["requiresImmediateRenegotiation"] is True
    assert body["sessionDescription"]["type"] == "offer"
    pulled, missing = body["tracks"]
    assert pulled["mid"] == "0"
    assert missing["errorCode"] == "not_found_track_error"
    # A second change while the offer is pending is refused with 406.
    again = await http.post(
        f"/sessions/{puller}/tracks/new",
        json={"tracks": [{"location": "remote", "sessionId": publisher, "trackName": "a-audio"}]},
    )
    assert again.status_code == 406
    assert again.json()["errorCode"] == "invalid_session_description"
    answer = sdp.answer(sdp.media_of(body["sessionDescription"]["sdp"]))
    ok = await http.put(
        f"/sessions/{puller}/renegotiate",
        json={"sessionDescription": {"type": "answer", "sdp": answer}},
    )
    assert (ok.status_code, ok.json()) == (200, {})
    nothing = await http.put(
        f"/sessions/{puller}/renegotiate",
        json={"sessionDescription": {"type": "answer", "sdp": answer}},
    )
    assert nothing.json()["errorCode"] == "invalid_session_description"
    state = (await http.get(f"/sessions/{puller}")).json()
    assert state["tracks"] == [
        {
            "location": "remote",
            "mid": "0",
            "trackName": "a-video",
            "sessionId": publisher,
            "status": "active",
        }
    ]


async def test_close_by_mid_with_per_item_errors(calls) -> None:  # type: ignore[no-untyped-def]
    _, http = calls
    sid = await new_session(http)
    await push(http, sid, "x-audio")
    response = await http.put(
        f"/sessions/{sid}/tracks/close",
        json={"tracks": [{"mid": "0"}, {"mid": "7"}], "force": True},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["requiresImmediateRenegotiation"] is False
    assert "sessionDescription" not in body
    assert body["tracks"][0] == {"mid": "0"}
    assert body["tracks"][1]["errorCode"] == "close_track_error"
    state = (await http.get(f"/sessions/{sid}")).json()
    assert state["tracks"][0]["status"] == "inactive"


@pytest.mark.parametrize(
    ("headers", "path", "status", "code"),
    [
        ({"Authorization": "Bearer wrong"}, f"/v1/apps/{APP}/sessions/new", 401, "unauthorized"),
        ({"Authorization": ""}, f"/v1/apps/{APP}/sessions/new", 401, "unauthorized"),
        ({"Authorization": f"Bearer {SECRET}"}, "/v1/apps/nope/sessions/new", 404, "not_found"),
    ],
)
async def test_bearer_and_app_checks(calls, headers, path, status, code) -> None:  # type: ignore[no-untyped-def]
    _, http = calls
    base = str(http.base_url).split("/v1/")[0]
    response = await http.post(base + path, headers=headers)
    assert response.status_code == status
    assert response.json()["errorCode"] == code


async def test_errors_for_bad_bodies_and_sessions(calls) -> None:  # type: ignore[no-untyped-def]
    _, http = calls
    gone = await http.get(f"/sessions/{'0' * 32}")
    assert (gone.status_code, gone.json()["errorCode"]) == (410, "session_error")
    sid = await new_session(http)
    bad_json = await http.post(f"/sessions/{sid}/tracks/new", content=b"{nope")
    assert (bad_json.status_code, bad_json.json()["errorCode"]) == (400, "decoding_error")
    mixed = await http.post(
        f"/sessions/{sid}/tracks/new",
        json={
            "tracks": [
                {"location": "local", "mid": "0", "trackName": "a"},
                {"location": "remote", "sessionId": sid, "trackName": "b"},
            ]
        },
    )
    assert (mixed.status_code, mixed.json()["errorCode"]) == (406, "invalid_params")


async def test_data_channels(calls) -> None:  # type: ignore[no-untyped-def]
    _, http = calls
    publisher, subscriber = await new_session(http), await new_session(http)
    made = await http.post(
        f"/sessions/{publisher}/datachannels/new",
        json={"dataChannels": [{"location": "local", "dataChannelName": "chat"}]},
    )
    assert made.json()["dataChannels"][0]["id"] == 1
    joined = await http.post(
        f"/sessions/{subscriber}/datachannels/new",
        json={
            "dataChannels": [
                {"location": "remote", "dataChannelName": "chat", "sessionId": publisher},
                {"location": "remote", "dataChannelName": "nope", "sessionId": publisher},
            ]
        },
    )
    ok, missing = joined.json()["dataChannels"]
    assert ok["id"] == 1
    assert "errorCode" in missing
    established = await http.post(
        f"/sessions/{subscriber}/datachannels/establish",
        json={"dataChannel": {"location": "remote", "dataChannelName": "server-events"}},
    )
    assert established.json()["requiresImmediateRenegotiation"] is True
    closed = await http.put(
        f"/sessions/{publisher}/datachannels/close", json={"dataChannels": [{"id": 1}, {"id": 9}]}
    )
    assert closed.json()["dataChannels"][0] == {"id": 1}
    assert "errorCode" in closed.json()["dataChannels"][1]


async def test_turn_credentials(calls) -> None:  # type: ignore[no-untyped-def]
    _, http = calls
    base = str(http.base_url).split("/apps/")[0]
    url = f"{base}/turn/keys/k1/credentials/generate-ice-servers"
    refused = await http.post(url, json={"ttl": 600}, headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 401
    response = await http.post(
        url, json={"ttl": 600}, headers={"Authorization": "Bearer turn-token"}
    )
    assert response.status_code == 201
    servers = response.json()["iceServers"]
    turn = next(s for s in servers if "username" in s)
    assert turn["credential"]
    assert any(":53?" in u for u in turn["urls"])  # the stand-in offers port 53, like Cloudflare
