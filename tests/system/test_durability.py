"""Rooms and their state survive a restart of nats-server, worker and edge together."""

from collections.abc import Callable

import pytest

from tests.harness import Api, System, WsClient, enter

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_room_state_survives_killing_everything(make_system: Callable[..., System]) -> None:
    """SIGKILL nats-server, worker and edge together: nothing had a chance to clean up.
    (A long EDGE_TIMEOUT keeps the participants of the killed edge in the room
    while the test looks at them.)"""
    system = make_system(EDGE_TIMEOUT="120")
    await system.start()
    api = Api(system.edges[0].url)
    ws_url = system.edges[0].ws_url
    room_id = await api.create_room("durable", max_participants=5, created_by="ops")
    before = (await api.http.get(f"/api/rooms/{room_id}")).json()
    ann = await enter(api, ws_url, room_id, "Ann")
    ben = await enter(api, ws_url, room_id, "Ben")
    await ann.recv_type("join")
    tracks = [{"trackName": "ann-cam", "kind": "video"}]
    await ann.send({"type": "cloudflare-session", "sessionId": "s-ann", "tracks": tracks})
    await ben.recv_type("cloudflare-session")
    await ann.send({"type": "track-state", "kind": "audio", "enabled": False})
    last = await ben.recv_type("track-state")
    await api.close()

    for process in [*system.edges, *system.actors]:
        process.kill()
    system.nats.kill()
    await system.restart()

    api = Api(system.edges[0].url)
    ws_url = system.edges[0].ws_url
    assert (await api.http.get(f"/api/rooms/{room_id}")).json() == before
    again = await WsClient.connect(ws_url, ann.token)
    welcome = await again.recv_type("welcome")
    # The mute change was numbered from a reservation (written with it): the
    # new owner goes on after the reserved numbers, never below what was seen.
    assert welcome["room_seq"] >= last["room_seq"]
    by_id = {p["id"]: p for p in welcome["participants"]}
    assert by_id[ann.participant_id] == {
        "id": ann.participant_id,
        "name": "Ann",
        "session": "s-ann",
        "tracks": tracks,
        "audio": False,
    }
    assert by_id[ben.participant_id]["name"] == "Ben"

    cy = await enter(api, ws_url, room_id, "Cy")
    replay = await cy.recv_type("cloudflare-session")
    assert (replay["participantId"], replay["sessionId"]) == (ann.participant_id, "s-ann")
    join = await again.recv_type("join")
    assert join["room_seq"] == welcome["room_seq"] + 1
    await api.close()


async def test_graceful_restart_keeps_rooms_and_sequence(
    make_system: Callable[..., System],
) -> None:
    system = make_system()
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("graceful")
    before = (await api.http.get(f"/api/rooms/{room_id}")).json()
    ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
    await ann.send({"type": "track-state", "kind": "video", "enabled": True})
    await api.close()

    system.stop()
    await system.restart()

    api = Api(system.edges[0].url)
    assert (await api.http.get(f"/api/rooms/{room_id}")).json() == before
    ben = await api.join(room_id, "Ben")
    client = await WsClient.connect(system.edges[0].ws_url, ben["token"])
    welcome = await client.recv_type("welcome")
    assert welcome["room_seq"] > 2  # the sequence continues, it never restarts
    await api.close()
