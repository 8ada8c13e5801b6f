"""The standard benchmark set (``make bench``): our service and the floor, side
by side, on this machine.

Starts a system (nats-server, 2 actor workers, 2 edges) and the floor relay,
runs the load generator (its own process) through each scenario, then writes
``bench/results/standard.jsonl``, ``standard.md`` and ``latency.png``.

    .venv/bin/python -m bench.run [--quick]
    .venv/bin/python -m bench.run --sections messages --name messages  # one section
"""

import argparse
import asyncio
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, Results
from tests.harness import System, free_port

LOAD = [500, 1000, 2000, 4000]
MESSAGES = ["bench", "track-state", "session", "offer", "mix"]
"""The real-messages section's kinds (bench.traffic), the custom broadcast first."""
SECTIONS = ["relay", "messages", "fanout", "joins", "capacity"]


def loadgen(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"loadgen {args[0]} failed:\n{result.stderr[-3000:]}")
    time.sleep(2)  # let the system settle (leaves of the clients just closed) before the next
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def start_floor() -> tuple["subprocess.Popen[bytes]", str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.floor", "--port", str(port)])
    deadline = time.monotonic() + 20
    import socket

    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process, f"ws://127.0.0.1:{port}"
        time.sleep(0.05)
    raise TimeoutError("the floor did not start")


def relay_section(results: Results, http: str, floor: str, quick: bool) -> list[dict[str, Any]]:
    rows = []
    for rate in LOAD[:2] if quick else LOAD:
        duration = "2" if quick else "5"
        common = ["--rooms", "20", "--size", "5", "--rate", str(rate), "--duration", duration]
        ours = loadgen("relay", "--target", "ours", "--http", http, *common)
        base = loadgen("relay", "--target", "floor", "--ws", floor, *common)
        for row in (ours, base):
            results.record(**row)
        rows.append({"rate": rate, "ours": ours, "floor": base})
    results.say("## Relay latency (20 rooms x 5 participants, broadcasts, our 2 edges)")
    results.say("")
    results.say(
        "| messages/s | deliveries/s | ours p50 / p90 / p99 / max (ms) "
        "| floor p50 / p99 (ms) | p50 ratio | loss |"
    )
    results.say("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        o, f = row["ours"]["latency_ms"], row["floor"]["latency_ms"]
        lost = row["ours"]["expected"] - row["ours"]["received"]
        ours = f"{o['p50']:.2f} / {o['p90']:.2f} / {o['p99']:.2f} / {o['max']:.1f}"
        ratio = o["p50"] / f["p50"]
        results.say(
            f"| {row['rate']} | {row['rate'] * 4} | {ours} | {f['p50']:.2f} / {f['p99']:.2f} "
            f"| {ratio:.1f}x | {lost} |"
        )
    results.say("")
    return rows


def cpu_args(system: System) -> list[str]:
    """``--cpu`` options for the load generator: every process of ours by role."""
    nats = system.nats.process
    assert nats is not None
    return [
        "--cpu", "edges=" + ",".join(str(edge.pid) for edge in system.edges),
        "--cpu", "actors=" + ",".join(str(actor.pid) for actor in system.actors),
        "--cpu", f"nats={nats.pid}",
    ]  # fmt: skip


def messages_section(
    results: Results, system: System, floor: "subprocess.Popen[bytes]", floor_url: str, quick: bool
) -> None:
    """The old service's message types (bench.traffic) at 2,000 deliveries/s on
    ours and on the floor, with latency and the CPU each role spends per message."""
    http = ",".join(edge.url for edge in system.edges)
    rows = []
    for message in MESSAGES:
        common = [
            "--message", message, "--rooms", "10", "--size", "5",
            "--deliveries-per-s", "2000", "--duration", "2" if quick else "5",
        ]  # fmt: skip
        ours = loadgen("relay", "--target", "ours", "--http", http, *common, *cpu_args(system))
        base = loadgen(
            "relay", "--target", "floor", "--ws", floor_url, *common, "--cpu", f"floor={floor.pid}"
        )
        results.record(**ours)
        results.record(**base)
        rows.append((message, ours, base))
    edges = len(system.edges)
    results.say(
        f"## Real messages (10 rooms x 5 participants, 2,000 deliveries/s, our {edges} edge(s))"
    )
    results.say("")
    results.say(
        "| message | messages/s | ours p50 / p99 (ms) | floor p50 / p99 (ms) "
        "| ours received / expected | floor received / expected | errors ours / floor |"
    )
    results.say("| --- | --- | --- | --- | --- | --- | --- |")
    for message, o, f in rows:
        ol, fl = o["latency_ms"], f["latency_ms"]
        results.say(
            f"| {message} | {o['rate']:.0f} | {ol['p50']:.2f} / {ol['p99']:.2f} "
            f"| {fl['p50']:.2f} / {fl['p99']:.2f} | {o['received']} / {o['expected']} "
            f"| {f['received']} / {f['expected']} | {o['errors']} / {f['errors']} |"
        )
        if "offer_latency_ms" in o and "offer_latency_ms" in f:
            oo, fo = o["offer_latency_ms"], f["offer_latency_ms"]
            results.say(
                f"| {message}: the `offer` frames only | | {oo['p50']:.2f} / {oo['p99']:.2f} "
                f"| {fo['p50']:.2f} / {fo['p99']:.2f} | | | |"
            )
    results.say("")
    results.say(
        "CPU per message sent, µs (user + system time of each process over the "
        "measurement, divided by the messages sent; per delivery: by the deliveries due)"
    )
    results.say("")
    results.say(
        "| message | edges | actors | nats-server | ours total | ours per delivery "
        "| edges per delivery | floor | floor per delivery |"
    )
    results.say("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for message, o, f in rows:
        per, delivery = o["cpu_us_per_message"], o["cpu_us_per_delivery"]
        results.say(
            f"| {message} | {per['edges']:.0f} | {per['actors']:.0f} | {per['nats']:.0f} "
            f"| {per['total']:.0f} | {delivery['total']:.0f} | {delivery['edges']:.0f} "
            f"| {f['cpu_us_per_message']['floor']:.0f} "
            f"| {f['cpu_us_per_delivery']['floor']:.0f} |"
        )
    results.say("")


def fanout_section(results: Results, http: str, floor: str, quick: bool) -> None:
    results.say("## Fan-out (one room, one edge; the most deliveries/s with p99 <= 50 ms)")
    results.say("")
    results.say("| room size | ours deliveries/s | floor deliveries/s |")
    results.say("| --- | --- | --- |")
    steps = "5000,10000" if quick else "10000,20000,30000,40000,50000,60000,80000,100000"
    for size in (50, 200):
        common = ["--size", str(size), "--duration", "2" if quick else "3", "--steps", steps]
        ours = loadgen("fanout", "--target", "ours", "--http", http, *common)
        base = loadgen("fanout", "--target", "floor", "--ws", floor, *common)
        results.record(**ours)
        results.record(**base)
        results.say(
            f"| {size} | {ours['max_deliveries_per_s']:.0f} | {base['max_deliveries_per_s']:.0f} |"
        )
    results.say("")


def capacity_section(results: Results, system: System, quick: bool) -> None:
    count = "1000" if quick else "10000"
    edge = system.edges[0]
    row = loadgen(
        "capacity", "--http", edge.url, "--count", count, "--size", "10",
        "--hold", "5" if quick else "60", "--edge-pid", str(edge.pid),
    )  # fmt: skip
    results.record(**row)
    results.say("## Capacity (idle WebSockets on one edge, rooms of 10)")
    results.say("")
    results.say(
        f"{row['connections']} connections opened in {row['open_seconds']:.1f} s; edge RSS "
        f"{row['rss_before_mib']:.0f} -> {row['rss_after_mib']:.0f} MiB, "
        f"{row['kib_per_connection']:.1f} KiB per connection; "
        f"{row['alive_after_hold']} still open after {row['held_seconds']:.0f} s."
    )
    results.say("")


def joins_section(results: Results, http: str, quick: bool) -> None:
    count = "200" if quick else "1000"
    rooms = "100" if not quick else "20"
    # Paced first, on a settled system: the storm's thousand leaves and its
    # garbage would otherwise land in the paced run's tail.
    paced = loadgen(
        "joins", "--http", http, "--count", count, "--rooms", rooms, "--join-rate", "100"
    )
    storm = loadgen(
        "joins", "--http", http, "--count", count, "--rooms", rooms, "--concurrency", "100"
    )
    results.record(**storm)
    results.record(**paced)
    results.say("## Joins (WebSocket connect to welcome; tokens fetched beforehand)")
    results.say("")
    results.say("| load | joins/s | join-to-welcome p50 / p99 (ms) | errors |")
    results.say("| --- | --- | --- | --- |")
    for label, row in (("as fast as possible (100 at a time)", storm), ("paced at 100/s", paced)):
        t = row["join_to_welcome_ms"]
        timing = f"{t['p50']:.1f} / {t['p99']:.1f}"
        results.say(f"| {label} | {row['joins_per_s']:.0f} | {timing} | {row['errors']} |")
    results.say("")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r["rate"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for who, style in (("ours", "-o"), ("floor", "--s")):
        for q, alpha in (("p50", 1.0), ("p99", 0.55)):
            ax.plot(
                rates,
                [r[who]["latency_ms"][q] for r in rows],
                style,
                alpha=alpha,
                label=f"{who} {q}",
            )
    ax.set_xlabel("offered load (broadcasts/s; 4 deliveries each)")
    ax.set_ylabel("one-way latency (ms)")
    ax.set_title("Relay latency: ours (2 edges, NATS, actors) vs floor (one process)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


async def run(
    quick: bool, sections: list[str], name: str, workers: int = 2, edges: int = 2
) -> Path:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    command = "python -m bench.run" + (" --quick" if quick else "")
    if sections != SECTIONS:
        command += " --sections " + ",".join(sections)
    if (workers, edges) != (2, 2):
        command += f" --workers {workers} --edges {edges}"
    results = Results(name, command)
    root = Path(tempfile.mkdtemp(prefix="bench-"))
    system = System(root, extra_env={"LOG_LEVEL": "WARNING"})
    floor, floor_url = start_floor()
    rows: list[dict[str, Any]] = []
    try:
        await system.start(actors=workers, edges=edges)
        results.say(f"Topology: {workers} actor worker(s), {edges} edge(s), one nats-server.")
        results.say("")
        http = ",".join(edge.url for edge in system.edges)
        if "relay" in sections:
            rows = relay_section(results, http, floor_url, quick)
        if "messages" in sections:
            messages_section(results, system, floor, floor_url, quick)
        if "fanout" in sections:
            fanout_section(results, system.edges[0].url, floor_url, quick)
        if "joins" in sections:
            joins_section(results, http, quick)
        if "capacity" in sections:
            capacity_section(results, system, quick)
    finally:
        floor.terminate()
        system.stop()
        shutil.rmtree(root, ignore_errors=True)
    if rows:
        png = "latency.png" if name == "standard" else f"{name}-latency.png"
        plot(rows, RESULTS / png)
        results.say(f"![latency]({png})")
    return results.write()


def sections(text: str) -> list[str]:
    """``--sections``: known names, run in the standard order."""
    chosen = text.split(",")
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown sections {sorted(unknown)}; of {SECTIONS}")
    return [x for x in SECTIONS if x in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a minute or two")
    parser.add_argument(
        "--sections",
        type=sections,
        default=SECTIONS,
        help=f"comma-separated, of {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--name", default="standard", help="results file name in bench/results (without suffix)"
    )
    parser.add_argument("--workers", type=int, default=2, help="actor workers (default 2)")
    parser.add_argument("--edges", type=int, default=2, help="edges (default 2)")
    args = parser.parse_args()
    written = asyncio.run(run(args.quick, args.sections, args.name, args.workers, args.edges))
    print(written.read_text())


if __name__ == "__main__":
    main()
