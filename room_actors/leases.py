"""Leases: which worker is alive, and which partitions it owns.

Everything lives in the ``actor_leases`` KV bucket (see `bus_schema.buckets`):

- ``worker.<id>`` is this worker's lease: written with a per-key TTL and renewed
  every TTL/4 with compare-and-set. If a renewal finds the key changed or gone,
  the lease was lost (the worker was paused or cut off past the TTL): every
  partition is dropped at once and the worker registers again. While a renewal
  has not succeeded for a whole TTL (measured on this worker's monotonic clock
  from when the last successful renewal was sent, so never later than the
  server's expiry), the worker owns nothing.
- ``partition.<n>`` names the partition's owner. A worker claims the partitions
  `placement.assign` gives it when their key is absent or names a worker whose
  lease is gone, and releases the ones it should no longer own: stop serving,
  finish the turns in flight, then delete the key (compare-and-set throughout).
  A claim or a delete the bus did not answer may or may not have landed: the
  partition is looked at again until it is settled, because a claim of a
  worker that does not serve the partition would keep every other worker
  waiting for a hand-over that never comes.

Every worker watches the bucket, so a release or an expiry (the bucket places an
expiry marker the watchers see) is acted on at once; a periodic tick covers the
rest.
"""

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from nats.errors import Error as NatsError
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from bus_schema import buckets, codec, subjects
from bus_schema.state import PartitionLease, WorkerLease
from room_actors import metrics
from room_actors.placement import assign
from runtime.clock import iso_now
from runtime.natsconn import until_ready
from runtime.outage import Outage, transient

log = logging.getLogger(__name__)

_OUTAGE_METRICS = (metrics.BUS_OUTAGES, metrics.BUS_FAILURES)

PartitionsCallback = Callable[[list[int]], Awaitable[None]]
_WRONG_LAST_SEQUENCE = (10071, 10164)


@dataclass(frozen=True, slots=True)
class _Seen:
    value: bytes | None
    revision: int


def spans(partitions: list[int]) -> str:
    """Partitions for a log line, runs as ranges: ``0-511, 600, 702-703``
    (a start-up claims all 1,024)."""
    runs: list[list[int]] = []
    for partition in sorted(set(partitions)):
        if runs and partition == runs[-1][1] + 1:
            runs[-1][1] = partition
        else:
            runs.append([partition, partition])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


async def open_leases_bucket(
    js: JetStreamContext, *, replicas: int, max_bytes: int | None = None
) -> KeyValue:
    try:
        return await js.key_value(buckets.LEASES)
    except BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=buckets.LEASES,
                description="room actor workers (worker.<id>, TTL) and partition owners",
                history=1,
                storage=StorageType.FILE,
                replicas=replicas,
                max_bytes=max_bytes,
                limit_marker_ttl=1.0,
                direct=True,
            )
        )


class Leases:
    def __init__(
        self,
        js: JetStreamContext,
        kv: KeyValue,
        *,
        worker_id: str,
        ttl: float,
        on_acquire: PartitionsCallback,
        on_release: PartitionsCallback,
        on_lost: PartitionsCallback,
    ) -> None:
        self.worker_id = worker_id
        self.ttl = ttl
        self._js = js
        self._kv = kv
        self._key = buckets.worker_key(worker_id)
        self._on_acquire = on_acquire
        self._on_release = on_release
        self._on_lost = on_lost
        self._view: dict[str, _Seen] = {}
        self._owned: dict[int, int] = {}
        """partition -> revision of its key, as we wrote it."""
        self._doubtful: set[int] = set()
        """Partitions whose claim or release the bus did not answer (`_settle`)."""
        self._revision = 0
        self._valid_until = 0.0
        self._started_at = iso_now()
        self._incarnation = ""
        """Set by each registration (`WorkerLease.incarnation`)."""
        self._leaving = False
        self._stopped = False
        """Set once a stopping worker has handed everything over: renewals end."""
        self._changed = asyncio.Event()
        self._synced = asyncio.Event()
        self._lock = asyncio.Lock()
        """Held while partitions are claimed, released or dropped."""
        self._lease_lock = asyncio.Lock()
        """Held while this worker's lease key is written. Apart from ``_lock``
        (taken after it, never before), so a rebalance waiting on the bus
        (a request's timeout is 5 s) does not hold the renewals back past the
        lease's TTL (found by a test on a real server: the worker lost its
        lease to its own rebalance)."""
        self._tasks: list[asyncio.Task[None]] = []
        self.ownership_changes = 0
        self._heard = time.monotonic()
        """When the watcher last delivered an entry."""
        self._renewals = Outage(
            log, f"worker {worker_id}: lease renewals", "leases", *_OUTAGE_METRICS
        )
        self._lapsed = False

    def _count(self, change: str, partitions: int) -> None:
        self.ownership_changes += partitions
        metrics.child(metrics.OWNERSHIP_CHANGES, change).inc(partitions)

    # --- queries ------------------------------------------------------------

    def owns(self, partition: int) -> bool:
        return partition in self._owned and time.monotonic() < self._valid_until

    @property
    def owned(self) -> list[int]:
        return sorted(self._owned)

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        await until_ready(self._register, what="worker lease")
        self._tasks = [
            asyncio.create_task(self._watch(), name="leases-watch"),
            asyncio.create_task(self._renew_loop(), name="leases-renew"),
        ]
        await asyncio.wait_for(self._synced.wait(), timeout=max(10.0, self.ttl * 5))
        self._tasks.append(asyncio.create_task(self._balance_loop(), name="leases-balance"))

    async def stop(self) -> None:
        """Hand every partition over at once: others claim them without waiting
        for this worker's lease to expire."""
        self._leaving = True
        for task in self._tasks[2:]:
            task.cancel()
        async with self._lease_lock:
            with contextlib.suppress(Exception):
                await self._write_worker()  # others see it leaving
        # The lease is renewed while the partitions are handed over (the turns
        # in flight to finish, the log to confirm them): it may take longer
        # than the TTL, and an owner whose lease lapsed would leave its rooms'
        # log entries waiting (found by a CI run: every stop took 8 s).
        async with self._lock:
            await self._release(list(self._owned))
        self._stopped = True
        async with self._lease_lock:
            with contextlib.suppress(Exception):
                await self._kv.delete(self._key, last=self._revision)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- this worker's lease --------------------------------------------------

    def _worker_value(self) -> bytes:
        return codec.encode(
            WorkerLease(
                worker_id=self.worker_id,
                started_at=self._started_at,
                renewed_at=iso_now(),
                leaving=self._leaving,
                partitions=self.owned,
                incarnation=self._incarnation,
            )
        )

    async def _put_with_ttl(self, key: str, value: bytes, last: int) -> int:
        """Write ``key`` with the lease TTL if its revision is still ``last``."""
        try:
            # Given up after a quarter of the TTL, not nats-py's 5 s: the
            # next renewal is due then, and one that hung longer would keep
            # the next from being tried before the lease runs out.
            ack = await self._js.publish(
                f"$KV.{buckets.LEASES}.{key}",
                value,
                timeout=self.ttl / 4,
                msg_ttl=self.ttl,
                headers={"Nats-Expected-Last-Subject-Sequence": str(last)},
            )
        except APIError as e:
            if e.err_code in _WRONG_LAST_SEQUENCE:
                raise KeyWrongLastSequenceError(description=e.description) from None
            raise
        return int(ack.seq)

    async def _current_revision(self, key: str) -> int:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError as e:
            return int(e.entry.revision) if e.entry is not None else 0
        return int(entry.revision or 0)

    async def _write_worker(self) -> None:
        sent = time.monotonic()
        self._revision = await self._put_with_ttl(self._key, self._worker_value(), self._revision)
        self._valid_until = sent + self.ttl

    async def _landed(self) -> bool:
        """After a renewal found the key changed: whether the change is an
        earlier renewal of ours whose acknowledgement was lost (JetStream
        stored it while electing a leader, say), in which case the lease was
        never lost and its revision is adopted. Anything else (an expiry
        marker, a value of another start of this worker id) is a lost lease."""
        try:
            entry = await self._kv.get(self._key)
            lease = codec.worker_lease.decode(entry.value or b"")
        except (KeyNotFoundError, msgspec.DecodeError):  # expired, or not ours
            return False
        if lease.worker_id != self.worker_id or lease.incarnation != self._incarnation:
            return False
        self._revision = int(entry.revision or 0)
        log.info("worker %s: an unacknowledged renewal had landed", self.worker_id)
        return True

    async def _register(self) -> None:
        self._incarnation = secrets.token_hex(8)
        self._revision = await self._current_revision(self._key)
        await self._write_worker()
        log.info("worker %s registered (lease TTL %.1fs)", self.worker_id, self.ttl)

    async def _renew_loop(self) -> None:
        # Each loop ends on a flag as well as on cancellation (this one once the
        # partitions are handed over, the others once leaving): Python 3.11's
        # `asyncio.wait_for` (and nats-py's requests) can swallow a cancellation
        # that arrives with their result, and the loop would run on, holding
        # `stop` (found: a change `stop` itself caused woke the balancing loop
        # as it was cancelled).
        while not self._stopped:
            await asyncio.sleep(self.ttl / 4)
            async with self._lease_lock:
                if not self._stopped:
                    await self._renew()

    async def _renew(self) -> None:
        try:
            try:
                await self._write_worker()
            except KeyWrongLastSequenceError:
                if not await self._landed():
                    raise
        except KeyWrongLastSequenceError:
            log.warning("worker %s lost its lease; dropping all partitions", self.worker_id)
            self._valid_until = 0.0  # serves nothing from now on
            async with self._lock:  # after a rebalance under way, with the old incarnation
                lost = list(self._owned)
                self._owned.clear()
                if lost:
                    self._count("lost", len(lost))
                    await self._on_lost(lost)
            if not self._leaving:
                with contextlib.suppress(Exception):
                    await self._register()
            self._changed.set()
        except (NatsError, TimeoutError) as e:
            self._renewals.failed(e)
            if time.monotonic() >= self._valid_until and self._owned and not self._lapsed:
                self._lapsed = True
                log.warning("worker %s: lease lapsed; not serving until renewed", self.worker_id)
        else:
            self._renewals.over()
            self._lapsed = False
            self._check_watcher()

    # --- the shared view --------------------------------------------------------

    async def _watch(self) -> None:
        while not self._leaving:
            watcher = None
            try:
                watcher = await self._kv.watchall()
                self._heard = time.monotonic()
                async for entry in watcher:
                    if self._leaving:
                        with contextlib.suppress(Exception):
                            await watcher.stop()
                        return
                    self._heard = time.monotonic()
                    if entry is None:
                        self._synced.set()
                        continue
                    deleted = entry.operation in ("DEL", "PURGE")
                    self._see(entry.key, None if deleted else entry.value, entry.revision)
            except asyncio.CancelledError:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
                raise
            except Exception as e:
                log.warning("leases watcher failed (%s); restarting", type(e).__name__)
                await asyncio.sleep(0.2)

    def _check_watcher(self) -> None:
        """After a renewal the watcher must have seen: if it has heard nothing
        for two TTLs (its consumer was lost while JetStream elected leaders,
        and nats-py did not recreate it), it is started again, and it reads
        the whole bucket anew. A stale view would keep partitions unclaimed."""
        if time.monotonic() - self._heard < 2 * self.ttl or not self._tasks:
            return
        log.warning("worker %s: leases watcher silent; restarting it", self.worker_id)
        self._heard = time.monotonic()
        self._tasks[0].cancel()
        self._tasks[0] = asyncio.create_task(self._watch(), name="leases-watch")

    def _see(self, key: str, value: bytes | None, revision: int | None) -> None:
        revision = int(revision or 0)
        seen = self._view.get(key)
        if seen is None or revision >= seen.revision:
            self._view[key] = _Seen(value or None, revision)
            self._changed.set()

    async def _read(self, key: str) -> _Seen:
        """The key as the server has it now (not as the watcher last said)."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError as e:
            if e.entry is None:  # no trace of the key at all
                if self._view.pop(key, None) is not None:
                    self._changed.set()
                return _Seen(None, 0)
            self._see(key, None, e.entry.revision)
            return _Seen(None, int(e.entry.revision or 0))
        self._see(key, entry.value, entry.revision)
        return _Seen(entry.value or None, int(entry.revision or 0))

    async def _verify_workers(self) -> None:
        """Check the workers the view takes for alive against the server: the
        watcher can lag behind (its consumer lives on a node that may die), and
        an expiry it missed would leave a dead worker's partitions unclaimed."""
        for key, seen in list(self._view.items()):
            if key.startswith(buckets.WORKER_PREFIX) and seen.value is not None:
                await self._read(key)

    def _live_workers(self) -> dict[str, WorkerLease]:
        """Workers whose lease key holds a value (expired keys leave a marker)."""
        live: dict[str, WorkerLease] = {}
        for key, seen in self._view.items():
            if key.startswith(buckets.WORKER_PREFIX) and seen.value is not None:
                lease = codec.worker_lease.decode(seen.value)
                live[lease.worker_id] = lease
        return live

    async def owner(self, partition: int) -> tuple[PartitionLease | None, bool]:
        """The partition's claim as the server has it now, and whether its
        worker's lease is alive (an operator's question: ``signal.actors.owner``)."""
        value = (await self._read(buckets.partition_key(partition))).value
        if value is None:
            return None, False
        claim = codec.partition_lease.decode(value)
        return claim, await self._owner_is_alive(claim.worker_id) is not None

    async def _owner_is_alive(self, worker_id: str) -> WorkerLease | None:
        """Before taking a partition from another worker, ask the server itself."""
        value = (await self._read(buckets.worker_key(worker_id))).value
        return None if value is None else codec.worker_lease.decode(value)

    # --- balancing ---------------------------------------------------------------

    async def _balance_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_check = loop.time()
        while not self._leaving:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=self.ttl / 4)
            self._changed.clear()
            try:
                async with self._lock:
                    if loop.time() >= next_check:
                        next_check = loop.time() + self.ttl
                        await self._verify_workers()
                    await self._rebalance()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if transient(e):  # the bus is down a while: the renewals' WARNING says so
                    log.info("rebalance failed (%s); retrying", type(e).__name__)
                else:
                    log.exception("rebalance failed; retrying")
                await asyncio.sleep(self.ttl / 4)

    async def _rebalance(self) -> None:
        if self._leaving or time.monotonic() >= self._valid_until:
            return
        await self._drop_taken()
        live = self._live_workers()
        members = {w for w, lease in live.items() if not lease.leaving} | {self.worker_id}
        owners = assign(subjects.PARTITIONS, members)
        desired = {p for p, w in owners.items() if w == self.worker_id}
        surplus = [p for p in self._owned if p not in desired]
        if surplus:
            await self._release(surplus)
        await self._settle(desired)
        wanted = sorted(desired - set(self._owned))
        # Claimed all at once (each a compare-and-set of its own): a start-up
        # or a takeover of many partitions is one round trip, not one each.
        # Every claim that landed is served even if others failed: a claim
        # written but never announced would be owned and served by nobody.
        results = await asyncio.gather(*map(self._try_claim, wanted), return_exceptions=True)
        acquired = [p for p, ok in zip(wanted, results, strict=True) if ok is True]
        failures = [
            (p, r) for p, r in zip(wanted, results, strict=True) if isinstance(r, BaseException)
        ]
        self._doubtful.update(p for p, _ in failures)
        if acquired:
            self._count("acquired", len(acquired))
            log.info("worker %s acquired partitions %s", self.worker_id, spans(acquired))
            await self._on_acquire(acquired)
        if failures:
            raise failures[0][1]

    async def _settle(self, desired: set[int]) -> None:
        """Partitions whose claim or release the bus did not answer: if the
        server names this worker for one it does not serve (a release's delete
        that failed, a claim that landed after its request timed out), the
        claim is deleted. Others wait for a live owner to hand a partition
        over, so such a claim would leave its rooms without an owner until
        this worker stops (found by the node-partition test: a release during
        a heal failed, and a room had no owner for as long as the test ran)."""
        if not self._doubtful:
            return
        ours = [p for p in self._doubtful if p in self._owned or p in desired]
        self._doubtful.difference_update(ours)  # served, or the claim settles it
        pending = sorted(self._doubtful)
        results = await asyncio.gather(*map(self._settle_one, pending), return_exceptions=True)
        settled = [p for p, r in zip(pending, results, strict=True) if isinstance(r, bool)]
        self._doubtful.difference_update(settled)
        handed = [p for p, r in zip(pending, results, strict=True) if r is True]
        if handed:
            log.info("worker %s handed partitions %s over again", self.worker_id, spans(handed))
        if len(settled) < len(pending):
            raise next(r for r in results if isinstance(r, BaseException))

    async def _settle_one(self, partition: int) -> bool:
        """Whether this worker's claim had to be deleted."""
        key = buckets.partition_key(partition)
        seen = await self._read(key)
        if seen.value is None or partition in self._owned:
            return False
        if codec.partition_lease.decode(seen.value).worker_id != self.worker_id:
            return False
        try:
            await self._kv.delete(key, last=seen.revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def _try_claim(self, partition: int) -> bool:
        """Claim a partition unless its owner is alive (it will hand it over)."""
        seen = self._view.get(buckets.partition_key(partition))
        revision = seen.revision if seen is not None else 0
        if seen is not None and seen.value is not None:
            claim = codec.partition_lease.decode(seen.value)
            owner = claim.worker_id
            if owner != self.worker_id:
                lease = self._live_workers().get(owner)
                if lease is None or claim.incarnation not in ("", lease.incarnation):
                    lease = await self._owner_is_alive(owner)  # the view may lag: ask
                # A claim of the owner's earlier incarnation (it lost its
                # lease since, and dropped every partition) is nobody's: the
                # owner will not hand it over (found by the nemesis).
                if lease is not None and claim.incarnation in ("", lease.incarnation):
                    return False
        return await self._claim(partition, revision)

    async def _drop_taken(self) -> None:
        """Partitions whose key changed after we wrote it are no longer ours."""
        taken = []
        for partition, revision in self._owned.items():
            seen = self._view.get(buckets.partition_key(partition))
            if seen is not None and seen.revision > revision:
                owner = None if seen.value is None else codec.partition_lease.decode(seen.value)
                if owner is None or owner.worker_id != self.worker_id:
                    taken.append(partition)
        if taken:
            log.warning("worker %s: partitions %s were taken over", self.worker_id, spans(taken))
            for partition in taken:
                del self._owned[partition]
            self._count("lost", len(taken))
            await self._on_lost(taken)

    async def _claim(self, partition: int, revision: int) -> bool:
        value = codec.encode(
            PartitionLease(
                partition=partition,
                worker_id=self.worker_id,
                since=iso_now(),
                incarnation=self._incarnation,
            )
        )
        key = buckets.partition_key(partition)
        try:
            self._owned[partition] = await self._kv.update(key, value, last=revision)
        except KeyWrongLastSequenceError:
            await self._read(key)  # our view was stale; look again next round
            return False
        return True

    async def _release(self, partitions: list[int]) -> None:
        if not partitions:
            return
        log.info("worker %s releasing partitions %s", self.worker_id, spans(partitions))
        await self._on_release(partitions)
        released = {p: r for p in partitions if (r := self._owned.pop(p, None)) is not None}
        if released:
            self._count("released", len(released))
        results = await asyncio.gather(
            *(self._kv.delete(buckets.partition_key(p), last=r) for p, r in released.items()),
            return_exceptions=True,
        )
        unanswered = [
            partition
            for partition, result in zip(released, results, strict=True)
            # A compare-and-set that failed means the key moved on: not ours.
            if isinstance(result, BaseException)
            and not isinstance(result, KeyWrongLastSequenceError)
        ]
        if unanswered:
            self._doubtful.update(unanswered)
            log.info(
                "worker %s: releases of partitions %s not answered; looking again",
                self.worker_id,
                spans(unanswered),
            )
