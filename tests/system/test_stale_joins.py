"""A join for a socket that is gone never takes the participant's place from
the socket the client moved to (issue 18's first finding).

What happened: a client's join was still being retried by edge A (the actors
were stalled) when edge A closed the socket; the client resumed through edge B
and got its welcome; then edge A's retry reached the actor, which took it for
the newer connection and closed the live socket with 4000. Here edge A's link
to NATS holds what it sends (the connection stays up, its bytes wait in order)
while the client gives up on edge A and joins through edge B; then the link
lets everything through."""

from collections.abc import Callable

import pytest

from tests.harness import Api, System, WsClient, enter
from tests.links import edge_behind, link_to_nats
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]


async def test_a_join_for_a_socket_given_up_never_replaces_the_one_the_client_moved_to(
    make_system: Callable[..., System],
) -> None:
    system = make_system(COMMAND_ATTEMPT_TIMEOUT="0.5", COMMAND_DEADLINE="20")
    await system.start(edges=1)
    edge_b = system.edges[0]
    link = await link_to_nats(system)
    edge_a = await edge_behind(system, link)
    api = Api(edge_b.url)
    try:
        room_id = await api.create_room("stale joins")
        observer = await enter(api, edge_b.ws_url, room_id, "Observer")
        joined = await api.join(room_id, "Mover")
        token, mover_id = joined["token"], joined["participant_id"]

        # Edge A's join attempts (and whatever follows) wait in the link.
        link.hold()
        first = await WsClient.connect(edge_a.ws_url, token, participant_id=mover_id)
        await first.close()  # the client gives up on edge A...
        await eventually(
            lambda: "join given up" in edge_a.log(),
            timeout=20,
            message="edge A went on with the join of a closed socket",
        )
        # ...and comes back through edge B, where it is let in.
        second = await WsClient.connect(edge_b.ws_url, token, participant_id=mover_id)
        welcome = await second.recv_type("welcome")
        assert welcome["participant_id"] == mover_id
        assert (await observer.recv_type("join"))["data"]["participant_id"] == mover_id

        # Edge A's stale attempts and its Disconnect reach the actor now,
        # after the join through edge B; its log line comes once the
        # Disconnect (sent after every attempt) is answered.
        link.release()
        await eventually(
            lambda: "join given up; the room has heard" in edge_a.log(),
            timeout=30,
            message="edge A's Disconnect was never answered",
        )

        # The socket on edge B is still the participant's: what it sends
        # reaches the others, and no one heard of a leave or a join.
        await second.send({"type": "chat", "to": "all", "text": "still here"})
        relayed = await observer.recv()
        assert relayed.get("type") == "chat", relayed
        assert relayed.get("text") == "still here", relayed
        state = await (await system.bus()).room_state(room_id)
        assert state is not None
        # Edge ids are the configured EDGE_ID and a suffix of each start.
        assert state.participants[mover_id].edge_id.startswith(edge_b.env["EDGE_ID"] + "-")
        await second.close()
        await observer.client.close()
    finally:
        await api.close()
        await link.close()
