"""Dead-edge detection: SIGKILL an edge and time until the others see `leave`.

Two edges and one worker. Each round puts an observer on edge A and five
participants on edge B, kills edge B with SIGKILL, and times the kill -> the
observer's fifth ``leave``. A fresh edge replaces B for the next round.

    .venv/bin/python -m bench.liveness [--rounds 10]
"""

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Results, summary
from tests.harness import Api, System, enter


async def measure(root: Path, rounds: int, results: Results) -> list[float]:
    system = System(root)
    await system.start(edges=2)
    api = Api(system.edges[0].url)
    times = []
    try:
        for round_ in range(rounds):
            victim = system.edges[-1]
            room_id = await api.create_room(f"liveness-{round_}")
            observer = await enter(api, system.edges[0].ws_url, room_id, "observer")
            for n in range(5):
                await enter(api, victim.ws_url, room_id, f"p{n}")
                await observer.recv_type("join")
            killed = time.perf_counter()
            victim.kill()
            for _ in range(5):
                await observer.recv_type("leave", timeout=30)
            elapsed = time.perf_counter() - killed
            times.append(elapsed)
            results.record(scenario="dead_edge_leave", round=round_, seconds=elapsed)
            await observer.client.close()
            edge = system.start_edge()
            await asyncio.to_thread(system.wait_edge_ready, edge)
    finally:
        await api.close()
        system.stop()
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    results = Results("liveness", "python -m bench.liveness " + " ".join(sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        times = await measure(Path(tmp), args.rounds, results)
    s = summary(times)
    results.say("## Dead edge -> leave (SIGKILL, HEARTBEAT_INTERVAL=1 s, EDGE_TIMEOUT=3 s)")
    results.say("")
    results.say("| measure | p50 | max | n |")
    results.say("| --- | --- | --- | --- |")
    results.say(
        f"| kill -> all 5 participants' leave seen by a client on another edge "
        f"| {s['p50']:.2f} s | {s['max']:.2f} s | {s['n']} |"
    )
    print(results.write().read_text())


if __name__ == "__main__":
    asyncio.run(main())
