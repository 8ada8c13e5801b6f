"""A room actor worker: connect, serve the command subjects of its partitions, drain."""

import asyncio
import contextlib
import logging

from nats.aio.msg import Msg

from bus_schema import codec, subjects
from bus_schema.status import WorkerStatus
from room_actors.leases import Leases, open_leases_bucket
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

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        nc = await connect(list(settings.nats_servers), name=f"actors-{settings.worker_id}")
        try:
            js = nc.jetstream()
            await ensure_buckets(js, ttl=settings.room_ttl, replicas=settings.kv_replicas)
            store = await RoomStore.bind(js)
            leases_kv = await open_leases_bucket(js, replicas=settings.kv_replicas)
            # The two refer to each other: leases call the registry when
            # ownership changes; the registry asks the leases what it owns.
            leases = Leases(
                js,
                leases_kv,
                worker_id=settings.worker_id,
                ttl=settings.lease_ttl,
                on_acquire=lambda partitions: registry.serve(partitions),
                on_release=lambda partitions: registry.release(partitions),
                on_lost=lambda partitions: registry.drop(partitions),
            )
            registry = Registry(
                nc, store, Limits(recent_commands=settings.recent_commands), owns=leases.owns
            )
            await leases.start()

            async def status(msg: Msg) -> None:
                reply = WorkerStatus(
                    worker_id=settings.worker_id,
                    partitions=registry.partitions,
                    rooms_active=len(registry),
                    ownership_changes=leases.ownership_changes,
                )
                await msg.respond(codec.encode(reply))

            await nc.subscribe(subjects.worker_status(settings.worker_id), cb=status)
            maintenance = asyncio.create_task(self._maintain(registry), name="maintenance")
            log.info("worker %s started", settings.worker_id)
            self.ready.set()
            await stop.wait()
            log.info("worker %s stopping: handing partitions over", settings.worker_id)
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance
            await leases.stop()
            await registry.close()
        finally:
            await nc.drain()

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
