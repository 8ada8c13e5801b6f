"""The nemesis: random faults from a seed, never more at once than the design
tolerates.

The schedule is drawn from the seed before the run starts (the same seed
gives the same schedule: which fault, on which process or node, when, for how
long); it is carried out against the running system, and each fault's real
window (from when it began to when everything it broke was restored) is
recorded for the invariants.

At most one fault per class at a time: one nats-server node of three, one
worker of three, one edge of three, one webhook dispatcher of two. Out of
scope: two nodes or two workers at once (no quorum, or no survivor to take
the rooms), faults between clients and edges other than the workload's own
drops, disk faults, clock jumps.
"""

import asyncio
import random
import signal
import time
from dataclasses import dataclass

from tests.chaos.world import Node, Role, World
from tests.links import Link

KINDS: dict[str, tuple[str, ...]] = {
    "node": ("kill", "term", "pause", "partition", "latency"),
    "worker": ("kill", "term", "pause", "cut", "hold", "hold_both", "latency"),
    "edge": ("kill", "term", "pause", "cut", "hold", "hold_both", "latency"),
    "dispatcher": ("kill", "term", "pause", "hold_both"),
}
TARGETS = {"node": 3, "worker": 3, "edge": 3, "dispatcher": 2}
GAP = {"node": 4.0, "worker": 2.0, "edge": 1.0, "dispatcher": 1.0}
"""Seconds a class rests after a fault before the next (a restarted node
catches up its streams; a restarted worker claims its share)."""


@dataclass(frozen=True)
class Planned:
    at: float
    """Seconds from the start of the run."""
    cls: str
    kind: str
    target: int
    seconds: float
    """How long the fault lasts (the downtime of a kill, a pause, a hold)."""
    latency: float = 0.0


@dataclass
class Window:
    planned: Planned
    began: float
    ended: float | None = None
    detail: str = ""
    edge_url: str = ""
    """For an edge's fault: the edge's base URL (what its clients connect to)."""

    @property
    def cls(self) -> str:
        return self.planned.cls

    def overlaps(self, start: float, end: float) -> bool:
        ended = self.ended if self.ended is not None else float("inf")
        return self.began <= end and start <= ended


def schedule(seed: int, seconds: float) -> list[Planned]:
    """The faults of a run of ``seconds``, drawn from ``seed``."""
    rng = random.Random(seed)
    free_at = dict.fromkeys(KINDS, 0.0)
    planned = []
    t = 3.0
    while True:
        t += rng.uniform(0.5, 3.0)
        if t > seconds - 8:
            return planned
        free = [cls for cls, at in free_at.items() if at <= t]
        if not free:
            continue
        cls = rng.choice(free)
        kind = rng.choice(KINDS[cls])
        duration = rng.uniform(1.0, 5.0) if kind != "cut" else 0.0
        latency = rng.uniform(0.02, 0.15) if kind == "latency" else 0.0
        fault = Planned(round(t, 2), cls, kind, rng.randrange(TARGETS[cls]), round(duration, 2))
        if latency:
            fault = Planned(fault.at, cls, kind, fault.target, fault.seconds, round(latency, 3))
        planned.append(fault)
        # Restarts take time beyond the planned downtime: a margin for them.
        free_at[cls] = t + duration + GAP[cls] + (6.0 if kind in ("kill", "term") else 0.0)


class Nemesis:
    def __init__(self, world: World, plan: list[Planned]) -> None:
        self.world = world
        self.plan = plan
        self.windows: list[Window] = []
        self.started = 0.0
        self._busy: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        self.started = time.monotonic()
        tasks = []
        for fault in self.plan:
            delay = self.started + fault.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            previous = self._busy.get(fault.cls)
            if previous is not None and not previous.done():
                await previous  # the class's last fault is not over yet
            task = asyncio.create_task(self._carry_out(fault))
            self._busy[fault.cls] = task
            tasks.append(task)
        await asyncio.gather(*tasks)

    async def _carry_out(self, fault: Planned) -> None:
        window = Window(fault, time.monotonic())
        self.windows.append(window)
        if fault.cls == "node":
            await self._node(self.world.nodes[fault.target], fault, window)
        else:
            roles = {
                "worker": self.world.workers,
                "edge": self.world.edges,
                "dispatcher": self.world.dispatchers,
            }[fault.cls]
            await self._role(roles[fault.target], fault, window)
        window.ended = time.monotonic()

    async def _role(self, role: Role, fault: Planned, window: Window) -> None:
        window.detail = role.name
        window.edge_url = getattr(role.child, "url", "")
        kind = fault.kind
        if kind in ("kill", "term"):
            if kind == "kill":
                await asyncio.to_thread(role.child.kill)
            else:
                code = await asyncio.to_thread(role.child.stop, 15.0)
                window.detail += f" exit {code}"
                if code != 0:
                    self.world.unclean_stops.append(f"{role.name} exited {code} on SIGTERM")
            await asyncio.sleep(fault.seconds)
            self.world.restart(role)
            await self.world.ready(role)
        elif kind == "pause":
            await _paused(role, fault.seconds)
        elif kind == "cut":
            for link in role.links:
                link.cut()
            await asyncio.sleep(0.2)
        elif kind in ("hold", "hold_both"):
            await _held(role.links, fault.seconds, both_ways=kind == "hold_both")
        elif kind == "latency":
            await _slowed(role.links, fault.seconds, fault.latency)

    async def _node(self, node: Node, fault: Planned, window: Window) -> None:
        window.detail = node.name
        kind = fault.kind
        if kind in ("kill", "term"):
            if kind == "kill":
                await asyncio.to_thread(node.server.kill)
            else:
                await asyncio.to_thread(node.server.stop)
            await asyncio.sleep(fault.seconds)
            await asyncio.to_thread(self.world.restart_node, node)
            await self.world.node_ready(node)
        elif kind == "pause":
            await _paused(node, fault.seconds)
            await self.world.node_ready(node)
        elif kind == "partition":
            # Cut off from the other two nodes (its clients stay connected to it).
            await _held(node.links(), fault.seconds, both_ways=True)
            await self.world.node_ready(node)
        elif kind == "latency":
            await _slowed(node.links(), fault.seconds, fault.latency)


async def _paused(target: Role | Node, seconds: float) -> None:
    """SIGSTOP, then SIGCONT ``seconds`` later."""
    target.signal(signal.SIGSTOP)
    target.stopped = True
    await asyncio.sleep(seconds)
    target.signal(signal.SIGCONT)
    target.stopped = False


async def _held(links: list[Link], seconds: float, *, both_ways: bool) -> None:
    for link in links:
        link.hold(both_ways=both_ways)
    await asyncio.sleep(seconds)
    for link in links:
        link.release()


async def _slowed(links: list[Link], seconds: float, latency: float) -> None:
    for link in links:
        link.delay = latency
    await asyncio.sleep(seconds)
    for link in links:
        link.delay = 0.0
