"""A 3-node NATS cluster with KV at 3 replicas: a node dies mid-call, the call goes on."""

import asyncio
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
