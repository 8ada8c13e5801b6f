"""Connecting to NATS the same way in every process."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
from nats.aio.client import Client

from signaling.config import NatsCredentials

log = logging.getLogger(__name__)
_T = TypeVar("_T")


async def connect(
    servers: list[str],
    *,
    name: str,
    deadline: float = 30.0,
    on_reconnected: Callable[[], Awaitable[None]] | None = None,
    on_disconnected: Callable[[], Awaitable[None]] | None = None,
    credentials: NatsCredentials | None = None,
) -> Client:
    """Connect, retrying the first connection until ``deadline`` seconds passed;
    afterwards the client reconnects on its own, forever."""

    async def error_cb(error: Exception) -> None:
        log.warning("nats: %s: %s", type(error).__name__, error, exc_info=error)

    async def reconnected_cb() -> None:
        log.info("nats: reconnected")
        if on_reconnected is not None:
            await on_reconnected()

    async def disconnected_cb() -> None:
        log.info("nats: disconnected")
        if on_disconnected is not None:
            await on_disconnected()

    auth: dict[str, str] = {}
    if credentials is not None and credentials.user and credentials.password:
        auth = {"user": credentials.user, "password": credentials.password}
    if credentials is not None and credentials.creds_file:
        auth["user_credentials"] = credentials.creds_file
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    delay = 0.1
    while True:
        try:
            return await nats.connect(
                servers=servers,
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
                **auth,
            )
        except (OSError, TimeoutError, nats.errors.NoServersError) as e:
            if loop.time() + delay > give_up:
                raise ConnectionError(f"cannot reach NATS at {', '.join(servers)}") from e
            log.info("nats: not reachable yet (%s), retrying", type(e).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def until_ready(
    operation: Callable[[], Awaitable[_T]], *, what: str, deadline: float = 60.0
) -> _T:
    """Retry ``operation`` while JetStream is not ready yet (a cluster electing
    its leaders, a node restarting), up to ``deadline`` seconds."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    delay = 0.1
    while True:
        try:
            return await operation()
        except (nats.errors.Error, TimeoutError) as e:
            if loop.time() + delay > give_up:
                raise
            log.info("%s: not ready (%s), retrying", what, type(e).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
