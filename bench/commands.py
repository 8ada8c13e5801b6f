"""Room creations and joins per second one actor worker handles: commands sent
straight on NATS (as edges send them, many in flight), no HTTP or WebSocket in
the way, so the figure is the worker's own.

    .venv/bin/python -m bench.commands [--rooms 5000] [--joins 10000] [--in-flight 256]
"""

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS
from bench.failover import beat, create_room, join
from bus_schema import ids
from bus_schema.commands import Ack, CreateRoom, Join, Snapshot
from edge.commands import RoomCommands
from tests.harness import System


async def run(rooms: int, joins: int, in_flight: int) -> dict[str, float]:
    system = System(Path(tempfile.mkdtemp(prefix="commands-")), extra_env={"LOG_LEVEL": "WARNING"})
    await system.start(actors=1, edges=0)
    bus = await system.bus()
    beating = asyncio.create_task(beat(bus.nc))
    commands = RoomCommands(bus.nc, attempt_timeout=5.0, deadline=60.0)
    await commands.start()  # as an edge: hears of partitions taken over
    gate = asyncio.Semaphore(in_flight)
    errors = 0

    async def send(command: CreateRoom | Join, ok: type) -> None:
        nonlocal errors
        async with gate:
            reply = await commands.send(command)
        if not isinstance(reply, ok):
            errors += 1

    try:
        made = [ids.new_id() for _ in range(rooms)]
        started = time.perf_counter()
        size = joins // rooms + 1
        await asyncio.gather(
            *(send(create_room(room_id, max_participants=size), Ack) for room_id in made)
        )
        created = rooms / (time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.gather(
            *(send(join(made[n % rooms], ids.new_id(), f"c{n}"), Snapshot) for n in range(joins))
        )
        joined = joins / (time.perf_counter() - started)
        return {"creations_per_s": created, "joins_per_s": joined, "errors": errors}
    finally:
        beating.cancel()
        await bus.close()
        system.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=5000)
    parser.add_argument("--joins", type=int, default=10000)
    parser.add_argument("--in-flight", type=int, default=256)
    args = parser.parse_args()
    row = asyncio.run(run(args.rooms, args.joins, args.in_flight))
    line = json.dumps({"bench": "commands", **vars(args), **row})
    with (RESULTS / "commands.jsonl").open("a") as out:
        out.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
