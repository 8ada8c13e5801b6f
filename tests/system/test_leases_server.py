"""room_actors.leases against a real nats-server, for what the unit tests'
in-memory bucket cannot show: a request the network lost on its way."""

import asyncio
import contextlib
from collections.abc import Callable

import nats
import pytest

from bus_schema import subjects
from room_actors.leases import Leases, open_leases_bucket
from room_actors.placement import assign
from tests.harness import System, opened
from tests.links import link_to_nats
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(90)]

TTL = 6.0
"""Longer than a request's timeout (2 s here): the lease outlives the lost
deletes (renewals are given up after TTL/4 and tried again)."""
REQUEST_TIMEOUT = 2.0
EVERY = set(range(subjects.PARTITIONS))


async def test_a_release_the_network_lost_is_made_again(
    make_system: Callable[..., System], caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the node-partition test: a worker released partitions as the
    bus failed again, its deletes never landed, and the other worker waited
    for a hand-over that never came. Here worker ``a`` reaches nats-server
    through a link that swallows everything from the moment ``a`` starts
    releasing (its deletes time out), then drops the connection with what it
    held. ``a`` looks at those partitions again once it is back, and ``b``
    gets its share."""
    system = make_system()
    system.start_nats()
    link = await link_to_nats(system)
    password = system.users.passwords["admin"]
    a_conn = opened(
        await nats.connect(f"nats://127.0.0.1:{link.port}", user="admin", password=password)
    )
    b_conn = await system.connect()
    told: dict[str, set[int]] = {"a": set(), "b": set()}
    releasing = asyncio.Event()

    def worker(worker_id: str, nc: nats.aio.client.Client, kv: object) -> Leases:
        async def acquire(partitions: list[int]) -> None:
            told[worker_id].update(partitions)

        async def release(partitions: list[int]) -> None:
            told[worker_id].difference_update(partitions)
            if worker_id == "a" and not releasing.is_set():
                link.hold(both_ways=True)  # its deletes go out into nothing
                releasing.set()

        async def lose(partitions: list[int]) -> None:
            told[worker_id].difference_update(partitions)

        js = nc.jetstream(timeout=REQUEST_TIMEOUT)
        return Leases(
            js,
            kv,  # type: ignore[arg-type]
            worker_id=worker_id,
            ttl=TTL,
            on_acquire=acquire,
            on_release=release,
            on_lost=lose,
        )

    a_kv = await open_leases_bucket(a_conn.jetstream(timeout=REQUEST_TIMEOUT), replicas=1)
    b_kv = await open_leases_bucket(b_conn.jetstream(timeout=REQUEST_TIMEOUT), replicas=1)
    a = worker("a", a_conn, a_kv)
    b = worker("b", b_conn, b_kv)
    caplog.set_level("INFO", logger="room_actors.leases")
    try:
        await a.start()
        await eventually(lambda: told["a"] == EVERY, timeout=20, message="a never served all")
        await b.start()
        await asyncio.wait_for(releasing.wait(), 20)
        # The deletes' requests time out (2 s); then the link drops the
        # connection and what it held: none of them reached the server.
        await eventually(
            lambda: any("not answered" in r.getMessage() for r in caplog.records),
            timeout=20,
            message="a never found its releases unanswered",
        )
        link.cut()
        link.release()
        share = {p for p, w in assign(subjects.PARTITIONS, {"a", "b"}).items() if w == "b"}
        await eventually(
            lambda: told["b"] == share and told["a"] == EVERY - share,
            timeout=30,
            message=lambda: f"b serves {len(told['b'])} of {len(share)}",
        )
        assert a.owned == sorted(EVERY - share)
        assert b.owned == sorted(share)
    finally:
        for leases in (a, b):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(leases.stop(), 10)
        await link.close()
