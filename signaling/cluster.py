"""`LocalCluster`: the one place that starts a local system's processes.

A nats-server (or a cluster of them, routes authenticated with a password,
optionally over TLS), room actor workers, edges, webhook dispatchers and the
Calls stand-in, each on free loopback ports, each role with its own NATS user
(``nats_auth.conf``), its log file and its environment. ``signaling dev`` and
the tests (``tests/harness.py``) both start their processes here.

The roles are started as ``python -m <package>`` children configured by
environment variables alone, so the launcher imports none of them: it knows
their settings by name only.
"""

import contextlib
import functools
import os
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from runtime.config import NatsTls
from signaling.natsserver import NatsServer, NatsUsers, ServerTls, output_to, terminate, until


def free_port() -> int:
    """A loopback port nobody listens on right now, below the kernel's range
    of ephemeral ports: a port from that range can be taken, between now and
    the moment our process listens on it, as the source port of any outgoing
    connection (a nats-server node soliciting its routes, say), and the
    process then fails to start. Not one this process handed out before."""
    low = _ephemeral_low()
    for _ in range(200):
        port = _PORTS_FROM + secrets.randbelow(low - _PORTS_FROM)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        chosen: int = probe.getsockname()[1]
        return chosen


_PORTS_FROM = 10_000
_handed_out: set[int] = set()


@functools.cache
def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; else IANA's)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low = int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 49152
    return max(low, _PORTS_FROM + 1000)


@dataclass
class Child:
    """A ``python -m <module>`` child process of this interpreter, with ``env``
    added to ours, writing to its log file (without one, to our terminal)."""

    module: str
    env: dict[str, str]
    log_file: Path | None = None
    args: tuple[str, ...] = ()
    process: "subprocess.Popen[bytes] | None" = field(default=None, init=False)

    def start(self) -> "Child":
        with output_to(self.log_file) as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
        assert self.process is not None
        return terminate(self.process, timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def log(self) -> str:
        if self.log_file is None or not self.log_file.exists():
            return ""
        return self.log_file.read_text(errors="replace")


@dataclass
class Edge(Child):
    """An edge child and the address it serves HTTP and WebSockets on."""

    host: str = "127.0.0.1"
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"


def tls_env(tls: NatsTls | None) -> dict[str, str]:
    """The NATS_TLS_* variables that give a process ``tls``."""
    if tls is None:
        return {}
    env = {"NATS_TLS_FIRST": "on" if tls.first else "off"}
    for name, value in (
        ("NATS_TLS_CA", tls.ca_file),
        ("NATS_TLS_CERT", tls.cert_file),
        ("NATS_TLS_KEY", tls.key_file),
    ):
        if value is not None:
            env[name] = value
    return env


def _edge_ready(url: str) -> bool | None:
    try:
        return httpx.get(f"{url}/ready", timeout=1.0).status_code == 200 or None
    except httpx.HTTPError:
        return None


def _listening(port: int) -> bool | None:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0 or None


@dataclass
class LocalCluster:
    """Every process of one local system; `stop` ends them in reverse order."""

    root: Path
    """JetStream folders (``nats/``, ``nats-<i>/``) and, by default, the logs."""
    env: dict[str, str] = field(default_factory=dict)
    """What every role gets besides NATS_URL, its NATS user and its id
    (JWT_SECRET, LOG_*, limits...): set before starting the roles."""
    log_dir: Path | None = None
    """Where logs go (default: ``root``)."""
    role_logs: bool = True
    """Roles write ``<log_dir>/<id>.log``; False: they write to our terminal."""
    name_prefix: str = ""
    """Before every process id (``dev-`` gives ``dev-edge-0``)."""
    users: NatsUsers = field(default_factory=NatsUsers.generate)
    """The same NATS accounts and permissions as production (nats_auth.conf)."""
    route_password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    """What cluster nodes authenticate their routes with (as nats.conf)."""
    server_tls: ServerTls | None = None
    """TLS on every node's client port (then give ``client_tls``)."""
    route_tls: ServerTls | None = None
    """TLS on the routes between nodes."""
    client_tls: NatsTls | None = None
    """What every role trusts and presents, as NATS_TLS_*."""
    nodes: list[NatsServer] = field(default_factory=list)
    """Every nats-server node of the system (one unless `start_cluster`)."""
    strays: list[NatsServer] = field(default_factory=list)
    """Servers that are not the system's, started by `stray_node`."""
    actors: list[Child] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    dispatchers: list[Child] = field(default_factory=list)
    helpers: list[Child] = field(default_factory=list)
    """Processes the roles depend on (the Calls stand-in)."""
    _started: list[Child] = field(default_factory=list, repr=False)
    _counters: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)

    @property
    def logs_dir(self) -> Path:
        return self.log_dir or self.root

    @property
    def nats(self) -> NatsServer:
        """The first (or only) nats-server node."""
        if not self.nodes:
            raise RuntimeError("no nats-server started yet")
        return self.nodes[0]

    @property
    def nats_url(self) -> str:
        """Every node's client URL, comma-separated (as NATS_URL)."""
        return ",".join(node.url for node in self.nodes)

    # --- nats-server ------------------------------------------------------------

    def start_nats(self, port: int = -1, monitor_port: int = -1) -> NatsServer:
        """One nats-server on ``root/nats`` (again on the same JetStream folder
        when called after a stop)."""
        node = NatsServer(
            data_dir=self.root / "nats",
            port=port,
            monitor_port=monitor_port,
            log_file=self.logs_dir / "nats-server.log",
            users=self.users,
            tls=self.server_tls,
        )
        self.nodes = [node]
        return node.start()

    def start_cluster(self, size: int = 3) -> None:
        """A nats-server cluster on loopback, with fixed ports so a node can be
        restarted where it was."""
        cluster_ports = [free_port() for _ in range(size)]
        routes = tuple(f"nats://127.0.0.1:{port}" for port in cluster_ports)
        self.nodes = [
            NatsServer(
                data_dir=self.root / f"nats-{i}",
                port=free_port(),
                name=f"n{i}",
                cluster_name="signaling",
                cluster_port=cluster_ports[i],
                routes=tuple(r for j, r in enumerate(routes) if j != i),
                route_password=self.route_password,
                log_file=self.logs_dir / f"nats-{i}.log",
                users=self.users,
                tls=self.server_tls,
                cluster_tls=self.route_tls,
            )
            for i in range(size)
        ]
        for node in self.nodes:
            node.start()

    def stray_node(self, name: str, **options: Any) -> NatsServer:
        """A nats-server that is not ours, soliciting a route to the first
        node's cluster port as someone on the NATS network could (``options``:
        its route password, TLS...). Stopped with the system."""
        seed = self.nats
        assert seed.cluster_port is not None, "start_cluster first"
        stray = NatsServer(
            data_dir=self.root / name,
            name=name,
            cluster_name=seed.cluster_name,
            cluster_port=free_port(),
            routes=(f"nats://127.0.0.1:{seed.cluster_port}",),
            log_file=self.logs_dir / f"{name}.log",
            **options,
        )
        self.strays.append(stray)
        return stray.start()

    # --- the roles --------------------------------------------------------------

    def _name(self, kind: str) -> str:
        number = self._counters.get(kind, 0)
        self._counters[kind] = number + 1
        return f"{self.name_prefix}{kind}-{number}"

    def role_env(self, role: str, env: dict[str, str]) -> dict[str, str]:
        """A role's environment: the system's, its NATS user, then ``env``."""
        return {
            "NATS_URL": self.nats_url,
            **tls_env(self.client_tls),
            **self.env,
            **self.users.client_env(role),
            **env,
        }

    def _start(self, child: Child) -> None:
        self._started.append(child.start())

    def _role_log(self, name: str) -> Path | None:
        return self.logs_dir / f"{name}.log" if self.role_logs else None

    def start_actor(self, **env: str) -> Child:
        """A room actor worker (its metrics on a free port)."""
        name = self._name("actors")
        own = {"WORKER_ID": name, "METRICS_PORT": str(free_port()), **env}
        actor = Child("room_actors", self.role_env("actors", own), self._role_log(name))
        self._start(actor)
        self.actors.append(actor)
        return actor

    def start_webhooks(self, **env: str) -> Child:
        """A webhook dispatcher (it needs WEBHOOK_URL and WEBHOOK_SECRET; its
        metrics on a free port)."""
        name = self._name("webhooks")
        own = {"DISPATCHER_ID": name, "METRICS_PORT": str(free_port()), **env}
        dispatcher = Child("webhooks", self.role_env("webhooks", own), self._role_log(name))
        self._start(dispatcher)
        self.dispatchers.append(dispatcher)
        return dispatcher

    def start_edge(self, *, host: str = "127.0.0.1", port: int | None = None, **env: str) -> Edge:
        """An edge on ``host:port`` (a free port by default); see `wait_edge_ready`."""
        name = self._name("edge")
        port = port or free_port()
        own = {"EDGE_HOST": host, "EDGE_PORT": str(port), "EDGE_ID": name, **env}
        edge = Edge("edge", self.role_env("edge", own), self._role_log(name), host=host, port=port)
        self._start(edge)
        self.edges.append(edge)
        return edge

    def wait_edge_ready(self, edge: Edge, timeout: float = 30.0) -> None:
        """Until the edge answers ``/ready`` (it reached NATS and its buckets)."""
        try:
            until(
                lambda: _edge_ready(edge.url),
                process=edge.process,
                timeout=timeout,
                what=f"the edge on {edge.url}",
                interval=0.1,
            )
        except (RuntimeError, TimeoutError) as e:
            log = edge.log()
            raise type(e)(f"{e}:\n{log}" if log else str(e)) from None

    def start_fake_calls(self) -> dict[str, str]:
        """The Calls stand-in (``python -m tools.fakecalls``) on a free port, with
        fresh credentials; the edge settings that use it."""
        port = free_port()
        env = {
            "CLOUDFLARE_APP_ID": "dev-app",
            "CLOUDFLARE_APP_SECRET": secrets.token_urlsafe(32),
            "CALLS_API_URL": f"http://127.0.0.1:{port}/v1",
            "CLOUDFLARE_TURN_KEY_ID": "dev-turn-key",
            "CLOUDFLARE_TURN_KEY_API_TOKEN": secrets.token_urlsafe(32),
        }
        # --name=value: a secret may start with "-", which argparse would take for an option.
        args = (
            f"--port={port}",
            f"--app-id={env['CLOUDFLARE_APP_ID']}",
            f"--app-secret={env['CLOUDFLARE_APP_SECRET']}",
            f"--turn-key-id={env['CLOUDFLARE_TURN_KEY_ID']}",
            f"--turn-key-token={env['CLOUDFLARE_TURN_KEY_API_TOKEN']}",
        )
        helper = Child("tools.fakecalls", {}, self.logs_dir / "fake-calls.log", args)
        self._start(helper)
        self.helpers.append(helper)
        until(
            lambda: _listening(port), process=helper.process, timeout=15, what="the Calls stand-in"
        )
        return env

    # --- the whole system ---------------------------------------------------------

    def exited(self) -> Child | None:
        """A started process that is no longer running, if any."""
        return next((child for child in self._started if not child.alive()), None)

    def actor(self, worker_id: str) -> Child:
        return next(a for a in self.actors if a.env["WORKER_ID"] == worker_id)

    def logs(self) -> str:
        """Every role's log, each under its file name."""
        every = [*self.actors, *self.edges, *self.dispatchers]
        return "\n".join(f"--- {p.log_file.name}\n{p.log()}" for p in every if p.log_file)

    def stop(self) -> None:
        """Every process in the reverse order of its start (SIGTERM, SIGKILL
        after a deadline), then the strays and the nats-server nodes."""
        for child in reversed(self._started):
            if child.alive():
                with contextlib.suppress(OSError):
                    child.stop()
        for node in [*self.strays, *reversed(self.nodes)]:
            with contextlib.suppress(OSError):
                node.stop()
