"""The load generator: its own process, one asyncio loop on uvloop, picows
clients. Prints one JSON object per measurement on stdout.

    python -m bench.loadgen relay   --target ours --rate 2000 \\
        --http http://127.0.0.1:8787,http://127.0.0.1:8788
    python -m bench.loadgen relay   --target floor --ws ws://127.0.0.1:8799 --rate 2000
    python -m bench.loadgen relay   --target ours --http ... --message mix \\
        --deliveries-per-s 2000 --cpu edges=101,102 --cpu actors=103,104 --cpu nats=100
    python -m bench.loadgen fanout  --target ours --http http://127.0.0.1:8787 --size 50
    python -m bench.loadgen capacity --http http://127.0.0.1:8787 --count 10000 --edge-pid 1234
    python -m bench.loadgen joins   --http http://127.0.0.1:8787 --count 1000 --rooms 100

Sends are timed by sleeping to a schedule, never by spinning.
"""

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.client import BenchClient, Stats, connect, timestamped
from bench.common import CpuMeter, cpu_per_message, summary
from bench.traffic import MESSAGES, Traffic, deliveries_per_message


class Target:
    """Where clients connect: our service (HTTP join, then /ws) or the floor."""

    def __init__(self, kind: str, http_urls: list[str], ws_urls: list[str]) -> None:
        self.kind = kind
        self.http_urls = http_urls
        self.ws_urls = ws_urls or [u.replace("http", "ws", 1) for u in http_urls]
        self.http = httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200))

    async def new_room(self, size: int) -> str:
        if self.kind == "floor":
            return str(uuid.uuid4())
        response = await self.http.post(
            f"{self.http_urls[0]}/api/rooms", json={"name": "bench", "max_participants": size}
        )
        response.raise_for_status()
        room_id: str = response.json()["room_id"]
        return room_id

    async def url(self, room: str, index: int) -> str:
        ws = self.ws_urls[index % len(self.ws_urls)]
        if self.kind == "floor":
            return f"{ws}/ws?room={room}&pid={uuid.uuid4()}"
        http = self.http_urls[index % len(self.http_urls)]
        for attempt in range(3):  # a kept-alive connection the server just closed
            try:
                response = await self.http.post(
                    f"{http}/api/rooms/{room}/join", json={"participant_name": f"p{index}"}
                )
                break
            except (httpx.ReadError, httpx.RemoteProtocolError):
                if attempt == 2:
                    raise
        response.raise_for_status()
        return f"{ws}/ws?token={response.json()['token']}"

    async def close(self) -> None:
        await self.http.aclose()


async def open_clients(
    target: Target, rooms: int, size: int, stats: Stats, concurrency: int = 100
) -> list[list[BenchClient]]:
    """``rooms`` rooms of ``size`` clients each, spread over the edges, all welcomed."""
    gate = asyncio.Semaphore(concurrency)
    room_ids = [await target.new_room(size) for _ in range(rooms)]

    async def one(room: str, index: int) -> BenchClient:
        async with gate:
            client = await connect(await target.url(room, index), stats)
            await asyncio.wait_for(client.welcomed, 30)
            return client

    return [
        list(await asyncio.gather(*(one(room, r * size + i) for i in range(size))))
        for r, room in enumerate(room_ids)
    ]


async def send_at_rate(senders: list[BenchClient], rate: float, duration: float) -> int:
    """Send ``rate`` timestamped broadcasts per second in total, round robin over
    ``senders``, in small batches on a 1 ms schedule."""
    tick = 0.001
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    index = 0
    while (now := loop.time()) < start + duration:
        due = int((now - start) * rate) - sent
        for _ in range(max(0, due)):
            senders[index % len(senders)].send(timestamped())
            index += 1
            sent += 1
        await asyncio.sleep(tick)
    return sent


async def know_each_other(rooms: list[list[BenchClient]], stats: Stats) -> None:
    """Until every client knows its own id and every other member of its room
    (from its ``welcome`` and the ``join`` frames after it), at most 10 s: the
    targeted messages name peers as a client learnt them."""

    def strangers() -> int:
        return sum(
            1
            for room in rooms
            for c in room
            if not c.participant_id
            or c.peers != {o.participant_id for o in room} - {c.participant_id}
        )

    try:
        async with asyncio.timeout(10):
            while True:
                stats.membership.clear()
                if not strangers():
                    return
                await stats.membership.wait()
    except TimeoutError:
        raise TimeoutError(f"{strangers()} clients do not know their whole room") from None


async def send_traffic(traffic: Traffic, rate: float, duration: float) -> tuple[int, int]:
    """Send ``rate`` messages per second in total, in small batches on a 1 ms
    schedule (a burst goes out whole when its first message is due). Answers
    the messages sent and the deliveries they ask for."""
    tick = 0.001
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = expected = 0
    while (now := loop.time()) < start + duration:
        due = int((now - start) * rate)
        while sent < due:
            messages, deliveries = traffic.send_next()
            sent += messages
            expected += deliveries
        await asyncio.sleep(tick)
    return sent, expected


def cpu_role(spec: str) -> tuple[str, list[int]]:
    """``--cpu edges=12,13`` as ``("edges", [12, 13])``."""
    role, _, pids = spec.partition("=")
    try:
        numbers = [int(p) for p in pids.split(",")]
    except ValueError:
        numbers = []
    if not role or not numbers:
        raise argparse.ArgumentTypeError(f"expected ROLE=PID[,PID], got {spec!r}")
    return role, numbers


def cpu_roles(specs: list[tuple[str, list[int]]]) -> dict[str, list[int]]:
    """The processes of each role, summed over repeated ``--cpu`` options."""
    roles: dict[str, list[int]] = {}
    for role, pids in specs:
        roles.setdefault(role, []).extend(pids)
    return roles


async def relay(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    stats = Stats()
    rooms = await open_clients(target, args.rooms, args.size, stats)
    await know_each_other(rooms, stats)
    clients = [c for room in rooms for c in room]
    traffic = Traffic(args.message, rooms)
    per_message = deliveries_per_message(args.message, args.size)
    rate = args.deliveries_per_s / per_message if args.deliveries_per_s else args.rate
    await send_traffic(traffic, rate, args.warmup)
    await asyncio.sleep(0.5)
    meter = None
    if args.cpu:
        meter = CpuMeter({**cpu_roles(args.cpu), "loadgen": [os.getpid()]})
    stats.reset()
    stats.recording = True
    if meter is not None:
        meter.start()
    sent, expected = await send_traffic(traffic, rate, args.duration)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(args.drain):
            await stats.until_received(expected)  # the last deliveries
    cpu = {} if meter is None else cpu_per_message(meter.stop(), sent, expected, ("loadgen",))
    stats.recording = False
    cut = sum(1 for client in clients if client.closed)
    for client in clients:
        client.close()
    return {
        "scenario": "relay",
        "target": target.kind,
        "message": args.message,
        "rooms": args.rooms,
        "size": args.size,
        "edges": len(target.ws_urls),
        "rate": rate,
        "deliveries_per_s": rate * per_message,
        "sent": sent,
        "expected": expected,
        "received": stats.received,
        "errors": stats.errors,
        "clients_cut": cut,
        "latency_ms": _ms(stats.latencies),
        **({"offer_latency_ms": _ms(stats.offers)} if stats.offers else {}),
        **cpu,
    }


def _ms(latencies: list[float]) -> dict[str, float]:
    return {k: v * 1000 if k != "n" else v for k, v in summary(latencies).items()}


async def fanout(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    """One room; raise the send rate step by step until p99 passes the bound."""
    stats = Stats()
    [clients] = await open_clients(target, 1, args.size, stats)
    senders = clients[: min(5, len(clients))]
    steps = []
    best = 0.0
    for deliveries in args.steps:
        rate = deliveries / (args.size - 1)
        stats.reset()
        stats.recording = True
        sent = await send_at_rate(senders, rate, args.duration)
        await asyncio.sleep(0.5)
        stats.recording = False
        latency = summary(stats.latencies)
        step = {
            "offered_per_s": deliveries,
            "delivered": stats.received,
            "expected": sent * (args.size - 1),
            "p50_ms": latency["p50"] * 1000,
            "p99_ms": latency["p99"] * 1000,
        }
        steps.append(step)
        print(
            json.dumps(
                {"scenario": "fanout-step", "target": target.kind, "size": args.size, **step}
            ),
            file=sys.stderr,
        )
        if latency["p99"] * 1000 > args.p99_ms or stats.received < 0.99 * sent * (args.size - 1):
            break
        best = max(best, sent * (args.size - 1) / args.duration)
        await asyncio.sleep(0.5)
    for client in clients:
        client.close()
    return {
        "scenario": "fanout",
        "target": target.kind,
        "size": args.size,
        "max_deliveries_per_s": best,
        "p99_bound_ms": args.p99_ms,
        "steps": steps,
    }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def capacity(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    stats = Stats()
    before = rss_kib(args.edge_pid)
    started = time.perf_counter()
    per_room = args.size
    rooms = await open_clients(target, args.count // per_room, per_room, stats, concurrency=200)
    opened = time.perf_counter() - started
    clients = [c for room in rooms for c in room]
    await asyncio.sleep(2)
    after = rss_kib(args.edge_pid)
    await asyncio.sleep(args.hold)
    alive = sum(1 for c in clients if not c.closed)
    for client in clients:
        client.close()
    return {
        "scenario": "capacity",
        "connections": len(clients),
        "open_seconds": opened,
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "kib_per_connection": (after - before) / max(1, len(clients)),
        "held_seconds": args.hold,
        "alive_after_hold": alive,
    }


async def joins(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    """Participants join their rooms (WebSocket connect, Join, welcome) as fast
    as possible, or paced at ``--join-rate`` per second. Their tokens are fetched
    over HTTP first, untimed: the HTTP client would otherwise be what is measured."""
    stats = Stats()
    per_room = args.count // args.rooms
    room_ids = [await target.new_room(per_room) for _ in range(args.rooms)]
    gate = asyncio.Semaphore(args.concurrency)

    async def token_url(index: int) -> str:
        async with gate:
            return await target.url(room_ids[index % args.rooms], index)

    urls = await asyncio.gather(*(token_url(i) for i in range(args.count)))
    times: list[float] = []
    errors = 0
    clients: list[BenchClient] = []

    async def one(url: str) -> None:
        nonlocal errors
        async with gate:
            started = time.perf_counter()
            try:
                client = await connect(url, stats)
                clients.append(client)
                await asyncio.wait_for(client.welcomed, 30)
                times.append(time.perf_counter() - started)
            except Exception:
                errors += 1

    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for index, url in enumerate(urls):
        if args.join_rate:
            await asyncio.sleep(max(0.0, start + index / args.join_rate - loop.time()))
        tasks.append(asyncio.create_task(one(url)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    for client in clients:
        client.close()
    return {
        "scenario": "joins",
        "count": args.count,
        "rooms": args.rooms,
        "rate": args.join_rate or "max",
        "joins_per_s": args.count / elapsed,
        "errors": errors + stats.errors,
        "join_to_welcome_ms": {k: v * 1000 if k != "n" else v for k, v in summary(times).items()},
    }


SCENARIOS = {"relay": relay, "fanout": fanout, "capacity": capacity, "joins": joins}


async def main_async(args: argparse.Namespace) -> None:
    target = Target(
        args.target,
        [u for u in args.http.split(",") if u],
        [u for u in args.ws.split(",") if u],
    )
    try:
        result = await SCENARIOS[args.scenario](args, target)
    finally:
        await target.close()
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--target", choices=("ours", "floor"), default="ours")
    parser.add_argument("--http", default="", help="edge base URLs, comma-separated")
    parser.add_argument("--ws", default="", help="WebSocket base URLs (the floor)")
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--size", type=int, default=5)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0, help="relay: seconds before measuring")
    parser.add_argument(
        "--message",
        choices=MESSAGES,
        default="bench",
        help="relay: what is sent (docs/benchmarks.md)",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=1.0,
        help="relay: seconds to wait for the last deliveries after the last send",
    )
    parser.add_argument(
        "--deliveries-per-s",
        type=float,
        default=0.0,
        help="relay: offered deliveries per second (sets the message rate; 0: use --rate)",
    )
    parser.add_argument(
        "--cpu",
        type=cpu_role,
        action="append",
        default=[],
        metavar="ROLE=PID[,PID]",
        help="relay: report CPU per message of these processes (repeat per role)",
    )
    parser.add_argument(
        "--steps",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[5000, 10000, 20000, 40000, 60000, 80000],
    )
    parser.add_argument("--p99-ms", type=float, default=50.0)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--join-rate", type=float, default=0.0, help="0: as fast as possible")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--hold", type=float, default=60.0)
    parser.add_argument("--edge-pid", type=int, default=0)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
