"""A process moves off a node that does not answer for JetStream
(`runtime.natsconn.keep_on_a_quorum`): to another node, never straight back
to the one it left."""

import itertools
from pathlib import Path

import pytest

from runtime import natsconn
from signaling.natsserver import NatsServer
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_process_leaving_a_node_goes_to_another_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the node-partition test: an edge leaving the cut-off node
    reconnected to it again twice (nats-py shuffles its servers at each
    reconnect), so it stayed cut off for 11 s, the room took it for dead and
    its clients were dropped. Here no node answers for JetStream (it is off),
    so the client moves every few probes: each move must go to another node,
    and three moves visit every node."""
    monkeypatch.setattr(natsconn, "QUORUM_PROBE", 0.1)
    nodes = [
        NatsServer(data_dir=tmp_path / f"n{i}", name=f"n{i}", extra_args=("-js=false",))
        for i in range(3)
    ]
    for node in nodes:
        node.start()
    try:
        path: list[str] = []

        async def reconnected() -> None:
            url = nc.connected_url
            path.append(url.netloc if url is not None else "")

        nc = await natsconn.connect(
            [node.url for node in nodes], name="mover", role="edge", on_reconnected=reconnected
        )
        assert nc.connected_url is not None
        path.append(nc.connected_url.netloc)
        await eventually(lambda: len(path) >= 10, timeout=30, message=lambda: path)
        await nc.close()
        assert all(a != b for a, b in itertools.pairwise(path)), path
        assert all(len(set(path[i : i + 3])) == 3 for i in range(len(path) - 2)), path
    finally:
        for node in nodes:
            node.stop()
