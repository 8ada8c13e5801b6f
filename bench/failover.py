"""Room actor failover and command throughput.

- failover: three workers; SIGKILL the one owning the most partitions and time
  from the kill to the first acknowledged command for one of its rooms, and to
  the moment every one of its rooms acknowledged a command. Repeated ``--kills``
  times (a fresh worker replaces each victim).
- throughput: acknowledged room commands per second (a ``broadcast`` each: a CAS
  write to KV and a published event) with 1 and with 3 workers, from one
  load-generating process keeping ``--inflight`` commands outstanding.

    .venv/bin/python -m bench.failover [--kills 10] [--seconds 10]
"""

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from bench.common import Results, summary
from bus_schema import codec, ids, subjects
from bus_schema.commands import Ack, Broadcast, CreateRoom, Join
from bus_schema.status import EdgeHeartbeat
from edge.commands import RoomCommands
from tests.harness import System

FRAME = msgspec.Raw(b'{"type":"bench"}')


async def beat(nc: Any) -> None:
    """The benchmark's participants sit on a pretend edge "bench": it beats like
    an edge, or the workers would make them leave (edge_lost)."""
    heartbeat = EdgeHeartbeat(edge_id="bench", started_at="", connections=0, rooms=0)
    while True:
        await nc.publish(subjects.edge_heartbeat("bench"), codec.encode(heartbeat))
        await asyncio.sleep(0.5)


def create_room(
    room_id: str,
    *,
    max_participants: int = 10,
    empty_timeout: float | None = None,
    departure_timeout: float | None = None,
) -> CreateRoom:
    """The command that creates a benchmark's room (the worker's default
    timeouts unless given)."""
    return CreateRoom(
        cmd_id=ids.new_token_id(),
        room_id=room_id,
        name="bench",
        created_by="bench",
        created_at="2026-01-01T00:00:00.000Z",
        max_participants=max_participants,
        empty_timeout=empty_timeout,
        departure_timeout=departure_timeout,
    )


def join(room_id: str, participant: str, conn_id: str = "bench") -> Join:
    """A participant of the pretend edge "bench" joins."""
    return Join(
        cmd_id=ids.new_token_id(),
        room_id=room_id,
        participant_id=participant,
        name="bench",
        edge_id="bench",
        conn_id=conn_id,
    )


async def make_rooms(commands: RoomCommands, count: int) -> dict[str, str]:
    """room id -> participant id: rooms spread over every partition, one member each."""
    rooms: dict[str, str] = {}
    while len(rooms) < count:
        room_id = ids.new_id()
        if len(rooms) < subjects.PARTITIONS and any(
            subjects.partition_of(r) == subjects.partition_of(room_id) for r in rooms
        ):
            continue
        await commands.send(create_room(room_id))
        participant = ids.new_id()
        await commands.send(join(room_id, participant))
        rooms[room_id] = participant
    return rooms


def broadcast(room_id: str, participant: str) -> Broadcast:
    return Broadcast(
        cmd_id=ids.new_token_id(),
        room_id=room_id,
        participant_id=participant,
        conn_id="bench",
        frame=FRAME,
    )


async def acknowledged(commands: RoomCommands, room_id: str, participant: str) -> float:
    reply = await commands.send(broadcast(room_id, participant))
    assert isinstance(reply, Ack), reply
    return time.perf_counter()


async def failover(root: Path, kills: int, results: Results) -> None:
    system = System(root / "failover")
    await system.start(actors=3, edges=0)
    bus = await system.bus()
    commands = RoomCommands(bus.nc, attempt_timeout=2.0, deadline=60.0)
    await commands.start()  # as an edge: hears of partitions taken over
    beating = asyncio.create_task(beat(bus.nc))
    try:
        rooms = await make_rooms(commands, subjects.PARTITIONS)
        first_ack, all_acked = [], []
        for kill in range(kills):
            live = [a.env["WORKER_ID"] for a in system.actors if a.alive()]
            owned = await bus.balanced(live)
            victim = max(owned, key=lambda w: len(owned[w]))
            affected = [r for r in rooms if subjects.partition_of(r) in owned[victim]]
            started = time.perf_counter()
            system.actor(victim).kill()
            done = await asyncio.gather(*(acknowledged(commands, r, rooms[r]) for r in affected))
            first, last = min(done) - started, max(done) - started
            first_ack.append(first)
            all_acked.append(last)
            results.record(
                scenario="failover", kill=kill, rooms=len(affected), first_s=first, all_s=last
            )
            system.start_actor()
        results.say("## Actor failover (SIGKILL, 3 workers, default LEASE_TTL=2 s)")
        results.say("")
        results.say("| measure | p50 | max | n |")
        results.say("| --- | --- | --- | --- |")
        for label, values in (
            ("kill -> first command acknowledged in an affected room", first_ack),
            ("kill -> every affected room acknowledged", all_acked),
        ):
            s = summary(values)
            results.say(f"| {label} | {s['p50']:.2f} s | {s['max']:.2f} s | {s['n']} |")
        results.say("")
    finally:
        beating.cancel()
        await bus.close()
        system.stop()


async def throughput(root: Path, workers: int, seconds: float, inflight: int) -> dict[str, float]:
    system = System(root / f"throughput-{workers}")
    await system.start(actors=workers, edges=0)
    bus = await system.bus()
    commands = RoomCommands(bus.nc, attempt_timeout=5.0, deadline=30.0)
    await commands.start()  # as an edge: hears of partitions taken over
    beating = asyncio.create_task(beat(bus.nc))
    try:
        await bus.balanced([a.env["WORKER_ID"] for a in system.actors])
        rooms = list((await make_rooms(commands, 64)).items())
        latencies: list[float] = []
        stop_at = time.perf_counter() + seconds
        cycle = itertools.cycle(rooms)

        async def loop() -> None:
            while time.perf_counter() < stop_at:
                room_id, participant = next(cycle)
                sent = time.perf_counter()
                await commands.send(broadcast(room_id, participant))
                latencies.append(time.perf_counter() - sent)

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(inflight)))
        elapsed = time.perf_counter() - started
        s = summary([latency * 1000 for latency in latencies])
        return {"commands_per_s": len(latencies) / elapsed, "p50_ms": s["p50"], "p99_ms": s["p99"]}
    finally:
        beating.cancel()
        await bus.close()
        system.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--inflight", type=int, default=128)
    args = parser.parse_args()
    results = Results("failover", "python -m bench.failover " + " ".join(sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        await failover(Path(tmp), args.kills, results)
        results.say(
            f"## Command throughput ({args.inflight} commands in flight from one client process, "
            f"{args.seconds:.0f} s, 64 rooms)"
        )
        results.say("")
        results.say("| workers | commands/s | p50 | p99 |")
        results.say("| --- | --- | --- | --- |")
        for workers in (1, 3):
            row = await throughput(Path(tmp), workers, args.seconds, args.inflight)
            results.record(scenario="throughput", workers=workers, **row)
            results.say(
                f"| {workers} | {row['commands_per_s']:.0f} | {row['p50_ms']:.2f} ms "
                f"| {row['p99_ms']:.2f} ms |"
            )
    print(results.write().read_text())


if __name__ == "__main__":
    asyncio.run(main())
