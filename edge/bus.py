"""The edge's side of NATS: one connection, the room command client, the fan-out
and read-only access to the KV buckets. Owned by the app's lifespan."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from bus_schema import buckets, codec, subjects
from bus_schema.ids import is_uuid
from bus_schema.state import CallsSession, RoomMeta, RoomState
from bus_schema.status import EdgeHeartbeat, EdgeStatus
from edge import metrics
from edge.commands import RoomCommands
from edge.fanout import Fanout
from edge.settings import EdgeSettings
from runtime.clock import iso_now
from runtime.natsconn import close, connect
from runtime.outage import Outage, transient
from runtime.retry import Attempt, Backoff, Retry
from runtime.services import MicroService, version
from runtime.streams import bucket_keys, bucket_size

log = logging.getLogger(__name__)

READS = Outage(log, "KV reads", "reads", metrics.BUS_OUTAGES, metrics.BUS_FAILURES)

_LIST_AT_ONCE = 5000
"""Up to this many rooms, the admin listing lists them all in one request."""


class NotReady(Exception):
    """NATS or the KV buckets are not reachable (yet)."""


class EdgeBus:
    def __init__(self, nc: Client, settings: EdgeSettings) -> None:
        self.nc = nc
        self.commands = RoomCommands(
            nc,
            attempt_timeout=settings.command_attempt_timeout,
            deadline=settings.command_deadline,
        )
        self.fanout = Fanout(nc, self.commands, settings.edge_id)
        self._js = nc.jetstream()
        self._kv: dict[str, KeyValue] = {}
        self._settings = settings
        self._started_at = iso_now()
        self.draining = False
        self._reads = Retry(
            on=transient, deadline=settings.command_deadline, backoff=Backoff(0.05, cap=0.5)
        )
        """Set on SIGTERM: /ready answers 503 and new sockets are refused."""

    def status(self) -> EdgeStatus:
        return EdgeStatus(
            edge_id=self.fanout.edge_id,
            version=version(),
            started_at=self._started_at,
            connections=self.fanout.connection_count,
            rooms=self.fanout.room_count,
            draining=self.draining,
        )

    async def heartbeat(self) -> None:
        """Tell the workers this edge is alive, until cancelled."""
        subject = subjects.edge_heartbeat(self.fanout.edge_id)
        while True:
            beat = EdgeHeartbeat(
                edge_id=self.fanout.edge_id,
                started_at=self._started_at,
                connections=self.fanout.connection_count,
                rooms=self.fanout.room_count,
            )
            with contextlib.suppress(NatsError):
                await self.nc.publish(subject, codec.encode(beat))
            await asyncio.sleep(self._settings.heartbeat_interval)

    async def _bucket(self, name: str) -> KeyValue:
        kv = self._kv.get(name)
        if kv is None:
            try:
                kv = await asyncio.wait_for(
                    self._js.key_value(name), self._settings.command_deadline
                )
            except (BucketNotFoundError, TimeoutError) as e:
                raise NotReady(f"bucket {name} unavailable") from e
            self._kv[name] = kv
        return kv

    async def _read(self, bucket: str, key: str) -> bytes | None:
        """A key's value (``None``: absent), tried again while the bus is
        unavailable, until the command deadline; then `NotReady` (a 503)."""
        kv = await self._bucket(bucket)

        async def read(attempt: Attempt) -> bytes | None:
            # Bounded by the deadline: while the connection is down, a request
            # waits for its whole timeout (5 s) before failing.
            timeout = attempt.timeout(self._settings.command_attempt_timeout)
            try:
                entry = await asyncio.wait_for(kv.get(key), timeout)
            except KeyNotFoundError:
                return None
            return entry.value or None

        try:
            value = await self._reads.run(read)
        except Exception as e:
            if not transient(e):
                raise
            READS.failed(e)
            raise NotReady(f"bucket {bucket} unavailable") from None
        READS.over()
        return value

    async def _get(self, bucket: str, room_id: str) -> bytes | None:
        return await self._read(bucket, buckets.room_key(room_id))

    async def room_meta(self, room_id: str) -> RoomMeta | None:
        value = await self._get(buckets.ROOMS, room_id)
        return None if value is None else codec.room_meta.decode(value)

    async def room_state(self, room_id: str) -> RoomState | None:
        value = await self._get(buckets.ROOM_STATE, room_id)
        return None if value is None else codec.room_state.decode(value)

    async def room_page(self, after: str | None, limit: int) -> tuple[list[str], bool]:
        """Room ids after ``after`` in id order, at most ``limit``, and whether
        more follow (`room_page`)."""
        try:
            return await room_page(self.nc, after, limit)
        except NotFoundError as e:  # no worker has made room_list yet
            raise NotReady("bucket room_list unavailable") from e

    async def calls_session(self, session_id: str) -> CallsSession | None:
        """Who created a Calls session through the proxy, if anyone."""
        value = await self._read(buckets.CALLS_SESSIONS, buckets.calls_session_key(session_id))
        return codec.calls_session.decode(value) if value else None

    async def check_ready(self) -> None:
        if self.draining:
            raise NotReady("draining")
        if not self.nc.is_connected:
            raise NotReady("NATS is not connected")
        for name in (buckets.ROOMS, buckets.ROOM_STATE):
            kv = await self._bucket(name)
            try:
                await asyncio.wait_for(kv.status(), timeout=1.0)
            except Exception as e:
                raise NotReady(f"bucket {name} unavailable") from e


@contextlib.asynccontextmanager
async def open_bus(settings: EdgeSettings) -> AsyncIterator[EdgeBus]:
    bus: EdgeBus | None = None

    async def on_reconnected() -> None:
        if bus is not None:
            bus.fanout.resync_all()

    nc = await connect(
        list(settings.nats_servers),
        name=f"edge-{settings.edge_id}",
        role="edge",
        on_reconnected=on_reconnected,
        credentials=settings.nats_credentials,
    )
    bus = EdgeBus(nc, settings)
    metrics.NATS_CONNECTED.set_function(lambda: 1.0 if nc.is_connected else 0.0)
    heartbeat: asyncio.Task[None] | None = None
    service: MicroService | None = None
    try:
        await bus.commands.start()
        await bus.fanout.start()
        service = await MicroService.start(
            nc,
            name="signaling-edge",
            instance=settings.edge_id,
            description="Edges: HTTP, WebSockets, join tokens, the Calls proxy",
        )
        await service.add_status(subjects.edge_status(settings.edge_id), bus.status)
        metrics.CONNECTIONS.set_function(lambda: bus.fanout.connection_count)
        metrics.ROOMS.set_function(lambda: bus.fanout.room_count)
        heartbeat = asyncio.create_task(bus.heartbeat(), name="heartbeat")
        yield bus
    finally:
        if service is not None:
            await service.stop()
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        await bus.fanout.close()
        await bus.commands.stop()
        await close(nc)


async def room_page(
    nc: Client, after: str | None, limit: int, *, at_once: int = _LIST_AT_ONCE
) -> tuple[list[str], bool]:
    """Room ids after ``after`` in id order, at most ``limit``, and whether
    more follow, read from ``room_list`` shard by shard from the cursor's shard
    on: a page reads the shards it spans, not every key. Up to ``at_once``
    rooms in all, they are listed in one request."""
    if await bucket_size(nc, buckets.ROOM_LIST) <= at_once:
        shards: tuple[str, ...] = (">",)
    else:
        first = after[:2] if after else buckets.LIST_SHARDS[0]
        shards = tuple(f"{s}.>" for s in buckets.LIST_SHARDS if s >= first)
    page: list[str] = []
    for shard in shards:
        keys = await bucket_keys(nc, buckets.ROOM_LIST, keys=shard)
        ids = sorted(key.split(".", 1)[1] for key in keys)
        page.extend(r for r in ids if (after is None or r > after) and is_uuid(r))
        if len(page) > limit:
            break
    return page[:limit], len(page) > limit
