"""Room expiry and readiness, with real processes."""

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from tests.harness import Api, System, enter
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")
TTL = 10.0


async def test_idle_room_expires_but_room_in_use_does_not(
    make_system: Callable[..., System],
) -> None:
    system = make_system(ROOM_TTL=str(TTL), ROOM_PASSIVATE_AFTER="2")
    await system.start()
    api = Api(system.edges[0].url)
    idle = await api.create_room("idle")
    busy = await api.create_room("busy")
    member = await enter(api, system.edges[0].ws_url, busy, "Ann")
    started = time.monotonic()

    async def expired() -> bool:
        return (await api.http.get(f"/api/rooms/{idle}")).status_code != 200

    await eventually(expired, timeout=TTL * 3, interval=0.5, message="idle room never expired")
    assert time.monotonic() - started >= TTL * 0.5
    # Well past the TTL, the room with a participant is still there and works.
    # Time passing is what is under test here, not a synchronisation.
    await asyncio.sleep(max(0.0, TTL * 1.5 - (time.monotonic() - started)))
    assert (await api.http.get(f"/api/rooms/{busy}")).status_code == 200
    await member.send({"type": "track-state", "kind": "audio", "enabled": False})
    other = await enter(api, system.edges[0].ws_url, busy, "Ben")
    assert (await member.recv_type("join"))["from"] == other.participant_id
    await api.close()


async def test_ready_turns_503_when_nats_is_down_and_200_when_back(
    make_system: Callable[..., System],
) -> None:
    system = make_system(COMMAND_DEADLINE="1")
    await system.start()
    url = f"{system.edges[0].url}/ready"
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(url)).status_code == 200
        created = await http.post(f"{system.edges[0].url}/api/rooms", json={"name": "r"})
        room_id = created.json()["room_id"]
        port = int(system.nats.url.rsplit(":", 1)[1])
        system.nats.stop()

        async def answer(status: int) -> httpx.Response | None:
            response = await http.get(url)
            return response if response.status_code == status else None

        unready = await eventually(
            lambda: answer(503), timeout=20, interval=0.1, message="never became unready"
        )
        assert unready.json()["error"] == "Not ready"
        assert unready.headers["retry-after"] == "2"
        scraped = (await http.get(f"{system.edges[0].url}/metrics")).text
        assert "\nsignaling_edge_nats_connected 0.0\n" in scraped  # alerted on after 30 s
        # The API answers 503 with Retry-After too, never a 500: reads and
        # commands are tried again until the command deadline, then refused.
        for method, path in (("GET", f"/api/rooms/{room_id}"), ("POST", "/api/rooms")):
            response = await http.request(
                method, f"{system.edges[0].url}{path}", json={"name": "r"}
            )
            assert response.status_code == 503, response.text
            assert response.json()["code"] in {"not_ready", "unavailable"}, response.text
            assert response.headers["retry-after"] == "2"
        system.start_nats(port=port)
        await eventually(
            lambda: answer(200), timeout=30, interval=0.2, message="never became ready again"
        )
