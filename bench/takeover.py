"""Takeover with many stored rooms: ``--active`` rooms with a participant and
``--idle`` rooms without, three workers; SIGKILL the worker owning the most
partitions and time until every affected active room acknowledged a command.
What grows with the idle rooms is the takeover's reading; what the issue asks
is that it grow with the active ones only.

    .venv/bin/python -m bench.takeover [--active 2000] [--idle 8000] [--kills 3]
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.common import summary
from bench.failover import acknowledged, beat, create_room, join
from bus_schema import ids, subjects
from edge.commands import RoomCommands
from tests.harness import System


async def create(commands: RoomCommands, active: bool) -> tuple[str, str | None]:
    room_id = ids.new_id()
    await commands.send(create_room(room_id, empty_timeout=0, departure_timeout=0))
    if not active:
        return room_id, None
    participant = ids.new_id()
    await commands.send(join(room_id, participant))
    return room_id, participant


async def run(active: int, idle: int, kills: int) -> list[float]:
    system = System(Path(tempfile.mkdtemp(prefix="takeover-")), extra_env={"LOG_LEVEL": "WARNING"})
    await system.start(actors=3, edges=0)
    bus = await system.bus()
    commands = RoomCommands(bus.nc, attempt_timeout=5.0, deadline=60.0)
    await commands.start()  # as an edge: hears of partitions taken over
    beating = asyncio.create_task(beat(bus.nc))
    gate = asyncio.Semaphore(64)

    async def one(with_participant: bool) -> tuple[str, str | None]:
        async with gate:
            return await create(commands, with_participant)

    try:
        made = await asyncio.gather(*(one(i < active) for i in range(active + idle)))
        rooms = {room: who for room, who in made if who is not None}
        times: list[float] = []
        for kill in range(kills):
            live = [a.env["WORKER_ID"] for a in system.actors if a.alive()]
            owned = await bus.balanced(live)
            victim = max(owned, key=lambda w: len(owned[w]))
            affected = [r for r in rooms if subjects.partition_of(r) in owned[victim]]
            started = time.perf_counter()
            system.actor(victim).kill()
            done = await asyncio.gather(*(acknowledged(commands, r, rooms[r]) for r in affected))
            times.append(max(done) - started)
            print(f"kill {kill}: {len(affected)} active rooms, all acked after {times[-1]:.2f} s")
            system.start_actor()
        return times
    finally:
        beating.cancel()
        await bus.close()
        system.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--active", type=int, default=2000)
    parser.add_argument("--idle", type=int, default=8000)
    parser.add_argument("--kills", type=int, default=3)
    args = parser.parse_args()
    times = asyncio.run(run(args.active, args.idle, args.kills))
    print(f"p50 {summary(times)['p50']:.2f} s, max {max(times):.2f} s")


if __name__ == "__main__":
    main()
