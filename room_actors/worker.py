"""A room actor worker: connect, serve the command subjects of its partitions, drain."""

import asyncio
import contextlib
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import start_http_server

from bus_schema import codec, ids, subjects
from bus_schema.status import RoomOwner, WorkerStatus
from room_actors import metrics
from room_actors.leases import Leases, open_leases_bucket
from room_actors.liveness import EdgeLiveness
from room_actors.registry import Registry
from room_actors.settings import ActorSettings
from room_actors.state import EdgesLost, Limits
from room_actors.store import RoomStore, ensure_buckets, ensure_log_stream
from runtime.natsconn import close, connect, until_ready
from runtime.services import MicroService

log = logging.getLogger(__name__)


HANDOVER_SECONDS = 8.0
"""At most this long, on SIGTERM, to hand partitions over and finish the
turns in flight: a worker that cannot reach NATS still exits well within an
orchestrator's grace (30 s by default in Kubernetes)."""


class Worker:
    def __init__(self, settings: ActorSettings) -> None:
        self.settings = settings
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        serving: list[Registry] = []

        async def on_reconnected() -> None:
            for registry in serving:
                registry.republish_recent()

        nc = await connect(
            list(settings.nats_servers),
            name=f"actors-{settings.worker_id}",
            role="actors",
            on_reconnected=on_reconnected,
            credentials=settings.nats_credentials,
        )
        service: MicroService | None = None
        try:
            service = await MicroService.start(
                nc,
                name="signaling-actors",
                instance=settings.worker_id,
                description="Room actors: own room state, answer room commands",
            )
            registry, leases = await self._assemble(nc, service)
            serving.append(registry)
            liveness = EdgeLiveness(settings.edge_timeout)
            await nc.subscribe(subjects.EDGE_HEARTBEATS, cb=liveness.on_heartbeat)
            await leases.start()
            await self._serve_status(service, registry, leases)
            self._export_metrics(registry, leases)
            background = asyncio.gather(
                self._maintain(registry), self._watch_edges(registry, liveness)
            )
            log.info("worker %s started", settings.worker_id)
            self.ready.set()
            await stop.wait()
            log.info("worker %s stopping: handing partitions over", settings.worker_id)
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
            if not nc.is_connected:
                log.warning(
                    "worker %s: NATS unreachable, no hand-over; "
                    "its partitions move when its lease expires",
                    settings.worker_id,
                )
                return
            try:
                async with asyncio.timeout(HANDOVER_SECONDS):
                    await leases.stop()
                    await registry.close()
            except TimeoutError:
                log.warning(
                    "worker %s: hand-over not finished in %.0f s; "
                    "its partitions move when its lease expires",
                    settings.worker_id,
                    HANDOVER_SECONDS,
                )
        finally:
            if service is not None:
                with contextlib.suppress(Exception):
                    await service.stop()
            await close(nc)

    async def _assemble(self, nc: Client, service: MicroService) -> tuple[Registry, Leases]:
        """The buckets, the registry of room actors and the leases deciding what it serves."""
        settings = self.settings
        js = nc.jetstream()
        await until_ready(
            lambda: ensure_buckets(
                js,
                ttl=settings.room_ttl,
                replicas=settings.kv_replicas,
                max_bytes=settings.kv_max_bytes,
            ),
            what="KV buckets",
        )
        await until_ready(
            lambda: ensure_log_stream(
                js,
                max_age=settings.log_max_age,
                max_bytes=settings.log_max_bytes,
                replicas=settings.kv_replicas,
            ),
            what="event log stream",
        )
        store = await until_ready(lambda: RoomStore.bind(nc, js), what="KV buckets")
        leases_kv = await until_ready(
            lambda: open_leases_bucket(
                js, replicas=settings.kv_replicas, max_bytes=settings.kv_max_bytes
            ),
            what="leases bucket",
        )
        # The two refer to each other: leases call the registry when ownership
        # changes; the registry asks the leases what it owns.
        leases = Leases(
            js,
            leases_kv,
            worker_id=settings.worker_id,
            ttl=settings.lease_ttl,
            on_acquire=lambda partitions: registry.serve(partitions),
            on_release=lambda partitions: registry.release(partitions),
            on_lost=lambda partitions: registry.drop(partitions),
        )
        limits = Limits.from_settings(settings)
        registry = Registry(
            nc, store, limits, owns=leases.owns, service=service, worker_id=settings.worker_id
        )
        return registry, leases

    async def _serve_status(
        self, service: MicroService, registry: Registry, leases: Leases
    ) -> None:
        """``signal.actors.<worker>.status``, an endpoint of the micro service."""
        worker_id = self.settings.worker_id

        def status() -> WorkerStatus:
            return WorkerStatus(
                worker_id=worker_id,
                partitions=registry.partitions,
                rooms_active=len(registry),
                ownership_changes=leases.ownership_changes,
            )

        await service.add_status(subjects.worker_status(worker_id), status)

        async def owner(msg: Msg) -> None:
            room_id = msg.data.decode(errors="replace").strip()
            if not ids.is_uuid(room_id):
                await msg.respond(b'{"error":"send a room id"}')
                return
            partition = subjects.partition_of(room_id)
            claim, alive = await leases.owner(partition)
            answer = RoomOwner(
                room_id=room_id,
                partition=partition,
                worker_id=claim.worker_id if claim is not None else None,
                since=claim.since if claim is not None else None,
                alive=alive,
            )
            await msg.respond(codec.encode(answer))

        # Any worker answers (a queue group of all): ``nats req signal.actors.owner <room_id>``.
        await service.add("owner", subjects.ROOM_OWNER, owner, queue_group="owner")

    def _export_metrics(self, registry: Registry, leases: Leases) -> None:
        metrics.ROOMS_ACTIVE.set_function(lambda: len(registry))
        metrics.PARTITIONS_OWNED.set_function(lambda: len(leases.owned))
        if self.settings.metrics_port is not None:
            start_http_server(self.settings.metrics_port, addr=self.settings.metrics_host)
            log.info(
                "metrics on http://%s:%d/metrics",
                self.settings.metrics_host,
                self.settings.metrics_port,
            )

    async def _watch_edges(self, registry: Registry, liveness: EdgeLiveness) -> None:
        """Participants connected through a dead edge leave their rooms (told
        again at each sweep while they are still there: a turn may fail while
        the bus is down; logged once)."""
        told: set[str] = set()
        while True:
            await asyncio.sleep(min(1.0, liveness.timeout / 4))
            edges = registry.edges_in_use()
            dead = liveness.dead(set(edges))
            for edge_id in dead - told:
                log.info(
                    "edge %s is gone; its participants leave %d rooms", edge_id, len(edges[edge_id])
                )
            told = set(dead)
            for edge_id in dead:
                for room_id in edges[edge_id]:
                    registry.actor(room_id).submit(EdgesLost(frozenset({edge_id})))
            liveness.forget_stale()

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
