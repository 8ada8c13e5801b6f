"""Every abuse limit and token rule, against real processes."""

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import jwt
import pytest
import websockets

from edge.settings import EdgeSettings
from tests.harness import JWT_SECRET, Api, System, WsClient, enter
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def status_before_upgrade(url: str, **kwargs: object) -> int:
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url, open_timeout=10, **kwargs)  # type: ignore[arg-type]
    return refused.value.response.status_code


async def test_frame_size_limit_closes_with_1009(make_system: Callable[..., System]) -> None:
    system = make_system(MAX_FRAME_BYTES="2048")
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("frames")
    ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
    await ann.send({"type": "chat", "pad": "x" * 1000})  # under the limit: fine
    await ann.send({"type": "chat", "pad": "x" * 4000})
    code, _ = await ann.client.closed()
    assert code == 1009
    await api.close()


async def test_messages_per_second_are_limited_with_an_error_each(
    make_system: Callable[..., System],
) -> None:
    system = make_system(RATE_LIMIT_MESSAGES="2", RATE_LIMIT_BURST="5", MAX_STRIKES="100")
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("rate")
    ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
    ben = await enter(api, system.edges[0].ws_url, room_id, "Ben")
    await ann.recv_type("join")
    for n in range(8):
        await ann.send({"type": "chat", "n": n})
    relayed = [(await ben.recv_type("chat"))["n"] for _ in range(5)]
    assert relayed == [0, 1, 2, 3, 4]  # the burst
    errors = [await ann.recv_type("error") for _ in range(3)]
    assert {e["code"] for e in errors} == {"rate_limited"}  # never a silent drop
    await asyncio.sleep(1.0)  # the bucket refills: time passing is what is tested
    await ann.send({"type": "chat", "n": 99})
    assert (await ben.recv_type("chat"))["n"] == 99
    await api.close()


async def test_a_client_that_keeps_misbehaving_is_closed_with_1008(
    make_system: Callable[..., System],
) -> None:
    system = make_system(MAX_STRIKES="3", STRIKES_PER_MINUTE="0")
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("strikes")
    ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
    for _ in range(3):
        await ann.send("not json")
        assert (await ann.recv_type("error"))["code"] == "invalid_json"
    await ann.send("not json")
    code, reason = await ann.client.closed()
    assert code == 1008
    assert reason == "Too many invalid or rate-limited messages"
    await api.close()


async def test_http_body_size_limit_is_413(make_system: Callable[..., System]) -> None:
    system = make_system(MAX_BODY_BYTES="2048")
    await system.start()
    async with httpx.AsyncClient(base_url=system.edges[0].url) as http:
        response = await http.post("/api/rooms", content=b'{"name":"' + b"x" * 5000 + b'"}')
        assert response.status_code == 413
        assert response.json()["error"] == "Request body too large"


async def test_name_lengths(api: Api) -> None:
    long = "x" * 101
    created = await api.http.post("/api/rooms", json={"name": long})
    assert created.status_code == 400
    room_id = await api.create_room("names")
    joined = await api.http.post(f"/api/rooms/{room_id}/join", json={"participant_name": long})
    assert joined.status_code == 400
    assert "participant_name" in joined.json()["error"]


async def test_connections_per_address(make_system: Callable[..., System]) -> None:
    system = make_system(MAX_CONNECTIONS_PER_ADDRESS="2")
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("many")
    first = await enter(api, system.edges[0].ws_url, room_id, "a")
    await enter(api, system.edges[0].ws_url, room_id, "b")
    third = await api.join(room_id, "c")
    url = f"{system.edges[0].ws_url}?token={third['token']}"
    assert await status_before_upgrade(url) == 429
    await first.client.close()
    # The edge counts the closed socket out as soon as it has ended.
    client = await eventually(
        lambda: WsClient.connect(system.edges[0].ws_url, third["token"]),
        timeout=10,
        message="the closed socket still counts",
        retry_on=(websockets.InvalidStatus,),
    )
    await client.recv_type("welcome")
    await api.close()


async def test_room_creations_per_address_per_minute(make_system: Callable[..., System]) -> None:
    system = make_system(ROOM_CREATIONS_PER_MINUTE="3")
    await system.start()
    async with httpx.AsyncClient(base_url=system.edges[0].url) as http:
        for _ in range(3):
            assert (await http.post("/api/rooms", json={"name": "r"})).status_code == 200
        refused = await http.post("/api/rooms", json={"name": "r"})
        assert refused.status_code == 429
        assert refused.json()["code"] == "rate_limited"


async def test_joins_per_address_per_minute(make_system: Callable[..., System]) -> None:
    system = make_system(JOINS_PER_MINUTE="3")
    await system.start()
    async with httpx.AsyncClient(base_url=system.edges[0].url) as http:
        room_id = (await http.post("/api/rooms", json={"name": "r"})).json()["room_id"]
        for _ in range(3):
            assert (await http.post(f"/api/rooms/{room_id}/join", json={})).status_code == 200
        refused = await http.post(f"/api/rooms/{room_id}/join", json={})
        assert (refused.status_code, refused.json()["code"]) == (429, "rate_limited")


async def test_cross_site_websocket_upgrades_are_refused(
    make_system: Callable[..., System],
) -> None:
    system = make_system(CORS_ORIGIN="https://app.example")
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("origin")
    joined = await api.join(room_id, "Ann")
    url = f"{system.edges[0].ws_url}?token={joined['token']}"
    evil = await status_before_upgrade(url, origin="https://evil.example")
    assert evil == 403
    ok = await websockets.connect(url, origin="https://app.example", open_timeout=10)  # type: ignore[arg-type]
    assert '"welcome"' in str(await ok.recv())
    await ok.close()
    await api.close()


# --- tokens ---------------------------------------------------------------------


def token(secret: str, room_id: str, **changes: object) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "room_id": room_id,
        "participant_id": "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa",
        "participant_name": "T",
        "iat": now,
        "exp": now + 60,
        **changes,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


async def test_clock_leeway_is_small(api: Api, ws_url: str) -> None:
    room_id = await api.create_room("leeway")
    recent = token(JWT_SECRET, room_id, exp=int(time.time()) - 10)
    client = await WsClient.connect(ws_url, recent)
    await client.recv_type("welcome")  # 10 s late: within the leeway
    await client.close()
    stale = token(JWT_SECRET, room_id, exp=int(time.time()) - 120)
    assert await status_before_upgrade(f"{ws_url}?token={stale}") == 401


async def test_key_rotation_accepts_the_previous_secret(make_system: Callable[..., System]) -> None:
    new_secret = "the-new-secret-after-rotation-0123456789abcdefghijklmnop"
    system = make_system(JWT_SECRET=new_secret, JWT_SECRET_PREVIOUS=JWT_SECRET)
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("rotation")
    old = token(JWT_SECRET, room_id)
    client = await WsClient.connect(system.edges[0].ws_url, old)
    await client.recv_type("welcome")
    issued = await api.join(room_id, "New")
    jwt.decode(issued["token"], new_secret, algorithms=["HS256"])  # signed with the new one
    other = token("some-other-secret-that-is-long-enough-0123456789abcdef", room_id)
    assert await status_before_upgrade(f"{system.edges[0].ws_url}?token={other}") == 401
    await client.close()
    await api.close()


# --- bytes -----------------------------------------------------------------------


async def test_bytes_per_second_and_the_broadcast_size_are_limited(
    make_system: Callable[..., System],
) -> None:
    """A burst of large frames is refused even under the message rate; a large
    frame may go to one participant, not to the whole room; each refusal is a
    strike."""
    system = make_system(
        RATE_LIMIT_BYTES="1024",
        RATE_LIMIT_BYTES_BURST="100000",
        MAX_STRIKES="3",
        STRIKES_PER_MINUTE="0",
    )
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("bytes")
    ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
    ben = await enter(api, system.edges[0].ws_url, room_id, "Ben")
    await ann.recv_type("join")
    sdp = "a=candidate:1 1 udp 2122260223 10.0.0.1 50000 typ host\r\n" * 700  # ~40 KB
    await ann.send({"type": "offer", "to": ben.participant_id, "sdp": sdp})
    assert (await ben.recv_type("offer"))["sdp"] == sdp  # targeted: 40 KB is fine
    await ann.send({"type": "offer", "to": "all", "sdp": sdp})
    assert (await ann.recv_type("error"))["code"] == "too_large"  # strike 1
    chat = "x" * 15_000  # ~90 KB of the 100 KB burst are spent
    await ann.send({"type": "chat", "to": "all", "n": 1, "pad": chat})
    assert (await ben.recv_type("chat"))["n"] == 1  # nothing of the refused broadcast came
    await ann.send({"type": "chat", "to": "all", "n": 2, "pad": chat})
    refused = await ann.recv_type("error")
    assert (refused["code"], refused["message"]) == ("rate_limited", "Too much data; slow down")
    await ann.send({"type": "chat", "to": "all", "n": 3, "pad": chat})
    assert (await ann.recv_type("error"))["code"] == "rate_limited"  # strike 3
    await ann.send({"type": "chat", "to": "all", "n": 4, "pad": chat})
    code, _ = await ann.client.closed()
    assert code == 1008
    await api.close()


def realistic_sdp(kind: str, size: int) -> str:
    """An SDP of about ``size`` bytes (a browser offer with audio, video and
    simulcast is 5 to 20 KB)."""
    line = f"a=fmtp:96 apt=100;x-{kind}-parameters-and-codec-options=0123456789\r\n"
    return "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n" + line * (size // len(line))


async def test_a_call_set_up_passes_under_the_default_limits(
    make_system: Callable[..., System],
) -> None:
    """The harness relaxes every rate; here the defaults apply. A newcomer in a
    room of ten announces its Calls session (8 tracks) and mute state, and calls
    the nine others over P2P at once: 20 KB offers and trickled ICE; they answer.
    No frame is refused."""
    defaults = EdgeSettings.from_env({"JWT_SECRET": JWT_SECRET})
    system = make_system(
        RATE_LIMIT_MESSAGES=str(defaults.messages_per_second),
        RATE_LIMIT_BURST=str(defaults.messages_burst),
        RATE_LIMIT_BYTES=str(defaults.bytes_per_second),
        RATE_LIMIT_BYTES_BURST=str(defaults.bytes_burst),
    )
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("call", max_participants=10)
    others = [await enter(api, system.edges[0].ws_url, room_id, f"p{i}") for i in range(9)]
    ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
    tracks = [
        {"trackName": f"{ann.participant_id}-{i}" + "t" * 26, "kind": "video"} for i in range(8)
    ]
    sent = [
        {"type": "cloudflare-session", "sessionId": "s" * 32, "tracks": tracks},
        {"type": "track-state", "kind": "audio", "enabled": True},
        {"type": "track-state", "kind": "video", "enabled": True},
    ]
    for other in others:
        sent.append(
            {"type": "offer", "to": other.participant_id, "sdp": realistic_sdp("o", 20_000)}
        )
        for n in range(3):
            candidate = (
                f"candidate:{n} 1 udp 2122260223 192.168.1.{n} 5{n}000 typ host generation 0"
            )
            sent.append(
                {"type": "ice-candidate", "to": other.participant_id, "candidate": candidate}
            )
    total = sum(len(json.dumps(m)) for m in sent)
    assert 180_000 < total < defaults.bytes_burst  # a big set-up, and headroom left
    for message in sent:
        await ann.send(message)
    for other in others:
        await other.send(
            {"type": "answer", "to": ann.participant_id, "sdp": realistic_sdp("a", 20_000)}
        )
    for other in others:
        kinds: list[str] = []
        while len([k for k in kinds if k != "join"]) < 7:  # session, 2 states, offer, 3 ICE
            kinds.append((await other.recv())["type"])
        assert sorted(k for k in kinds if k != "join") == [
            "cloudflare-session",
            "ice-candidate",
            "ice-candidate",
            "ice-candidate",
            "offer",
            "track-state",
            "track-state",
        ]
    answers = [await ann.recv() for _ in others]
    assert {m["type"] for m in answers} == {"answer"}
    await api.close()
