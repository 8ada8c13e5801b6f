"""room_actors.liveness.EdgeLiveness on a clock the test moves."""

from dataclasses import dataclass

import pytest

from bus_schema import codec
from bus_schema.status import EdgeHeartbeat
from room_actors import liveness
from room_actors.liveness import EdgeLiveness

TIMEOUT = 3.0
EDGES = {"a", "b", "c"}

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Beat:
    data: bytes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    ticking = Clock()
    monkeypatch.setattr(liveness.time, "monotonic", ticking)
    return ticking


async def beat(edges: EdgeLiveness, *ids: str) -> None:
    for edge_id in ids:
        heartbeat = EdgeHeartbeat(edge_id=edge_id, started_at="", connections=0, rooms=0)
        await edges.on_heartbeat(Beat(codec.encode(heartbeat)))  # type: ignore[arg-type]


async def test_an_edge_silent_for_the_timeout_is_dead_while_the_others_are_heard(
    clock: Clock,
) -> None:
    edges = EdgeLiveness(TIMEOUT)
    await beat(edges, "a", "b", "c")
    for _ in range(4):  # "c" falls silent; "a" and "b" go on
        clock.now += 1.0
        await beat(edges, "a", "b")
    assert edges.dead(EDGES) == {"c"}


async def test_a_worker_that_hears_no_edge_takes_none_for_dead(clock: Clock) -> None:
    """Found by the nemesis: a worker on a paused node heard no heartbeat for
    3.4 s and took all three edges for dead at once; had its lease outlived
    the pause, everyone in its rooms would have been made to leave. Silence
    counts only while the worker hears some edge; once it hears again, every
    edge gets a whole timeout from then."""
    edges = EdgeLiveness(TIMEOUT)
    await beat(edges, "a", "b", "c")
    clock.now += TIMEOUT + 0.5  # this worker hears nothing
    assert edges.dead(EDGES) == frozenset()
    await beat(edges, "a")  # the first heartbeat after the pause
    clock.now += TIMEOUT - 0.5
    assert edges.dead(EDGES) == frozenset()  # "b" and "c" have until a whole timeout
    await beat(edges, "a", "b")
    clock.now += 1.0
    assert edges.dead(EDGES) == {"c"}  # "c" really is silent
