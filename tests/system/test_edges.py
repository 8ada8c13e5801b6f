"""Many edges: any client through any edge, dead edges detected, resumable
connections, gap-free delivery and slow clients, with real processes."""

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest
import websockets

from bus_schema import codec, ids, subjects
from bus_schema.events import Broadcasted
from tests.harness import (
    RECV_TIMEOUT,
    Api,
    Member,
    System,
    WsClient,
    background,
    enter,
    opened,
)
from tests.system.traffic import (
    assert_exactly_once_in_order,
    chat,
    open_rooms,
    stop_recorders,
    wait_delivered,
)
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def quiet(marker_from: Member, *members: Member) -> None:
    """Prove ``members`` received nothing since they last read: ``marker_from``
    broadcasts a marker, and it must be the very next thing each of them sees."""
    await marker_from.send({"type": "marker", "to": "all"})
    for member in members:
        message = await member.recv()
        assert (message["type"], message["from"]) == ("marker", marker_from.participant_id)


async def test_a_room_spread_over_three_edges(make_system: Callable[..., System]) -> None:
    system = make_system()
    await system.start(edges=3)
    api = Api(system.edges[0].url)
    room_id = await api.create_room("spread")
    ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
    ben = await enter(api, system.edges[1].ws_url, room_id, "Ben")
    assert (await ann.recv_type("join"))["from"] == ben.participant_id
    cy = await enter(api, system.edges[2].ws_url, room_id, "Cy")
    for member in (ann, ben):
        assert (await member.recv_type("join"))["from"] == cy.participant_id

    tracks = [{"trackName": "cy-cam", "kind": "video"}]
    await cy.send({"type": "cloudflare-session", "sessionId": "s-cy", "tracks": tracks})
    for member in (ann, ben):
        session = await member.recv_type("cloudflare-session")
        assert (session["participantId"], session["sessionId"]) == (cy.participant_id, "s-cy")
    await ann.send({"type": "track-state", "kind": "audio", "enabled": False})
    for member in (ben, cy):
        assert (await member.recv_type("track-state"))["from"] == ann.participant_id
    await ben.send({"type": "offer", "to": cy.participant_id, "sdp": "o"})
    assert (await cy.recv_type("offer"))["from"] == ben.participant_id
    await cy.send({"type": "answer", "to": ben.participant_id, "sdp": "a"})
    assert (await ben.recv_type("answer"))["from"] == cy.participant_id
    await quiet(cy, ann, ben)  # Ann saw neither the offer nor the answer
    await cy.client.close()
    for member in (ann, ben):
        assert (await member.recv_type("leave"))["from"] == cy.participant_id
    await api.close()


async def edge_subscriptions(system: System, edge_name: str) -> set[str]:
    async with httpx.AsyncClient() as http:
        connz = (await http.get(f"{system.nats.monitor_url}/connz?subs=1")).json()
    subs: set[str] = set()
    for conn in connz["connections"]:
        if conn.get("name", "").startswith(f"edge-{edge_name}"):
            subs.update(conn.get("subscriptions_list", []))
    return subs


async def test_an_edge_subscribes_to_a_room_only_while_it_has_clients_there(
    make_system: Callable[..., System],
) -> None:
    system = make_system()
    await system.start(edges=2)
    api = Api(system.edges[0].url)
    room_id = await api.create_room("interest")
    events = subjects.room_events(room_id)
    second = system.edges[1].env["EDGE_ID"]
    assert events not in await edge_subscriptions(system, second)
    ann = await enter(api, system.edges[1].ws_url, room_id, "Ann")
    ben = await enter(api, system.edges[1].ws_url, room_id, "Ben")
    await ann.recv_type("join")
    assert events in await edge_subscriptions(system, second)
    await ann.client.close()
    await ben.recv_type("leave")
    assert events in await edge_subscriptions(system, second)  # Ben is still there
    await ben.client.close()

    async def unsubscribed() -> bool:
        return events not in await edge_subscriptions(system, second)

    await eventually(unsubscribed, timeout=10, message="the edge kept its room subscription")
    await api.close()


async def test_participants_of_a_killed_edge_leave(make_system: Callable[..., System]) -> None:
    system = make_system()
    await system.start(edges=2)
    api = Api(system.edges[0].url)
    room_id = await api.create_room("edge death")
    ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
    ben = await enter(api, system.edges[1].ws_url, room_id, "Ben")
    cy = await enter(api, system.edges[1].ws_url, room_id, "Cy")
    await ann.recv_type("join")
    await ann.recv_type("join")
    killed_at = time.monotonic()
    system.edges[1].kill()
    left = {(await ann.recv_type("leave", timeout=15))["from"] for _ in range(2)}
    assert left == {ben.participant_id, cy.participant_id}
    assert time.monotonic() - killed_at < 15
    # Ben comes back through the surviving edge with the same token: a new join.
    again = await WsClient.connect(system.edges[0].ws_url, ben.token)
    welcome = await again.recv_type("welcome")
    assert {p["name"] for p in welcome["participants"]} == {"Ann", "Ben"}
    assert (await ann.recv_type("join"))["from"] == ben.participant_id
    await api.close()


async def test_resume_through_another_edge_without_churn(
    make_system: Callable[..., System],
) -> None:
    system = make_system()
    await system.start(edges=2)
    api = Api(system.edges[0].url)
    room_id = await api.create_room("resume")
    ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
    ben = await enter(api, system.edges[1].ws_url, room_id, "Ben")
    await ann.recv_type("join")
    tracks = [{"trackName": "ben-mic", "kind": "audio"}]
    await ben.send({"type": "cloudflare-session", "sessionId": "s-ben", "tracks": tracks})
    await ann.recv_type("cloudflare-session")
    await ben.send({"type": "track-state", "kind": "video", "enabled": False})
    last = await ann.recv_type("track-state")

    ben.client.ws.transport.abort()  # the network drops: no Close frame
    again = await WsClient.connect(
        system.edges[0].ws_url, ben.token, participant_id=ben.participant_id
    )
    welcome = await again.recv_type("welcome")
    assert welcome["room_seq"] == last["room_seq"]  # nothing happened in the room
    mine = next(p for p in welcome["participants"] if p["id"] == ben.participant_id)
    assert mine == {
        "id": ben.participant_id,
        "name": "Ben",
        "session": "s-ben",
        "tracks": tracks,
        "video": False,
    }
    resumed = Member(ben.token, ben.participant_id, "Ben", again)
    await quiet(resumed, ann)  # Ann saw neither a leave nor a join
    await api.close()


async def test_no_return_within_the_grace_period_means_leave(
    make_system: Callable[..., System],
) -> None:
    system = make_system(RESUME_GRACE="1")
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("gone")
    ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
    ben = await enter(api, system.edges[0].ws_url, room_id, "Ben")
    await ann.recv_type("join")
    dropped_at = time.monotonic()
    ben.client.ws.transport.abort()
    leave = await ann.recv_type("leave", timeout=15)
    assert leave["from"] == ben.participant_id
    assert time.monotonic() - dropped_at >= 0.9  # not before the grace period ended
    await api.close()


async def test_an_edge_that_sees_a_gap_catches_up_without_a_wrong_view(
    make_system: Callable[..., System],
) -> None:
    system = make_system()
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("gap")
    ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
    ben = await enter(api, system.edges[0].ws_url, room_id, "Ben")
    join = await ann.recv_type("join")
    # An event from the future: the edge has not seen the ones in between, so it
    # asks the actor, which has nothing newer: the bogus event is never delivered.
    nc = await system.connect()
    bogus = Broadcasted(
        room_id=room_id,
        seq=join["room_seq"] + 5,
        participant_id=ben.participant_id,
        frame=msgspec.Raw(b'{"type":"bogus"}'),
    )
    await nc.publish(subjects.room_events(room_id), codec.encode(bogus))
    await nc.close()
    await ben.send({"type": "chat", "to": "all", "n": 1})
    chat_message = await ann.recv_type("chat")
    assert chat_message["room_seq"] == join["room_seq"] + 1
    await api.close()


async def test_no_message_is_lost_or_doubled_when_nats_restarts(
    make_system: Callable[..., System],
) -> None:
    system = make_system()
    await system.start()
    api = Api(system.edges[0].url)
    rooms = await open_rooms(api, [system.edges[0].ws_url], rooms=2, size=2)
    await chat(rooms, 3)
    await wait_delivered(rooms, 3)

    port = int(system.nats.url.rsplit(":", 1)[1])
    system.nats.stop()
    system.start_nats(port=port)
    await chat(rooms, 3, first=3)
    await wait_delivered(rooms, 6, timeout=60)
    for room in rooms:
        for recorder in room.recorders:
            for other in room.members:
                if other is not recorder.member:
                    assert recorder.chats(other) == list(range(6))
            seqs = [m["room_seq"] for m in recorder.messages if m["type"] == "chat"]
            assert seqs == sorted(set(seqs))
    await stop_recorders(rooms)
    await api.close()


async def test_a_slow_client_is_disconnected_and_delays_no_one(
    make_system: Callable[..., System],
) -> None:
    # 30 KB broadcasts: over the default size cap for frames to the whole room.
    system = make_system(
        SEND_QUEUE_BYTES=str(256 * 1024), RESUME_GRACE="1", MAX_BROADCAST_BYTES=str(64 * 1024)
    )
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("slow")
    talker = await enter(api, system.edges[0].ws_url, room_id, "Talker")
    reader = await enter(api, system.edges[0].ws_url, room_id, "Reader")
    await talker.recv_type("join")
    joined = await api.join(room_id, "Sleeper")
    # A client that reads one frame and then never again.
    sleeper = opened(
        await websockets.connect(
            f"{system.edges[0].ws_url}?token={joined['token']}", max_queue=1, open_timeout=10
        )
    )
    await sleeper.recv()
    await talker.recv_type("join")
    await reader.recv_type("join")

    payload = "x" * 30_000
    count = 400  # 12 MB: far more than socket buffers and the 256 KiB bound

    async def read_all() -> list[int]:
        return [(await reader.recv_type("chat"))["n"] for _ in range(count)]

    reading = asyncio.create_task(read_all())  # a client that keeps up
    for n in range(count):
        await talker.send({"type": "chat", "to": "all", "n": n, "pad": payload})
    assert await reading == list(range(count))
    assert (await talker.recv_type("leave", timeout=30))["from"] == joined["participant_id"]
    # When it reads again, it finds the connection closed (with 4008 if the close
    # frame fitted in before the edge let go).
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(drain(sleeper), 30)
    assert sleeper.close_code in (4008, 1006)
    await api.close()


async def test_a_congested_room_holds_its_sender_and_cuts_only_the_reader_that_stays_behind(
    make_system: Callable[..., System],
) -> None:
    """Backpressure: a reader that stops reading makes the room congested on
    its edge, and the talker's frames are not read meanwhile (they wait in its
    socket, none is lost or refused). The reader that stays behind for
    BACKPRESSURE_STALL is cut (4008, counted) long before its output reaches
    SEND_QUEUE_BYTES; the one that keeps up gets everything, in order."""
    system = make_system(RESUME_GRACE="1", MAX_BROADCAST_BYTES=str(64 * 1024))
    await system.start()
    edge = system.edges[0]
    api = Api(edge.url)
    room_id = await api.create_room("congested")
    talker = await enter(api, edge.ws_url, room_id, "Talker")
    reader = await enter(api, edge.ws_url, room_id, "Reader")
    await talker.recv_type("join")
    joined = await api.join(room_id, "Sleeper")
    sleeper = opened(
        await websockets.connect(
            f"{edge.ws_url}?token={joined['token']}", max_queue=1, open_timeout=10
        )
    )
    await sleeper.recv()  # its welcome; then it never reads again
    await talker.recv_type("join")
    await reader.recv_type("join")
    before = await edge_counters(edge.url)

    payload = "x" * 30_000
    count = 300  # 9 MB: far more than socket buffers and the 1 MiB bound (the default)

    async def read_all() -> list[int]:
        return [(await reader.recv_type("chat", timeout=30))["n"] for _ in range(count)]

    reading = asyncio.create_task(read_all())
    for n in range(count):
        await talker.send({"type": "chat", "to": "all", "n": n, "pad": payload})
    assert await reading == list(range(count))
    assert (await talker.recv_type("leave", timeout=30))["from"] == joined["participant_id"]
    after = await edge_counters(edge.url)

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert grew("signaling_edge_slow_consumers_total") == 1
    assert grew("signaling_edge_backpressure_waits_total") > 0
    assert "slow consumer (behind for" in edge.log()  # cut by the stall, not the bound
    assert grew("signaling_edge_errors_total") == 0  # the talker was slowed, never refused
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(drain(sleeper), 30)
    await api.close()


async def edge_counters(url: str) -> dict[str, float]:
    """The edge's counters, each summed over its labels."""
    async with httpx.AsyncClient(base_url=url) as http:
        text = (await http.get("/metrics")).text
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.split("{", 1)[0].split(" ", 1)[0], line.rsplit(" ", 1)[1]
        if name.endswith("_total"):
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


async def test_traffic_over_two_edges_is_exactly_once(make_system: Callable[..., System]) -> None:
    system = make_system()
    await system.start(edges=2, actors=2)
    api = Api(system.edges[0].url)
    rooms = await open_rooms(
        api, [system.edges[0].ws_url, system.edges[1].ws_url], rooms=10, size=3
    )
    await chat(rooms, 10)
    await wait_delivered(rooms, 10)
    assert_exactly_once_in_order(rooms, 10)
    await stop_recorders(rooms)
    await api.close()


async def drain(ws: Any) -> None:
    while True:
        await ws.recv()


async def test_forged_frames_from_another_edge_never_reach_a_client(
    system: System, api: Api
) -> None:
    """A compromised edge publishes on a room's peer subjects as the ``edge``
    NATS user: a ``welcome``, a ``kicked``, a non-object, invalid JSON, a sender
    who is not in the room, a server-only field. The receiving edge drops them
    all; the next frame its client gets is a real member's."""
    edge = system.edges[0]
    room_id = await api.create_room("forgery")
    ann = await enter(api, edge.ws_url, room_id, "Ann")
    ben = await enter(api, edge.ws_url, room_id, "Ben")
    await ann.recv_type("join")
    stranger = ids.new_id()
    to_ann = {"to": ann.participant_id}
    forgeries: list[object] = [
        {
            "type": "welcome",
            "participant_id": ann.participant_id,
            "room_id": room_id,
            "participants": [],
            "room_seq": 99,
            "from": ben.participant_id,
            **to_ann,
        },
        {
            "type": "kicked",
            "room_id": room_id,
            "message": "bye",
            "from": ben.participant_id,
            **to_ann,
        },
        ["offer", ben.participant_id],
        {"type": "offer", "from": stranger, "sdp": "v=0", **to_ann},
        {"type": "offer", "sdp": "v=0", **to_ann},
        {
            "type": "track-state",
            "kind": "audio",
            "enabled": False,
            "by": "admin",
            "from": ben.participant_id,
            **to_ann,
        },
    ]
    frames = [json.dumps(f).encode() for f in forgeries] + [b'{"type":"offer",', b"\xff\xfe"]
    before = await dropped_peer_frames(edge.url)
    nc = await system.connect("edge")
    try:
        for frame in frames:
            await nc.publish(subjects.peer(room_id, ann.participant_id), frame)
        await nc.flush()  # the server has them: they reach the edge before Ben's frame
    finally:
        await nc.close()
    await ben.send({"type": "marker", **to_ann})
    message = await ann.recv()
    assert (message["type"], message["from"]) == ("marker", ben.participant_id)
    after = await dropped_peer_frames(edge.url)
    assert after - before == len(frames)
    assert "dropped a targeted frame from the bus" in edge.log()
    await ann.client.close()
    await ben.client.close()


async def dropped_peer_frames(url: str) -> float:
    """The edge's count of targeted frames it refused (every reason)."""
    async with httpx.AsyncClient(base_url=url) as http:
        text = (await http.get("/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("signaling_edge_peer_frames_dropped_total{")
    )


async def test_a_big_rooms_welcome_is_not_a_slow_consumer(
    make_system: Callable[..., System],
) -> None:
    """A newcomer's ``welcome`` and session replays may be larger than
    SEND_QUEUE_BYTES in a big room: they are the room's state, not the client's
    slowness. The newcomer is welcomed and stays; once it stops reading, the
    bound applies to what comes after, and it is cut off."""
    system = make_system(SEND_QUEUE_BYTES=str(64 * 1024), RESUME_GRACE="1")
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("big", max_participants=41)
    members = [await enter(api, system.edges[0].ws_url, room_id, f"m{i}") for i in range(40)]
    # The members keep reading (what they get is not the point here).
    readers = [background(drain(m.client.ws)) for m in members]
    for member in members:
        tracks = [
            {
                "trackName": f"{member.participant_id}-{n}".ljust(64, "t"),
                "kind": "video",
                "mid": str(n),
                "location": "local",
            }
            for n in range(8)
        ]
        await member.send({"type": "cloudflare-session", "sessionId": "s" * 64, "tracks": tracks})
    state = await system.bus()

    async def every_session_stored() -> bool:
        room = await state.room_state(room_id)
        assert room is not None
        return len([p for p in room.participants.values() if p.session_id]) == len(members)

    try:
        await eventually(
            every_session_stored, timeout=20, interval=0.1, message="sessions not stored"
        )
    finally:
        await state.close()

    joined = await api.join(room_id, "Newcomer")
    newcomer = await WsClient.connect(system.edges[0].ws_url, joined["token"])
    first = [await asyncio.wait_for(newcomer.ws.recv(), RECV_TIMEOUT) for _ in range(41)]
    kinds = [json.loads(text)["type"] for text in first]
    assert kinds == ["welcome"] + ["cloudflare-session"] * len(members)
    first_output = sum(len(text) for text in first)  # ~96 KB, all ASCII
    assert first_output > 64 * 1024 * 1.25, first_output  # well over the bound
    sender = members[0]
    await sender.send({"type": "marker", "to": joined["participant_id"]})
    assert (await newcomer.recv_type("marker"))["from"] == sender.participant_id  # still here

    # Then it stops reading: targeted frames pile up (far more than socket buffers).
    payload = "x" * 60_000
    for n in range(200):
        await sender.send({"type": "chat", "to": joined["participant_id"], "n": n, "pad": payload})
    await eventually(
        lambda: slow_consumer_logged(system.edges[0].log(), joined["participant_id"]),
        timeout=30,
        interval=0.1,
        message="the newcomer was never cut off",
    )
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(drain(newcomer.ws), 30)
    assert newcomer.ws.close_code in (4008, 1006)  # 4008 if the close frame fitted in
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await api.close()


def slow_consumer_logged(log: str, participant_id: str) -> bool:
    return any("slow consumer" in line and participant_id in line for line in log.splitlines())


async def test_a_targeted_message_to_a_socket_on_the_same_edge_skips_nats(
    make_system: Callable[..., System],
) -> None:
    """Ann and Ben on one edge, Cyd on another: Ann's offer to Ben is delivered
    by the edge itself (nothing on the room's peer subjects), her offer to Cyd
    goes through NATS; both arrive, with the sender stamped."""
    system = make_system()
    await system.start(edges=2)
    api = Api(system.edges[0].url)
    room_id = await api.create_room("local peers")
    ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
    ben = await enter(api, system.edges[0].ws_url, room_id, "Ben")
    cyd = await enter(api, system.edges[1].ws_url, room_id, "Cyd")
    await ann.recv_type("join")
    await ann.recv_type("join")
    await ben.recv_type("join")
    bus = await system.bus()
    seen: list[str] = []

    async def on_peer(msg: Any) -> None:
        seen.append(msg.subject)

    subscription = await bus.nc.subscribe(subjects.room_peers(room_id), cb=on_peer)
    await bus.nc.flush()
    await ann.send({"type": "offer", "to": ben.participant_id, "sdp": "local"})
    offer = await ben.recv_type("offer")
    assert (offer["from"], offer["sdp"]) == (ann.participant_id, "local")
    await ann.send({"type": "offer", "to": cyd.participant_id, "sdp": "remote"})
    offer = await cyd.recv_type("offer")
    assert (offer["from"], offer["sdp"]) == (ann.participant_id, "remote")
    # One publisher (edge 0), so NATS keeps its order: an offer to Ben sent
    # through NATS would have reached us before the one to Cyd.
    await eventually(lambda: len(seen) >= 1, timeout=RECV_TIMEOUT)
    assert seen == [subjects.peer(room_id, cyd.participant_id)]
    await subscription.unsubscribe()
    await bus.close()
    await api.close()
