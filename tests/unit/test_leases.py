"""room_actors.leases against an in-memory ``actor_leases`` bucket: claims,
renewal, a dead worker's expiry, handover, a lost lease, and the steal race.

The fake bucket keeps what JetStream keeps for a KV bucket (the latest entry
per key, one revision counter, compare-and-set on a key's last revision, watch
streams); a key's TTL runs out only when a test says so (`Bucket.expire`), so
"not before the expiry" is exact. Each worker talks to it through its own
`Connection`, which a test can cut (a dead or partitioned worker) or feed a
stale view (`Connection.mislead`). Leases run on real time with a short TTL.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError

from bus_schema import buckets, codec, subjects
from bus_schema.state import PartitionLease
from room_actors.leases import Leases, spans
from room_actors.placement import assign
from tests.waiting import eventually

TTL = 0.6
"""Seconds: renewals every 0.15 s; a test waits a few TTLs at most."""
EVERY = set(range(subjects.PARTITIONS))


@dataclass
class Entry:
    """What nats-py's KeyValue hands out (``operation`` None for a value, or
    for the marker an expiry leaves: an empty value)."""

    key: str
    value: bytes
    revision: int
    operation: str | None = None
    bucket: str = buckets.LEASES
    delta: int | None = None
    created: int | None = None


@dataclass
class Ack:
    seq: int


class Bucket:
    """The server's side of one KV bucket."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.revision = 0
        self.connections: list[Connection] = []

    def last(self, key: str) -> int:
        entry = self.entries.get(key)
        return entry.revision if entry is not None else 0

    def write(self, key: str, value: bytes, *, last: int | None, operation: str | None) -> int:
        if last is not None and self.last(key) != last:
            raise KeyWrongLastSequenceError(description="wrong last sequence")
        self.revision += 1
        entry = Entry(key, value, self.revision, operation)
        self.entries[key] = entry
        for connection in self.connections:
            connection.deliver(entry)
        return self.revision

    def expire(self, key: str) -> None:
        """The key's TTL ran out: the server places a marker every watcher sees."""
        self.write(key, b"", last=None, operation=None)

    def value(self, key: str) -> bytes | None:
        entry = self.entries.get(key)
        return entry.value if entry is not None and entry.value else None

    def owner(self, partition: int) -> str | None:
        value = self.value(buckets.partition_key(partition))
        return codec.partition_lease.decode(value).worker_id if value else None

    def owners(self) -> dict[int, str | None]:
        return {p: self.owner(p) for p in sorted(EVERY)}


@dataclass
class Watcher:
    queue: "asyncio.Queue[Entry | None]" = field(default_factory=asyncio.Queue)

    def __aiter__(self) -> "Watcher":
        return self

    async def __anext__(self) -> Entry | None:
        return await self.queue.get()

    async def stop(self) -> None:
        return None


class Connection:
    """One worker's way to the bucket: both the JetStream context and the
    KeyValue handle `Leases` takes, with only the calls it makes."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.watchers: list[Watcher] = []
        self.cut = False
        self.lost_acks = 0
        """Writes to apply whose acknowledgement is then lost (a timeout)."""
        self.frozen: list[Entry] | None = None
        self.fails: Callable[[str, str], bool] = lambda operation, key: False
        """Which calls (``update`` or ``delete`` of a key) time out unapplied."""
        self.slow: dict[str, float] = {}
        """Seconds the bus takes to answer a call (``delete``), by its name."""
        bucket.connections.append(self)

    def freeze(self) -> None:
        """From now on this worker's watchers see the bucket as it is now:
        nothing written later reaches them (a view that lags for good)."""
        self.frozen = list(self.bucket.entries.values())

    def deliver(self, entry: Entry) -> None:
        if not self.cut and self.frozen is None:
            for watcher in self.watchers:
                watcher.queue.put_nowait(entry)

    def silence(self) -> None:
        """The watchers this worker has now hear nothing more (their consumer
        is gone); a new watcher works."""
        self.watchers = []

    def mislead(self, entry: Entry) -> None:
        """This worker's watcher reports ``entry``, which the server never wrote."""
        for watcher in self.watchers:
            watcher.queue.put_nowait(entry)

    def _reach(self) -> None:
        if self.cut:
            raise nats.errors.TimeoutError

    # JetStreamContext
    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float = 5.0,
        msg_ttl: float,
        headers: dict[str, str],
    ) -> Ack:
        self._reach()
        key = subject.removeprefix(f"$KV.{buckets.LEASES}.")
        last = int(headers["Nats-Expected-Last-Subject-Sequence"])
        if self.bucket.last(key) != last:
            raise APIError(code=400, err_code=10071, description="wrong last sequence")
        ack = Ack(self.bucket.write(key, payload, last=last, operation=None))
        if self.lost_acks:
            self.lost_acks -= 1
            raise nats.js.errors.NoStreamResponseError
        return ack

    # KeyValue
    async def get(self, key: str) -> Entry:
        self._reach()
        entry = self.bucket.entries.get(key)
        if entry is None:
            raise KeyNotFoundError
        if entry.operation in ("DEL", "PURGE"):
            raise KeyNotFoundError(entry, entry.operation)
        return entry

    async def update(self, key: str, value: bytes, last: int) -> int:
        self._reach()
        if self.fails("update", key):
            raise nats.errors.TimeoutError
        return self.bucket.write(key, value, last=last, operation=None)

    async def delete(self, key: str, last: int | None = None) -> bool:
        self._reach()
        if self.fails("delete", key):
            raise nats.errors.TimeoutError
        await asyncio.sleep(self.slow.get("delete", 0.0))
        self.bucket.write(key, b"", last=last, operation="DEL")
        return True

    async def watchall(self) -> Watcher:
        self._reach()
        watcher = Watcher()
        now = self.bucket.entries.values() if self.frozen is None else self.frozen
        for entry in now:
            watcher.queue.put_nowait(entry)
        watcher.queue.put_nowait(None)
        self.watchers.append(watcher)
        return watcher


@dataclass
class Worker:
    """A `Leases` and what its callbacks were told."""

    leases: Leases
    connection: Connection
    acquired: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    told: set[int] = field(default_factory=set)
    """What the callbacks say this worker serves (the registry's view)."""
    release_takes: float = 0.0
    """Seconds a release takes (the registry finishing turns, the log confirming)."""
    owned_while_releasing: list[bool] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.leases.worker_id

    def serving(self) -> set[int]:
        return {p for p in EVERY if self.leases.owns(p)}


class Workers:
    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.started: list[Worker] = []

    def make(self, worker_id: str, ttl: float = TTL) -> Worker:
        connection = Connection(self.bucket)
        worker: Worker

        async def acquire(partitions: list[int]) -> None:
            worker.acquired += partitions
            worker.told.update(partitions)

        async def release(partitions: list[int]) -> None:
            if worker.release_takes:
                await asyncio.sleep(worker.release_takes)
                worker.owned_while_releasing.append(all(map(worker.leases.owns, partitions)))
            worker.released += partitions
            worker.told.difference_update(partitions)

        async def lose(partitions: list[int]) -> None:
            worker.lost += partitions
            worker.told.difference_update(partitions)

        conn: Any = connection
        leases = Leases(
            conn,
            conn,
            worker_id=worker_id,
            ttl=ttl,
            on_acquire=acquire,
            on_release=release,
            on_lost=lose,
        )
        worker = Worker(leases, connection)
        self.started.append(worker)
        return worker

    async def start(self, worker_id: str, ttl: float = TTL) -> Worker:
        worker = self.make(worker_id, ttl)
        await worker.leases.start()
        return worker

    async def stop_all(self) -> None:
        for worker in self.started:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.leases.stop(), 5)


@pytest.fixture
async def workers() -> AsyncIterator[Workers]:
    running = Workers(Bucket())
    try:
        yield running
    finally:
        await running.stop_all()


def balanced(bucket: Bucket, *group: Worker) -> bool:
    """Every partition has one owner in the bucket, the one serving it (as
    its leases and its callbacks both say), and the loads differ by at most one."""
    owners = bucket.owners()
    serving = [w.serving() for w in group]
    if any(w.told != s for w, s in zip(group, serving, strict=True)):
        return False
    if any(owners[p] is None for p in EVERY) or set().union(*serving) != EVERY:
        return False
    if sum(len(s) for s in serving) != len(EVERY):  # nobody serves a partition twice
        return False
    if any(owners[p] != w.id for w, s in zip(group, serving, strict=True) for p in s):
        return False
    return max(map(len, serving)) - min(map(len, serving)) <= 1


async def test_a_lone_worker_claims_every_partition(workers: Workers) -> None:
    a = await workers.start("a")
    # Its claims are written first, then it is told what it acquired: wait
    # for the telling (owning every partition comes a moment before it).
    await eventually(
        lambda: sorted(a.acquired) == sorted(EVERY), timeout=5, message=lambda: a.acquired
    )
    assert a.serving() == EVERY
    assert workers.bucket.owners() == dict.fromkeys(sorted(EVERY), "a")
    lease = codec.worker_lease.decode(workers.bucket.entries[buckets.worker_key("a")].value)
    assert (lease.worker_id, lease.leaving) == ("a", False)


async def test_two_workers_starting_together_share_without_overlap(workers: Workers) -> None:
    a, b = workers.make("a"), workers.make("b")
    await asyncio.gather(a.leases.start(), b.leases.start())
    await eventually(
        lambda: balanced(workers.bucket, a, b), timeout=10, message=workers.bucket.owners
    )
    assert len(a.serving()) == len(b.serving()) == len(EVERY) // 2


async def test_renewals_keep_the_lease_for_many_ttls(workers: Workers) -> None:
    a = await workers.start("a")
    await eventually(lambda: a.serving() == EVERY, timeout=5)
    key = buckets.worker_key("a")
    first = workers.bucket.last(key)
    for _ in range(10):  # 2.5 TTLs, each time still serving: renewals succeed
        await asyncio.sleep(TTL / 4)
        assert a.serving() == EVERY
    assert workers.bucket.last(key) > first
    assert workers.bucket.value(key) is not None
    assert a.lost == []


async def test_a_dead_workers_partitions_move_only_when_its_lease_expires(
    workers: Workers,
) -> None:
    a, b = await workers.start("a"), await workers.start("b")
    await eventually(lambda: balanced(workers.bucket, a, b), timeout=10)
    theirs = a.serving()
    a.connection.cut = True  # dead, or cut off: no renewal, no release

    # On its own clock the dead worker stops serving within a TTL of its last
    # renewal, before the server can expire its lease.
    await eventually(lambda: not a.serving(), timeout=TTL * 3, message="a still serves")
    # Its lease has not expired on the server: nobody takes its partitions.
    for _ in range(8):  # 2 TTLs of balancing rounds
        await asyncio.sleep(TTL / 4)
        assert b.serving() == EVERY - theirs
        assert all(workers.bucket.owner(p) == "a" for p in theirs)

    workers.bucket.expire(buckets.worker_key("a"))
    await eventually(lambda: b.serving() == EVERY, timeout=5, message=lambda: b.serving())
    assert workers.bucket.owners() == dict.fromkeys(sorted(EVERY), "b")


async def test_a_stopped_worker_hands_over_without_waiting_for_its_lease(
    workers: Workers,
) -> None:
    a, b = await workers.start("a", ttl=30), await workers.start("b", ttl=30)
    await eventually(lambda: balanced(workers.bucket, a, b), timeout=10)
    theirs = a.serving()
    await asyncio.wait_for(a.leases.stop(), 5)
    assert sorted(a.released) == sorted(theirs)
    assert workers.bucket.value(buckets.worker_key("a")) is None
    # With a 30 s lease, only the handover can make this quick.
    await eventually(lambda: b.serving() == EVERY, timeout=5, message=lambda: b.serving())
    assert sorted(b.acquired) == sorted(EVERY)


async def test_a_worker_whose_lease_was_lost_drops_everything_and_comes_back(
    workers: Workers,
) -> None:
    """Paused past its TTL: the server expired its lease meanwhile. Its next
    renewal finds the key changed; it drops every partition at once, registers
    again and claims its share anew."""
    a = await workers.start("a")
    await eventually(lambda: a.serving() == EVERY, timeout=5)
    workers.bucket.expire(buckets.worker_key("a"))
    await eventually(lambda: sorted(a.lost) == sorted(EVERY), timeout=5, message=lambda: a.lost)
    await eventually(lambda: a.serving() == EVERY, timeout=5)
    assert workers.bucket.value(buckets.worker_key("a")) is not None
    # Told once the claims are written (owned from the claim's write on).
    await eventually(lambda: a.acquired.count(0) == 2, timeout=5, message=lambda: a.acquired)


async def test_a_renewal_that_landed_without_its_acknowledgement_keeps_the_lease(
    workers: Workers,
) -> None:
    """JetStream electing a leader can store a renewal and lose its reply. The
    next renewal finds the key at a revision it did not expect; it is this
    worker's own value, so the lease was never lost: nothing is dropped."""
    a = await workers.start("a")
    await eventually(lambda: a.serving() == EVERY, timeout=5)
    before = workers.bucket.last(buckets.worker_key("a"))
    a.connection.lost_acks = 2
    await eventually(
        lambda: (
            workers.bucket.last(buckets.worker_key("a")) > before + 3 and not a.connection.lost_acks
        ),
        timeout=5,
    )
    assert a.lost == []
    assert a.serving() == EVERY


async def test_a_silent_watcher_is_started_again_and_the_view_catches_up(
    workers: Workers,
) -> None:
    """Found by the nemesis: after a partition healed, a worker's watcher
    heard nothing more (its consumer was lost while JetStream elected
    leaders) and its view stayed stale, so it never claimed the partitions
    another worker handed it. A watcher silent for two TTLs, though the
    worker's own renewals were written meanwhile, is started again."""
    a = await workers.start("a")
    b = await workers.start("b")
    await eventually(lambda: balanced(workers.bucket, a, b), timeout=10)
    a.connection.silence()
    c = await workers.start("c")  # only a new watcher tells a of c
    await eventually(lambda: balanced(workers.bucket, a, b, c), timeout=10)


async def test_partitions_a_worker_held_before_it_lost_its_lease_are_not_stuck_with_it(
    workers: Workers,
) -> None:
    """Found by the nemesis: a worker lost its lease and registered again
    under the same id while another joined. The keys of the partitions it had
    held still named it, alive again, so the newcomer waited for a hand-over
    that never came (the worker had dropped them): those rooms had no owner
    for minutes. A claim names its owner's incarnation; one of an earlier
    incarnation is taken."""
    for partition in EVERY:  # what a worker "a" held before it lost its lease
        stale = PartitionLease(partition=partition, worker_id="a", since="", incarnation="old")
        workers.bucket.write(
            buckets.partition_key(partition), codec.encode(stale), last=None, operation=None
        )
    a = await workers.start("a")  # registered again: alive, a new incarnation
    b = await workers.start("b")
    await eventually(lambda: balanced(workers.bucket, a, b), timeout=10)


async def test_a_stale_view_does_not_steal_a_live_owners_partitions(workers: Workers) -> None:
    """b's watcher says a's lease is gone (a lagging view; the server says a
    is alive): b asks the server before taking a partition from a, and a
    keeps every one, while the view stays wrong for many rounds."""
    a, b = await workers.start("a"), await workers.start("b")
    await eventually(lambda: balanced(workers.bucket, a, b), timeout=10)
    theirs = a.serving()
    owners = workers.bucket.owners()
    key = buckets.worker_key("a")
    b.connection.mislead(Entry(key, b"", workers.bucket.revision + 1_000_000))
    for _ in range(12):  # 3 TTLs of balancing rounds, each one tempted
        await asyncio.sleep(TTL / 4)
        assert b.serving() == EVERY - theirs
        assert a.serving() == theirs
    assert workers.bucket.owners() == owners
    assert not set(b.acquired) & theirs


async def test_a_claim_from_a_stale_view_fails_its_compare_and_set(workers: Workers) -> None:
    """b's view lags for good: it shows every partition free, as it was before
    c claimed them all. b's claims carry the revision it saw, so each one fails
    on the server, and c, which never hears of b, keeps serving every one."""
    b = workers.make("b")
    b.connection.freeze()  # the empty bucket
    c = await workers.start("c")
    await eventually(lambda: c.serving() == EVERY, timeout=5)
    c.connection.freeze()  # c will not see b either, so it hands nothing over
    await b.leases.start()
    for _ in range(12):  # 3 TTLs of balancing rounds
        await asyncio.sleep(TTL / 4)
        assert b.serving() == set()
        assert c.serving() == EVERY
    assert workers.bucket.owners() == dict.fromkeys(sorted(EVERY), "c")
    assert b.acquired == []


def test_partitions_are_logged_as_runs() -> None:
    """A start-up claims all 1,024: one short log line, not a thousand numbers."""
    assert spans(list(range(1024))) == "0-1023"
    assert spans([8, 3, 0, 1, 2, 5, 7, 3]) == "0-3, 5, 7-8"
    assert spans([]) == ""


async def test_stop_returns_at_once_when_its_own_handover_wakes_the_balancing(
    workers: Workers,
) -> None:
    """Found by the test suite's teardowns (each took 5 s): ``a`` hands its
    partitions over, ``b`` claims them all, then ``b`` stops. Its release
    wakes its own balancing loop just as ``stop`` cancels it, and Python
    3.11's ``asyncio.wait_for`` swallows a cancellation that arrives with its
    result: the loop ran on and ``stop`` waited for it for good. Every loop
    now also ends once the worker is leaving."""
    a, b = await workers.start("a"), await workers.start("b")
    await eventually(lambda: balanced(workers.bucket, a, b), timeout=10)
    await asyncio.wait_for(a.leases.stop(), 5)
    await eventually(lambda: b.serving() == EVERY, timeout=5)
    await asyncio.wait_for(b.leases.stop(), 2)  # not the 5 s a hang took
    assert workers.bucket.value(buckets.worker_key("b")) is None


async def test_a_rebalance_the_bus_fails_logs_no_traceback(
    workers: Workers, caplog: pytest.LogCaptureFixture
) -> None:
    """An outage is expected operation: a failed rebalance is retried and
    logged in one line, not as an ERROR with a traceback (found in the
    partition test's logs)."""
    a = await workers.start("a")
    await eventually(lambda: a.serving() == EVERY, timeout=5)
    b = workers.make("b")
    await b.leases.start()  # a must hand partitions over: its rebalance reads
    with caplog.at_level("INFO", logger="room_actors.leases"):
        a.connection.cut = True
        await eventually(
            lambda: any("rebalance failed (TimeoutError)" in r.message for r in caplog.records),
            timeout=5,
        )
        a.connection.cut = False
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_a_release_the_bus_did_not_answer_is_made_again(workers: Workers) -> None:
    """Found by the node-partition test: during a heal a worker released the
    partitions of a worker it saw come back, and the deletes failed. Its
    claims stayed in the bucket naming it, alive, so the other worker waited
    for a hand-over that never came: a room had no owner for as long as the
    test ran. The releasing worker looks at such a partition again and
    deletes its claim once the bus answers."""
    a = await workers.start("a")
    await eventually(lambda: a.told == EVERY, timeout=5)
    down = True
    a.connection.fails = lambda operation, key: down and operation == "delete"
    b = await workers.start("b")
    await eventually(lambda: len(a.released) > 0, timeout=5, message="a released nothing")
    assert all(workers.bucket.owner(p) == "a" for p in a.released)  # no delete landed
    down = False
    await eventually(
        lambda: balanced(workers.bucket, a, b), timeout=10, message=workers.bucket.owners
    )


async def test_claims_that_landed_are_served_when_others_in_their_round_failed(
    workers: Workers,
) -> None:
    """A takeover claims many partitions in one round. One claim the bus did
    not answer made the whole round fail, and the claims that had landed
    were owned but never announced: nobody served those rooms. Every landed
    claim is announced; the failed one is tried again."""
    a = await workers.start("a")
    await eventually(lambda: a.told == EVERY, timeout=5)
    b = workers.make("b")
    theirs = [p for p, w in assign(subjects.PARTITIONS, {"a", "b"}).items() if w == "b"]
    failing = {buckets.partition_key(theirs[len(theirs) // 2])}
    b.connection.fails = lambda operation, key: operation == "update" and key in failing
    await b.leases.start()
    await eventually(lambda: len(b.told) > 0, timeout=5, message="b serves nothing")
    failing.clear()
    await eventually(
        lambda: balanced(workers.bucket, a, b),
        timeout=10,
        message=lambda: (len(b.told), len(b.serving())),
    )


async def test_renewals_go_on_while_a_rebalance_waits_on_the_bus(workers: Workers) -> None:
    """Found by a test on a real server: the renewals waited for the lock a
    rebalance held while its deletes waited for the bus (a request's timeout
    is 5 s), so the worker's lease ran out because of its own hand-over. The
    lease is written under a lock of its own."""
    a = await workers.start("a")
    await eventually(lambda: a.told == EVERY, timeout=5)
    a.connection.slow["delete"] = TTL * 5
    await workers.start("b")
    await eventually(lambda: len(a.released) > 0, timeout=5, message="a released nothing")
    key = buckets.worker_key("a")
    renewed = workers.bucket.last(key)
    for _ in range(12):  # 3 TTLs while the deletes hang
        await asyncio.sleep(TTL / 4)
        assert a.serving() == EVERY - set(a.released)
    assert workers.bucket.last(key) >= renewed + 8
    assert a.lost == []


async def test_a_stopping_worker_keeps_its_lease_until_it_has_handed_over(
    workers: Workers,
) -> None:
    """Found by a CI run's slowest teardown (8 s, the hand-over's bound): a
    stopping worker stopped renewing its lease before it handed its
    partitions over, so a hand-over longer than the TTL (turns to finish, log
    entries to confirm) found the rooms no longer its own, and their log
    entries waited for a lease that would not come back. Renewals go on until
    the partitions are handed over."""
    a = await workers.start("a")
    await eventually(lambda: a.told == EVERY, timeout=5)
    a.release_takes = TTL * 3
    await asyncio.wait_for(a.leases.stop(), 10)
    assert a.owned_while_releasing == [True]
    assert workers.bucket.value(buckets.worker_key("a")) is None
