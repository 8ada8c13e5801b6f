"""A room actor worker: connect, serve the command subjects of its partitions, drain."""

import asyncio
import contextlib
import logging

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js.errors import NoKeysError

from bus_schema import buckets, ids, subjects
from bus_schema.commands import GetSnapshot
from room_actors.registry import Registry
from room_actors.settings import ActorSettings
from room_actors.state import Limits
from room_actors.store import RoomStore, ensure_buckets
from signaling.natsconn import connect

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: ActorSettings) -> None:
        self.settings = settings
        self.ready = asyncio.Event()
        self._subscriptions: list[Subscription] = []

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        nc = await connect(list(settings.nats_servers), name=f"actors-{settings.worker_id}")
        try:
            js = nc.jetstream()
            await ensure_buckets(js, ttl=settings.room_ttl, replicas=settings.kv_replicas)
            store = await RoomStore.bind(js)
            registry = Registry(nc, store, Limits(recent_commands=settings.recent_commands))
            await self._serve_all_partitions(nc, registry)
            await self._activate_rooms_in_use(store, registry)
            maintenance = asyncio.create_task(self._maintain(registry), name="maintenance")
            log.info("worker %s serving %d partitions", settings.worker_id, subjects.PARTITIONS)
            self.ready.set()
            await stop.wait()
            log.info("worker %s stopping", settings.worker_id)
            for subscription in self._subscriptions:
                await subscription.unsubscribe()
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance
            await registry.close()
        finally:
            await nc.drain()

    async def _serve_all_partitions(self, nc: Client, registry: Registry) -> None:
        for partition in range(subjects.PARTITIONS):
            subscription = await nc.subscribe(
                subjects.partition_commands(partition), cb=registry.dispatch
            )
            self._subscriptions.append(subscription)

    @staticmethod
    async def _activate_rooms_in_use(store: RoomStore, registry: Registry) -> None:
        """Load every stored room so that rooms with participants stay alive in KV."""
        try:
            keys = await store.room_ids()
        except NoKeysError:
            return
        for room_id in keys:
            if ids.is_uuid(room_id):
                command = GetSnapshot(cmd_id=ids.new_token_id(), room_id=buckets.room_key(room_id))
                registry.actor(room_id).submit(command, None)

    async def _maintain(self, registry: Registry) -> None:
        """Passivate idle rooms; refresh the KV age of rooms in use."""
        settings = self.settings
        period = min(5.0, settings.passivate_after / 2)
        touch_every = settings.room_ttl / 4
        loop = asyncio.get_running_loop()
        next_touch = loop.time() + touch_every
        while True:
            await asyncio.sleep(period)
            evicted = registry.passivate_idle(settings.passivate_after)
            if evicted:
                log.debug("passivated %d idle rooms", evicted)
            if loop.time() >= next_touch:
                next_touch = loop.time() + touch_every
                registry.touch_rooms_in_use()
