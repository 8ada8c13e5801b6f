"""Connecting to NATS the same way in every process."""

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import nats
import nats.errors
from nats.aio.client import Client

from runtime.config import NatsCredentials
from runtime.retry import Attempt, Backoff, Retry

log = logging.getLogger(__name__)
_T = TypeVar("_T")

Role = Literal["edge", "actors", "webhooks"]
_UNREACHABLE = (OSError, TimeoutError, nats.errors.NoServersError)


def inbox_prefix(role: Role) -> str:
    """Where a role's replies arrive: each role has its own prefix and
    ``nats_auth.conf`` lets it subscribe to that one only, so no role reads
    another's replies (KV reads, JetStream acks, status answers)."""
    return f"_INBOX_{role}"


def _options(servers: list[str], credentials: NatsCredentials | None) -> dict[str, Any]:
    """Authentication and TLS options for ``nats.connect``."""
    options: dict[str, Any] = {}
    if credentials is None:
        return options
    if credentials.user and credentials.password:
        options |= {"user": credentials.user, "password": credentials.password}
    if credentials.creds_file:
        options["user_credentials"] = credentials.creds_file
    if credentials.tls.enabled(servers):
        options |= {
            "tls": credentials.tls.context(),
            "tls_handshake_first": credentials.tls.first,
        }
    return options


async def connect(
    servers: list[str],
    *,
    name: str,
    role: Role,
    deadline: float = 30.0,
    on_reconnected: Callable[[], Awaitable[None]] | None = None,
    on_disconnected: Callable[[], Awaitable[None]] | None = None,
    credentials: NatsCredentials | None = None,
) -> Client:
    """Connect as ``role``, retrying the first connection until ``deadline``
    seconds passed; afterwards the client reconnects on its own, forever."""

    async def error_cb(error: Exception) -> None:
        # A lost or refused connection is the network's doing: no traceback.
        expected = isinstance(error, (OSError, TimeoutError, nats.errors.Error))
        log.warning(
            "nats: %s: %s", type(error).__name__, error, exc_info=None if expected else error
        )

    async def reconnected_cb() -> None:
        log.info("nats: reconnected")
        if on_reconnected is not None:
            await on_reconnected()

    async def disconnected_cb() -> None:
        log.info("nats: disconnected")
        if on_disconnected is not None:
            await on_disconnected()

    options = _options(servers, credentials)
    # nats-py shuffles its servers at every reconnect, so a client leaving a
    # node could land on the same one again (found: an edge leaving a node cut
    # off from the cluster went back to it twice, stayed cut off for 11 s and
    # lost its clients). The list is shuffled once, to spread processes over
    # the nodes, and then gone round in order: the next node is never the one
    # just left.
    order = random.sample(servers, len(servers))

    async def connecting(attempt: Attempt) -> Client:
        # nats-py retries a first connection forever when reconnecting is
        # allowed (max_reconnect_attempts=-1): the deadline is ours to keep.
        client = nats.connect(
            servers=order,
            dont_randomize=True,
            name=name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=2,
            ping_interval=5,
            max_outstanding_pings=3,
            error_cb=error_cb,
            reconnected_cb=reconnected_cb,
            disconnected_cb=disconnected_cb,
            inbox_prefix=inbox_prefix(role),
            **options,
        )
        return await asyncio.wait_for(client, attempt.timeout(deadline, least=0.1))

    # A server that is not up yet, or refuses: tried again until the deadline.
    policy = Retry(on=_UNREACHABLE, deadline=deadline, backoff=Backoff(0.1, cap=1.0))
    try:
        nc = await policy.run(
            connecting,
            on_retry=lambda e, _: log.info("nats: not reachable yet (%s), retrying", _name(e)),
        )
    except _UNREACHABLE as e:
        raise ConnectionError(f"cannot reach NATS at {', '.join(servers)}") from e
    if len(servers) > 1:
        _watchers.add(asyncio.create_task(keep_on_a_quorum(nc), name="nats-quorum"))
    return nc


_watchers: set["asyncio.Task[None]"] = set()
"""The `keep_on_a_quorum` tasks (kept referenced; each ends with its client)."""

QUORUM_PROBE = 1.0
"""Seconds between two probes of the connected node's JetStream (and each
probe's timeout)."""
QUORUM_MISSES = 3
"""Probes in a row the node must fail before the client moves to another."""


async def keep_on_a_quorum(nc: Client) -> None:
    """Move to another node when the connected one is cut off from the
    cluster (a partition: its connection stays up, but JetStream has no
    quorum there, and neither commands nor events reach the other nodes).

    Every `QUORUM_PROBE` seconds, ``$JS.API.INFO`` is asked of the node; after
    `QUORUM_MISSES` probes in a row without an answer, or answered with an
    error, the client reconnects to the next server of its list (never the
    same one: see `connect`). While a
    cluster elects its leaders after a node's death the probes fail too; the
    move then costs one reconnect and is harmless."""
    misses = 0
    while not nc.is_closed:
        await asyncio.sleep(QUORUM_PROBE)
        if not nc.is_connected:
            misses = 0
            continue
        try:
            answer = await nc.request("$JS.API.INFO", b"", timeout=QUORUM_PROBE)
            healthy = b'"error"' not in answer.data
        except (nats.errors.Error, TimeoutError):
            healthy = False
        misses = 0 if healthy else misses + 1
        if misses >= QUORUM_MISSES:
            url = nc.connected_url
            log.warning(
                "nats: %s has not answered for JetStream in %d probes; moving to another node",
                url.netloc if url is not None else "the server",
                misses,
            )
            misses = 0
            await nc.force_reconnect()


async def close(nc: Client, *, drain_seconds: float = 3.0) -> None:
    """Drain the connection for ``drain_seconds`` at most, then close it. A
    connection that is down is closed at once (nats-py refuses to drain one
    that is reconnecting; a process told to stop must not wait for NATS)."""
    if nc.is_connected:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), drain_seconds)
    with contextlib.suppress(Exception):
        await nc.close()


async def until_ready(
    operation: Callable[[], Awaitable[_T]], *, what: str, deadline: float = 60.0
) -> _T:
    """Retry ``operation`` while JetStream is not ready yet (a cluster electing
    its leaders, a node restarting), up to ``deadline`` seconds; then its last
    error is raised."""
    policy = Retry(
        on=(nats.errors.Error, TimeoutError), deadline=deadline, backoff=Backoff(0.1, cap=2.0)
    )
    return await policy.run(
        lambda _: operation(),
        on_retry=lambda e, _: log.info("%s: not ready (%s), retrying", what, _name(e)),
    )


def _name(failure: object) -> str:
    return type(failure).__name__
