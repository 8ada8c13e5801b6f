"""The ``active_rooms`` index: what a takeover reads. It lists, by partition,
the rooms someone is in or that close at a set time; the owning actor keeps it
in step (not per join), and a worker taking partitions over reads those rooms
and no others."""

import collections
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient

from bus_schema import buckets, ids, subjects
from bus_schema.state import RoomActivity
from edge.bus import room_page
from room_actors.store import ensure_buckets
from runtime.streams import bucket_keys
from tests.harness import Api, System, enter
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def index_entry(system: System, room_id: str) -> RoomActivity | None:
    """The room's entry in ``active_rooms`` as the server has it (``None``:
    no key at all, not even a delete marker)."""
    bus = await system.bus()
    try:
        key = buckets.active_key(subjects.partition_of(room_id), room_id)
        if key not in await bucket_keys(bus.nc, buckets.ACTIVE_ROOMS):
            return None
        kv = await bus.js.key_value(buckets.ACTIVE_ROOMS)
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None  # purged since it was listed
        assert entry.value, "a listed key has a value: removed entries are purged"
        return msgspec.json.decode(entry.value, type=RoomActivity)
    finally:
        await bus.close()


async def test_the_index_follows_the_room(make_system: Callable[..., System]) -> None:
    system = make_system(ROOM_DEPARTURE_TIMEOUT="1")
    await system.start()
    api = Api(system.edges[0].url)
    ws = system.edges[0].ws_url

    # Created empty with a deadline: listed, to close on time after a takeover.
    room_id = await api.create_room("indexed", empty_timeout=600)
    created = await eventually(lambda: index_entry(system, room_id), timeout=10)
    assert (created.occupied, created.close_at is not None) == (False, True)

    ann = await enter(api, ws, room_id, "Ann")

    async def occupied() -> RoomActivity | None:
        entry = await index_entry(system, room_id)
        return entry if entry is not None and entry.occupied else None

    entry = await eventually(occupied, timeout=10)
    assert entry.close_at is None

    await ann.client.close()  # a clean leave: the departure timeout (1 s) closes it

    async def gone() -> bool:
        return await index_entry(system, room_id) is None

    await eventually(gone, timeout=20, message="the closed room stayed in the index")
    await api.close()


async def test_an_idle_room_is_not_listed_at_all(make_system: Callable[..., System]) -> None:
    """A room nobody is in and that has no deadline: no entry, not even a
    delete marker a takeover would list."""
    system = make_system()
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("idle", empty_timeout=0, departure_timeout=0)
    ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
    await eventually(lambda: index_entry(system, room_id), timeout=10)
    await ann.client.close()

    async def unlisted() -> bool:
        return await index_entry(system, room_id) is None

    await eventually(unlisted, timeout=20, message="the idle room stayed in the index")
    await api.close()


async def takeover_reads(url: str) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(url)).text
    reads: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        if line.startswith("signaling_actor_takeover_rooms_read_total{"):
            source = line.split('source="', 1)[1].split('"', 1)[0]
            reads[source] += float(line.rsplit(" ", 1)[1])
    return reads


async def test_a_takeover_reads_the_indexed_rooms_only(
    make_system: Callable[..., System],
) -> None:
    """Many idle rooms, a few occupied ones; a worker is SIGKILLed: the one
    that takes its partitions over reads the occupied rooms of those
    partitions, not the idle ones, and serves them."""
    system = make_system()
    await system.start(actors=2)
    bus = await system.bus()
    workers = [a.env["WORKER_ID"] for a in system.actors]
    await bus.balanced(workers)
    api = Api(system.edges[0].url)
    ws = system.edges[0].ws_url
    idle = [await api.create_room(f"idle-{n}", empty_timeout=0) for n in range(60)]
    busy = [await api.create_room(f"busy-{n}", empty_timeout=0) for n in range(12)]
    members = [await enter(api, ws, room_id, "m") for room_id in busy]
    assert idle  # stored, never joined: no index entry

    async def every_busy_room_indexed() -> bool:
        keys = set(await bucket_keys(bus.nc, buckets.ACTIVE_ROOMS))
        return all(buckets.active_key(subjects.partition_of(r), r) in keys for r in busy)

    await eventually(every_busy_room_indexed, timeout=20)
    victim = workers[0]
    survivor = system.actors[1]
    survivor_metrics = f"http://127.0.0.1:{survivor.env['METRICS_PORT']}/metrics"
    before = await takeover_reads(survivor_metrics)
    victims_rooms = [r for r in busy if await bus.room_owner(r) == victim]
    system.actor(victim).kill()
    await bus.balanced([workers[1]])
    for room_id in victims_rooms:
        assert await bus.room_owner(room_id) == workers[1]

    async def taken_over() -> dict[str, float] | None:
        after = await takeover_reads(survivor_metrics)
        grew = {k: after[k] - before.get(k, 0.0) for k in after}
        return grew if grew.get("index", 0) >= len(victims_rooms) else None

    grew = await eventually(taken_over, timeout=20)
    assert grew.get("scan", 0.0) == 0  # the index covered every partition
    assert grew["index"] == len(victims_rooms)  # the victim's occupied rooms, no idle one
    # Served: each of them answers through the survivor.
    for room_id in victims_rooms:
        state = await bus.room_state(room_id)
        assert state is not None
        info = (await api.http.get(f"/api/rooms/{room_id}")).json()
        assert info["id"] == room_id
    for member in members:
        await member.client.close()
    await bus.close()
    await api.close()


async def test_a_partition_the_index_does_not_cover_is_scanned_once(
    make_system: Callable[..., System],
) -> None:
    """An index from before (its partition markers missing, as after an
    upgrade): the worker scans ``room_state`` for those partitions, indexes
    what it finds, marks them covered, and the next takeover reads the index."""
    system = make_system()
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("old", empty_timeout=0)
    ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
    bus = await system.bus()
    kv = await bus.js.key_value(buckets.ACTIVE_ROOMS)
    partition = subjects.partition_of(room_id)
    await eventually(lambda: index_entry(system, room_id), timeout=10)
    # As an index of an older version: nothing in it, no marker.
    for stored in await bucket_keys(bus.nc, buckets.ACTIVE_ROOMS):
        await bus.js.purge_stream(
            f"KV_{buckets.ACTIVE_ROOMS}", subject=f"$KV.{buckets.ACTIVE_ROOMS}.{stored}"
        )
    assert await index_entry(system, room_id) is None

    system.actors[0].kill()
    worker = system.start_actor()
    metrics_url = f"http://127.0.0.1:{worker.env['METRICS_PORT']}/metrics"

    async def scanned() -> dict[str, float] | None:
        reads = await takeover_reads(metrics_url)
        return reads if reads.get("scan", 0) >= 1 else None

    await eventually(scanned, timeout=30, retry_on=(httpx.HTTPError,))
    entry = await eventually(lambda: index_entry(system, room_id), timeout=10)
    assert entry.occupied
    # The partition is marked covered once its rooms are indexed (after them).
    marker = await eventually(
        lambda: kv.get(f"{buckets.INDEX_COMPLETE}.{partition}"),
        timeout=10,
        retry_on=(nats.js.errors.KeyNotFoundError,),
    )
    assert marker.value == b"true"
    await ann.client.close()
    await bus.close()
    await api.close()


class CountingNats:
    """A real connection that counts the requests made through it."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self.requests = 0

    async def request(self, subject: str, payload: bytes, timeout: float) -> object:
        self.requests += 1
        return await self.nc.request(subject, payload, timeout=timeout)


async def test_a_page_of_the_room_list_reads_its_shards_only(tmp_path: Path) -> None:
    """Past a few thousand rooms, a page of the admin listing reads the
    ``room_list`` shards it spans (one listing each), not every key; the
    pages, one after another, give every room once in id order. (Few
    shards' worth here: ``at_once`` set low to take the sharded path.)"""
    system = System(tmp_path)
    nc = edge = None
    try:
        system.start_nats()
        nc = await system.connect(role="actors")
        js = nc.jetstream()
        await ensure_buckets(js, ttl=3600, replicas=1, max_bytes=64 * 1024 * 1024)
        room_list = await js.key_value(buckets.ROOM_LIST)
        rooms = sorted(ids.new_id() for _ in range(600))
        for room_id in rooms:
            await room_list.put(buckets.list_key(room_id), room_id.encode())
        edge = await system.connect(role="edge")
        counting = CountingNats(edge)

        listed: list[str] = []
        cursor: str | None = None
        while True:
            counting.requests = 0
            page, more = await room_page(counting, cursor, 40, at_once=100)  # type: ignore[arg-type]
            listed.extend(page)
            # The size, then the shards from the cursor's to the one holding
            # the room after the page (which says more follow): never the
            # 256 shards of the whole list.
            last = rooms[len(listed)] if more else rooms[-1]
            first = int(cursor[:2], 16) if cursor else 0
            spanned = int(last[:2], 16) - first + 1
            assert counting.requests == 1 + spanned or not more, (counting.requests, spanned)
            assert counting.requests <= 1 + 256 - first
            if more:
                assert spanned < 40
            if not more:
                break
            cursor = page[-1]
        assert listed == rooms
    finally:
        for client in (edge, nc):
            if client is not None:
                await client.close()
        system.stop()
