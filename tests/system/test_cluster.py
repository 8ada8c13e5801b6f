"""A 3-node NATS cluster with KV at 3 replicas: a node dies mid-call, the call goes on."""

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest

from tests.harness import Api, System
from tests.system.traffic import chat, open_rooms, stop_recorders, wait_delivered

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def busiest_node(system: System) -> int:
    """The node most of our processes are connected to."""
    counts = []
    async with httpx.AsyncClient() as http:
        for node in system.nodes:
            connz = (await http.get(f"{node.monitor_url}/connz")).json()
            counts.append(connz["num_connections"])
    return max(range(len(counts)), key=counts.__getitem__)


async def test_a_nats_node_dies_mid_call(make_system: Callable[..., System]) -> None:
    system = make_system(KV_REPLICAS="3")
    await system.start(cluster=3, actors=2, edges=2)
    bus = await system.bus()
    await bus.balanced([a.env["WORKER_ID"] for a in system.actors])
    api = Api(system.edges[0].url)
    urls = [edge.ws_url for edge in system.edges]
    rooms = await open_rooms(api, urls, rooms=6, size=3)
    for room in rooms:
        await room.members[0].send(
            {"type": "cloudflare-session", "sessionId": f"s-{room.room_id}", "tracks": []}
        )
    await chat(rooms, 3)
    await wait_delivered(rooms, 3)
    before = {room.room_id: await bus.room_state(room.room_id) for room in rooms}

    victim = await busiest_node(system)
    system.nodes[victim].kill()
    talking = asyncio.create_task(chat(rooms, 5, first=3, pause=0.1))
    await talking
    # Every message sent after the kill reaches everyone: senders' edges retry
    # until a worker answers; receivers' edges resync if they missed events.
    for room in rooms:
        for recorder in room.recorders:
            others = [m for m in room.members if m is not recorder.member]
            await recorder.wait_for(
                lambda _, r=recorder, o=others: all(set(range(3, 8)) <= set(r.chats(m)) for m in o),
                timeout=60,
            )
    for room in rooms:
        state = await bus.room_state(room.room_id)
        previous = before[room.room_id]
        assert state is not None
        assert previous is not None
        assert set(state.participants) == set(previous.participants)
        first = room.members[0].participant_id
        assert state.participants[first].session_id == f"s-{room.room_id}"
        assert state.seq >= previous.seq  # numbering never goes back
    await stop_recorders(rooms)
    await bus.close()
    await api.close()


async def probe(http: httpx.AsyncClient, url: str, room_id: str) -> list[httpx.Response]:
    """One round of what clients do over HTTP: create a room, read one, join one."""
    return [
        await http.post(f"{url}/api/rooms", json={"name": "probe"}),
        await http.get(f"{url}/api/rooms/{room_id}"),
        await http.post(f"{url}/api/rooms/{room_id}/join", json={"participant_name": "p"}),
    ]


def levels(text: str, *wanted: str) -> list[dict[str, str]]:
    """The JSON log lines of these levels."""
    lines = (json.loads(line) for line in text.splitlines() if line.startswith("{"))
    return [line for line in lines if line["level"] in wanted]


async def test_a_nats_node_death_is_answered_with_503s_and_logged_once(
    make_system: Callable[..., System],
) -> None:
    """While JetStream elects new leaders after a node's death, the HTTP API
    answers 200 or 503 with Retry-After, never 500; no process logs a traceback
    or an error for it, only a warning when an episode starts."""
    system = make_system(KV_REPLICAS="3")
    await system.start(cluster=3, actors=2, edges=2)
    bus = await system.bus()
    await bus.balanced([a.env["WORKER_ID"] for a in system.actors])
    api = Api(system.edges[0].url)
    rooms = await open_rooms(api, [edge.ws_url for edge in system.edges], rooms=4, size=3)
    room_id = rooms[0].room_id
    processes = [*system.actors, *system.edges]
    marks = [len(child.log()) for child in processes]

    system.nodes[await busiest_node(system)].kill()
    talking = asyncio.create_task(chat(rooms, 20, pause=0.1))
    answers: list[httpx.Response] = []
    healthy_rounds = 0
    loop = asyncio.get_running_loop()
    killed = loop.time()
    outage = 0.0
    async with httpx.AsyncClient(timeout=30) as http:
        while healthy_rounds < 3:
            assert loop.time() < killed + 60, [r.status_code for r in answers]
            round_ = []
            for edge in system.edges:
                round_ += await probe(http, edge.url, room_id)
            answers += round_
            if all(r.is_success for r in round_):
                healthy_rounds += 1
            else:
                healthy_rounds, outage = 0, loop.time() - killed
    await talking
    slowest = max(r.elapsed.total_seconds() for r in answers)
    print(f"requests: {len(answers)}, the slowest {slowest:.1f} s, last failure at {outage:.1f} s")

    assert {r.status_code for r in answers} <= {200, 503}, [r.status_code for r in answers]
    for response in answers:
        if response.status_code == 503:
            assert response.json()["code"] in {"unavailable", "not_ready"}, response.text
            assert response.headers["retry-after"] == "2", response.headers
    for child, mark in zip(processes, marks, strict=True):
        text = child.log()[mark:]
        assert "Traceback" not in text, text[-4000:]
        assert levels(text, "ERROR", "CRITICAL") == [], text[-4000:]
        warnings = levels(text, "WARNING")
        assert len(warnings) <= 10, [w["message"] for w in warnings]
    await stop_recorders(rooms)
    await bus.close()
    await api.close()
