"""Network partitions, not signals: a worker whose link to NATS stops carrying
what it sends (its process runs on, its connection stays up) for longer than
its lease (issue 18, "Partitions specifically")."""

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import nats
import nats.errors
import pytest

from edge.fanout import PEER_CLOCK_MARGIN
from tests.chaos.clients import Client
from tests.chaos.world import Node, World
from tests.harness import Api, Member, Proc, System, WsClient, enter, opened
from tests.links import edge_behind, link_to_nats
from tests.system.test_webhooks import SECRET
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]


async def chats(member: Member, count: int) -> list[str]:
    """The next ``count`` chat texts ``member`` receives (other frames skipped)."""
    texts: list[str] = []
    while len(texts) < count:
        message = await member.recv()
        if message.get("type") == "chat":
            texts.append(message["text"])
    return texts


async def test_a_worker_cut_off_past_its_lease_is_fenced_and_its_rooms_go_on_elsewhere(
    make_system: Callable[..., System],
) -> None:
    system = make_system(LEASE_TTL="1", COMMAND_ATTEMPT_TIMEOUT="0.5")
    await system.start(actors=1, edges=1)
    link = await link_to_nats(system)
    cut_off = system.start_actor(NATS_URL=f"nats://127.0.0.1:{link.port}")
    stays = system.actors[0]
    bus = await system.bus()
    cut_id, stays_id = cut_off.env["WORKER_ID"], stays.env["WORKER_ID"]
    await bus.balanced([cut_id, stays_id])
    edge = system.edges[0]
    api = Api(edge.url)
    try:
        for _ in range(64):  # a room the worker about to be cut off owns
            room_id = await api.create_room("partitioned")
            if await bus.room_owner(room_id) == cut_id:
                break
        else:
            pytest.fail("no room landed on the worker to cut off")
        ann = await enter(api, edge.ws_url, room_id, "Ann")
        ben = await enter(api, edge.ws_url, room_id, "Ben")
        await ann.recv_type("join")
        await ann.send({"type": "chat", "to": "all", "text": "before"})
        assert await chats(ben, 1) == ["before"]

        # The worker's renewals, replies, events and writes stop reaching
        # NATS; what NATS sends it still arrives.
        link.hold()
        await ann.send({"type": "chat", "to": "all", "text": "during"})
        # Its lease lapses, the other worker takes the room, the edge's
        # retry goes there: Ben gets the message once.
        assert await asyncio.wait_for(chats(ben, 1), 30) == ["during"]
        assert await bus.room_owner(room_id) == stays_id

        # Everything held goes through now: stale renewals (refused: the
        # worker learns it lost its lease), a stale event (numbered inside the
        # old owner's reservation: edges drop it), stale writes (refused by
        # the revision check).
        link.release()
        await eventually(
            lambda: "lost its lease" in cut_off.log(),
            timeout=30,
            message="the cut-off worker never noticed it lost its lease",
        )
        await ann.send({"type": "chat", "to": "all", "text": "after"})
        assert await chats(ben, 1) == ["after"]  # not a second "during" first
        state = await bus.room_state(room_id)
        assert state is not None
        assert sorted(p.name for p in state.participants.values()) == ["Ann", "Ben"]
        # The worker comes back as a new member and gets its share again.
        await bus.balanced([cut_id, stays_id])
        await ann.send({"type": "chat", "to": "all", "text": "later"})
        assert await chats(ben, 1) == ["later"]
        for member in (ann, ben):
            await member.client.close()
    finally:
        await api.close()
        await asyncio.to_thread(cut_off.stop)  # while it still reaches NATS: a hand-over
        await link.close()


async def test_a_worker_cut_off_from_nats_still_stops_when_told(
    make_system: Callable[..., System],
) -> None:
    """Found by the slowest teardowns (15 s each): a worker told to stop
    (SIGTERM) while it could not reach NATS tried to hand its partitions over
    (each delete waiting 5 s, each turn in flight 20 s) and to drain a
    connection that was not there, until it was killed. Without NATS it does
    not try (and a hand-over has 8 s at most); it exits 0, and its partitions
    move when its lease expires."""
    system = make_system()
    await system.start(actors=1, edges=1)
    link = await link_to_nats(system)
    cut_off = system.start_actor(NATS_URL=f"nats://127.0.0.1:{link.port}")
    bus = await system.bus()
    await bus.balanced([cut_off.env["WORKER_ID"], system.actors[0].env["WORKER_ID"]])
    await link.close()  # connections reset, new ones refused
    await eventually(
        lambda: "Connection refused" in cut_off.log(), timeout=10, message="never lost NATS"
    )
    assert await asyncio.to_thread(cut_off.stop, 20) == 0  # not killed
    assert "its partitions move when its lease expires" in cut_off.log()
    await bus.balanced([system.actors[0].env["WORKER_ID"]])


@pytest.mark.parametrize("role", ["edge", "dispatcher"])
async def test_an_edge_or_dispatcher_cut_off_from_nats_still_stops_when_told(
    make_system: Callable[..., System], role: str
) -> None:
    """As the worker above: SIGTERM while NATS is unreachable ends the
    process with 0 before it would be killed (the other roles hold no
    partitions; they must not wait for NATS either)."""
    system = make_system()
    await system.start(actors=1, edges=1)
    link = await link_to_nats(system)
    url = f"nats://127.0.0.1:{link.port}"
    if role == "edge":
        child: Proc = await edge_behind(system, link)
    else:
        child = system.start_webhooks(
            NATS_URL=url, WEBHOOK_URL="http://127.0.0.1:9/hooks", WEBHOOK_SECRET=SECRET
        )
        await eventually(lambda: "delivering to" in child.log(), timeout=30)
    await link.close()
    await eventually(
        lambda: "Connection refused" in child.log(), timeout=10, message="never lost NATS"
    )
    assert await asyncio.to_thread(child.stop, 20) == 0, child.log()[-3000:]


async def test_an_edge_cut_off_past_the_edge_timeout_closes_the_sockets_the_room_dropped(
    make_system: Callable[..., System],
) -> None:
    """Edge A's link to NATS holds everything both ways for longer than
    `EDGE_TIMEOUT`: the room takes edge A for dead and Ann, on it, leaves.
    When the link lets everything through, edge A does not go on serving Ann
    a room she is no longer in: her socket is closed with 1013 (reconnect),
    and she gets back in through a new join."""
    system = make_system(EDGE_TIMEOUT="1.5", HEARTBEAT_INTERVAL="0.25")
    await system.start(actors=1, edges=1)
    edge_b = system.edges[0]
    link = await link_to_nats(system)
    edge_a = await edge_behind(system, link)
    api = Api(edge_b.url)
    try:
        room_id = await api.create_room("edge cut off")
        ben = await enter(api, edge_b.ws_url, room_id, "Ben")
        ann = await enter(api, edge_a.ws_url, room_id, "Ann")
        assert (await ben.recv_type("join"))["data"]["participant_id"] == ann.participant_id

        link.hold(both_ways=True)
        left = await ben.recv_type("leave", timeout=20)
        assert left["data"]["participant_id"] == ann.participant_id
        link.release()
        code, _ = await ann.client.closed(timeout=20)
        assert code == 1013

        # Her client reconnects: a new join, and Ben sees her come back.
        again = await enter(api, edge_a.ws_url, room_id, "Ann")
        assert (await ben.recv_type("join"))["data"]["participant_id"] == again.participant_id
        for member in (ben, again):
            await member.client.close()
    finally:
        await api.close()
        await asyncio.to_thread(edge_a.stop)  # while it still reaches NATS
        await link.close()


async def test_a_targeted_frame_the_network_held_does_not_reach_the_next_connection(
    make_system: Callable[..., System],
) -> None:
    """Found by the nemesis (a node paused 5 s): Ben's `offer` reached Ann on
    edge A; its copy to edge B, where no one it was for was yet, was held in
    the network. Ann moved to edge B (a new connection, same token), and the
    held copy, let through, was delivered to her again. A targeted frame
    carries when it was sent; one sent before the connection it would go to
    was opened was meant for an earlier one and is dropped."""
    system = make_system(EDGE_TIMEOUT="30")  # the held link must not make B look dead
    await system.start(actors=1, edges=1)
    edge_a = system.edges[0]
    link = await link_to_nats(system)
    edge_b = await edge_behind(system, link)
    api = Api(edge_a.url)
    bus = await system.bus()
    try:
        room_id = await api.create_room("held offer")
        ann = await enter(api, edge_a.ws_url, room_id, "Ann")
        ben = await enter(api, edge_b.ws_url, room_id, "Ben")
        await ann.recv_type("join")
        link.hold_back()  # what reaches edge B waits; what it sends goes
        await ben.send({"type": "offer", "to": ann.participant_id, "n": 1, "sdp": "v=0"})
        first = await ann.recv_type("offer")
        assert first["n"] == 1
        sent = time.time()
        await eventually(lambda: time.time() > sent + PEER_CLOCK_MARGIN, timeout=5)
        before = await bus.room_state(room_id)
        assert before is not None
        old_conn = before.participants[ann.participant_id].conn_id
        ann.client.ws.transport.abort()  # no Close frame: she resumes elsewhere
        again = opened(await WsClient.connect(edge_b.ws_url, ann.token))

        async def resumed() -> bool:
            state = await bus.room_state(room_id)
            return state is not None and state.participants[ann.participant_id].conn_id != old_conn

        await eventually(resumed, timeout=10, message="the resume never reached the room")
        link.release()  # the held copy of offer 1 first, then the join's answer
        await again.recv_type("welcome")
        await ben.send({"type": "offer", "to": ann.participant_id, "n": 2, "sdp": "v=0"})
        assert (await again.recv_type("offer"))["n"] == 2  # not 1 a second time
        await again.close()
        await ben.client.close()
    finally:
        await bus.close()
        await api.close()
        await asyncio.to_thread(edge_b.stop)  # while it still reaches NATS
        await link.close()


async def role_connections(node: Node) -> list[str]:
    """The names of our processes' connections to ``node``."""
    async with httpx.AsyncClient(timeout=5) as http:
        connz = (await http.get(f"{node.server.monitor_url}/connz?limit=1024")).json()
    names = [c.get("name", "") for c in connz.get("connections") or []]
    return [name for name in names if name.startswith(("edge-", "actors-", "webhooks-"))]


async def caller(api: Api, world: World, room_id: str) -> Client:
    """A participant whose client reconnects as docs/protocol.md says: with
    the same token after 1012 or 1013, through a new join after 4003."""
    joined = await api.join(room_id)

    async def join_again() -> tuple[str, str]:
        again = await api.join(room_id)
        return again["token"], again["participant_id"]

    client = Client(
        room_id,
        joined["participant_id"][:6],
        joined["token"],
        joined["participant_id"],
        world.edge_urls,
        random.Random(len(joined["token"])),
        rejoin=join_again,
    ).start()
    await asyncio.wait_for(client.welcomed.wait(), 30)
    return client


async def heard(speaker: Client, listener: Client, n: int) -> None:
    """``speaker`` says chat ``n`` (again while it does not arrive) until
    ``listener`` has it."""

    async def arrived() -> bool:
        if not listener.broadcasts[speaker.pid, n]:
            listener.heard.clear()
            await speaker.chat(n)  # lost if sent while the room moves: said again
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener.heard.wait(), 0.5)
        return bool(listener.broadcasts[speaker.pid, n])

    await eventually(arrived, timeout=30, message=f"chat {n} never arrived")


@pytest.mark.timeout(240)  # a three-node system with all its links: slower to start
async def test_a_nats_node_cut_off_from_the_other_two_does_not_split_and_its_clients_move(
    tmp_path: Path,
) -> None:
    """Every process reaches each node through a link, and the nodes reach
    each other through links (tests/chaos/world.py). The node most of them
    are connected to is cut off from the other two, both ways; its clients
    stay connected to it. JetStream keeps its quorum on the other side: a KV
    write through the cut-off node fails, one through another node works and
    is what every node has after the cut heals. The processes on the cut-off
    node notice that it no longer answers for JetStream and move to another
    node, and a call goes on meanwhile."""
    world = World(tmp_path)
    ann = ben = None
    try:
        await world.start()
        counts = [len(await role_connections(node)) for node in world.nodes]
        cut = world.nodes[max(range(len(counts)), key=counts.__getitem__)]
        other = next(node for node in world.nodes if node is not cut)
        assert counts[cut.index] > 0
        admin = world.system.users.passwords["admin"]
        through_cut = await nats.connect(cut.server.url, user="admin", password=admin)
        through_other = await nats.connect(other.server.url, user="admin", password=admin)
        await through_other.jetstream().create_key_value(bucket="split_probe", replicas=3)
        api = Api(world.edge_urls()[0])
        room_id = await api.create_room("partitioned node")
        ann, ben = [await caller(api, world, room_id) for _ in range(2)]
        kv_cut = await through_cut.jetstream().key_value("split_probe")
        kv_other = await through_other.jetstream().key_value("split_probe")
        for link in cut.links():
            link.hold(both_ways=True)
        with pytest.raises((nats.errors.Error, TimeoutError)):
            await kv_cut.put("k", b"from the cut-off node")

        async def written() -> bool:
            # Once the two others have given the cut-off node up and elected
            # a leader among themselves, if it led the bucket (seconds).
            await kv_other.put("k", b"from the majority")
            return True

        await eventually(written, timeout=30, retry_on=(nats.errors.Error, TimeoutError))

        async def moved() -> bool:
            return not await role_connections(cut)

        await eventually(moved, timeout=30, message="processes stayed on the cut-off node")
        await heard(ann, ben, 1)

        for link in cut.links():
            link.release()
        await world.node_ready(cut)
        await through_cut.close()
        healed = await nats.connect(cut.server.url, user="admin", password=admin)
        kv_healed = await healed.jetstream().key_value("split_probe")

        async def agreed() -> bool:
            return (await kv_healed.get("k")).value == b"from the majority"

        await eventually(agreed, timeout=30, retry_on=(nats.errors.Error,))
        await healed.close()
        await through_other.close()
        await heard(ann, ben, 2)
        await api.close()
    finally:
        for client in (ann, ben):
            if client is not None:
                await client.stop()
        await world.stop()
