"""The system the nemesis works on: 3 nats-server nodes with JetStream (KV at
3 replicas), 3 actor workers, 3 edges, 2 webhook dispatchers with a local
receiver, and the Calls stand-in, all on loopback.

Every way to NATS goes through a `Link` the nemesis holds: each process has
one link per node (its ``NATS_URL`` lists its three links, so it reconnects to
another node as it would in production), and each node reaches each other
node's route port through a link of that pair. The nodes advertise no address
of their own, neither to clients nor for routes, so nothing bypasses a link.
"""

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from signaling.cluster import Child, Edge, free_port
from signaling.natsserver import NatsServer
from tests.harness import System
from tests.links import Link
from tests.system.test_webhooks import FAST, Receiver

NODES = 3
WORKERS = 3
EDGES = 3
DISPATCHERS = 2

READY = {
    "worker": "registered (lease TTL",
    "edge": "Application startup complete",
    "dispatcher": "delivering to",
}
"""What each role logs once it serves again after a restart."""

ENV = {
    "KV_REPLICAS": "3",
    "RESUME_GRACE": "8",
    "EDGE_TIMEOUT": "3",
    "DRAIN_DELAY": "0.5",
    "LOG_LEVEL": "INFO",
}
"""Settings of every role (the grace is short so that ghosts show in a run)."""


@dataclass
class Role:
    """One process of a role, and its links to the three nodes."""

    kind: str  # worker, edge, dispatcher
    child: Child
    links: list[Link]
    stopped: bool = False
    """Paused (SIGSTOP) by the nemesis."""
    started_marks: int = 0

    @property
    def name(self) -> str:
        return (
            self.child.env.get("WORKER_ID")
            or self.child.env.get("EDGE_ID")
            or (self.child.env["DISPATCHER_ID"])
        )

    def alive(self) -> bool:
        return self.child.alive()

    def signal(self, sig: signal.Signals) -> None:
        if self.child.alive():
            os.kill(self.child.pid, sig)


@dataclass
class Node:
    index: int
    server: NatsServer
    client_port: int
    routes_in: list[Link] = field(default_factory=list)
    """The links other nodes reach this node's route port through."""
    routes_out: list[Link] = field(default_factory=list)
    stopped: bool = False

    @property
    def name(self) -> str:
        return f"nats-{self.index}"

    def alive(self) -> bool:
        process = self.server.process
        return process is not None and process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.server.process is not None
            os.kill(self.server.process.pid, sig)

    def links(self) -> list[Link]:
        return [*self.routes_in, *self.routes_out]


class World:
    def __init__(self, root: Path) -> None:
        self.system = System(root, extra_env=dict(ENV))
        self.receiver = Receiver()
        self.nodes: list[Node] = []
        self.roles: list[Role] = []
        self._all_links: list[Link] = []
        self.unclean_stops: list[str] = []
        """Processes that did not exit 0 on SIGTERM."""

    @property
    def workers(self) -> list[Role]:
        return [r for r in self.roles if r.kind == "worker"]

    @property
    def edges(self) -> list[Role]:
        return [r for r in self.roles if r.kind == "edge"]

    @property
    def dispatchers(self) -> list[Role]:
        return [r for r in self.roles if r.kind == "dispatcher"]

    def edge_urls(self) -> list[str]:
        return [edge.child.url for edge in self.edges if isinstance(edge.child, Edge)]

    async def _link(self, upstream: int) -> Link:
        link = await Link(upstream).start()
        self._all_links.append(link)
        return link

    async def start(self) -> None:
        await self.receiver.start()
        system = self.system
        client_ports = [free_port() for _ in range(NODES)]
        route_ports = [free_port() for _ in range(NODES)]
        refused = free_port()  # nothing listens there: gossiped routes go nowhere
        pair: dict[tuple[int, int], Link] = {}
        for i in range(NODES):
            for j in range(NODES):
                if i != j:
                    pair[i, j] = await self._link(route_ports[j])
        for i in range(NODES):
            server = NatsServer(
                data_dir=system.root / f"nats-{i}",
                port=client_ports[i],
                name=f"n{i}",
                cluster_name="signaling",
                cluster_port=route_ports[i],
                routes=tuple(f"nats://127.0.0.1:{pair[i, j].port}" for j in range(NODES) if j != i),
                route_advertise=f"127.0.0.1:{refused}",
                client_advertise=False,
                route_password=system.route_password,
                log_file=system.logs_dir / f"nats-{i}.log",
                users=system.users,
            )
            node = Node(i, server, client_ports[i])
            node.routes_out = [pair[i, j] for j in range(NODES) if j != i]
            node.routes_in = [pair[j, i] for j in range(NODES) if j != i]
            self.nodes.append(node)
        system.nodes = [node.server for node in self.nodes]
        await asyncio.gather(*(asyncio.to_thread(n.server.start) for n in self.nodes))
        for _ in range(WORKERS):
            await self.add("worker")
        await system.wait_actors_ready(timeout=60)
        self.calls_env = system.start_fake_calls()
        for _ in range(EDGES):
            await self.add("edge")
        for _ in range(DISPATCHERS):
            await self.add("dispatcher")
        for edge in self.edges:
            assert isinstance(edge.child, Edge)
            await asyncio.to_thread(system.wait_edge_ready, edge.child, 60)

    async def add(self, kind: str) -> Role:
        links = [await self._link(node.client_port) for node in self.nodes]
        nats_url = ",".join(f"nats://127.0.0.1:{link.port}" for link in links)
        system = self.system
        child: Child
        if kind == "worker":
            child = system.start_actor(NATS_URL=nats_url)
        elif kind == "edge":
            child = system.start_edge(NATS_URL=nats_url, **self.calls_env)
        else:
            child = system.start_webhooks(NATS_URL=nats_url, WEBHOOK_URL=self.receiver.url, **FAST)
        role = Role(kind, child, links)
        self.roles.append(role)
        return role

    def restart(self, role: Role) -> None:
        """The same process again (same id, same port), after it exited."""
        assert not role.child.alive()
        role.started_marks = role.child.log().count(READY[role.kind])
        role.child.start()

    async def ready(self, role: Role, timeout: float = 60.0) -> None:
        """Until a restarted process says it is ready again."""
        marker = READY[role.kind]
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while role.child.log().count(marker) <= role.started_marks:
            if loop.time() > give_up or not role.child.alive():
                raise RuntimeError(f"{role.name} did not come back:\n{role.child.log()[-3000:]}")
            await asyncio.sleep(0.1)

    async def node_ready(self, node: Node, timeout: float = 60.0) -> None:
        """Until the node is healthy, its JetStream current."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    answer = await http.get(f"{node.server.monitor_url}/healthz")
                    if answer.status_code == 200:
                        return
                if loop.time() > give_up:
                    raise RuntimeError(f"{node.name} is not healthy again")
                await asyncio.sleep(0.2)

    def restart_node(self, node: Node) -> None:
        node.server.start()

    def heal(self) -> None:
        """Every link back to normal, every paused process resumed."""
        for link in self._all_links:
            link.release()
            link.delay = 0.0
        for role in self.roles:
            if role.stopped:
                role.signal(signal.SIGCONT)
                role.stopped = False
        for node in self.nodes:
            if node.stopped:
                node.signal(signal.SIGCONT)
                node.stopped = False

    async def stop(self) -> None:
        self.heal()
        await asyncio.to_thread(self.system.stop)
        for link in self._all_links:
            with contextlib.suppress(Exception):
                await link.close()
        await self.receiver.stop()
