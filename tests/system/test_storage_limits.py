"""Byte limits of the KV buckets (``KV_MAX_BYTES``): set on creation, brought to
the setting at start, and what a full bucket does. Real processes."""

from collections.abc import Callable

import pytest
from nats.js.api import DiscardPolicy
from nats.js.errors import APIError
from nats.js.kv import KeyValue

from bus_schema import buckets
from bus_schema.log import LOG_STREAM
from tests.harness import Api, System

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

MiB = 1024 * 1024
BUCKETS = (buckets.ROOMS, buckets.ROOM_STATE, buckets.CALLS_SESSIONS, buckets.LEASES)


async def limits(system: System) -> dict[str, tuple[int | None, DiscardPolicy | None]]:
    """Each bucket's stream ``max_bytes`` and discard policy, as JetStream has them."""
    nc = await system.connect()
    try:
        js = nc.jetstream()
        found = {}
        for bucket in BUCKETS:
            config = (await js.stream_info(f"KV_{bucket}")).config
            found[bucket] = (config.max_bytes, config.discard)
        return found
    finally:
        await nc.close()


async def fill(kv: KeyValue) -> int:
    """Put values, halving their size at each refusal, until the bucket refuses
    even 32 bytes; how many went in."""
    count, size = 0, 60_000
    refusals = set()
    while size >= 32 and count < 1000:
        try:
            await kv.put(f"filler-{count}", b"x" * size)
            count += 1
        except APIError as e:
            refusals.add(e.description)
            size //= 2
    assert refusals == {"maximum bytes exceeded"}
    return count


async def test_buckets_get_their_byte_limit_and_follow_the_setting_at_start(
    make_system: Callable[..., System],
) -> None:
    system = make_system(KV_MAX_BYTES=str(8 * MiB))
    await system.start()
    api = Api(system.edges[0].url)
    try:
        assert await limits(system) == {b: (8 * MiB, DiscardPolicy.NEW) for b in BUCKETS}
        room_id = await api.create_room("kept")

        # A worker started with another limit brings the existing buckets to it.
        system.actors[0].stop()
        system.start_actor(KV_MAX_BYTES=str(16 * MiB))
        await system.wait_actors_ready()
        assert await limits(system) == {b: (16 * MiB, DiscardPolicy.NEW) for b in BUCKETS}
        assert (await api.http.get(f"/api/rooms/{room_id}")).json()["name"] == "kept"
        nc = await system.connect()
        try:
            log = (await nc.jetstream().stream_info(LOG_STREAM)).config
            assert (log.max_bytes, log.discard) == (1024**3, DiscardPolicy.OLD)
        finally:
            await nc.close()
    finally:
        await api.close()


async def test_a_full_bucket_refuses_writes_and_keeps_every_room(
    make_system: Callable[..., System],
) -> None:
    """Whoever fills ``room_state`` (many rooms, big rooms) cannot push other
    rooms' state out: writes are refused with a retryable error, nothing stored
    goes, and writes resume once there is room again."""
    system = make_system(KV_MAX_BYTES=str(MiB), COMMAND_DEADLINE="3")
    await system.start()
    api = Api(system.edges[0].url)
    nc = await system.connect()
    try:
        kept = [await api.create_room(f"kept-{i}") for i in range(3)]
        kv = await nc.jetstream().key_value(buckets.ROOM_STATE)
        before = {room_id: (await kv.get(room_id)).value for room_id in kept}
        fillers = await fill(kv)
        assert 0 < fillers < 1000

        refused = await api.http.post("/api/rooms", json={"name": "one too many"})
        assert refused.status_code == 503, refused.text
        assert "error" in refused.json()
        for room_id in kept:
            assert (await kv.get(room_id)).value == before[room_id]
            assert (await api.http.get(f"/api/rooms/{room_id}")).status_code == 200

        await kv.purge("filler-0")  # room again: writes resume
        assert await api.create_room("welcome back")
    finally:
        await nc.close()
        await api.close()
