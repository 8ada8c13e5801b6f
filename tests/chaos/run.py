"""One chaos run: the world, the workload, the nemesis, then the invariants.

`chaos(root, seconds, seed)` returns a `Report`; ``python -m tests.chaos``
(`make chaos`) prints it and writes it to ``tests/artifacts/``;
``tests/system/test_chaos.py`` runs it for 60 s in `make test`.
"""

import asyncio
import contextlib
import itertools
import json
import math
import random
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats.js.api

from bus_schema import codec, subjects
from bus_schema.log import LOG_STREAM, log_entry
from tests.chaos.clients import OP_BOUND, Client, Ops
from tests.chaos.nemesis import Nemesis, Window, schedule
from tests.chaos.world import ENV, World
from tests.system.test_webhooks import SECRET
from webhooks import signing

ROOMS = 4
SIZES = (3, 5)
SETTLE = 60.0
"""Seconds the system has, after the last fault, to converge."""
GRACE = float(ENV["RESUME_GRACE"])
EDGE_TIMEOUT = float(ENV["EDGE_TIMEOUT"])
EXAMPLES = 5
NOT_IN_ROOM = 4003


@dataclass
class Report:
    seed: int
    seconds: float
    faults: Counter[str] = field(default_factory=Counter)
    operations: Counter[str] = field(default_factory=Counter)
    deliveries: Counter[str] = field(default_factory=Counter)
    recoveries: list[float] = field(default_factory=list)
    violations: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    schedule: list[str] = field(default_factory=list)

    def violate(self, invariant: str, example: str) -> None:
        self.violations[invariant].append(example)

    @property
    def violation_count(self) -> int:
        return sum(len(v) for v in self.violations.values())

    def text(self) -> str:
        lines = [
            f"chaos run: seed {self.seed}, {self.seconds:.0f} s "
            f"(replay: CHAOS_SEED={self.seed} CHAOS_SECONDS={self.seconds:.0f} make chaos)",
            "",
            "faults: " + _counts(self.faults),
            "operations: " + _counts(self.operations),
            "deliveries: " + _counts(self.deliveries),
        ]
        if self.recoveries:
            ordered = sorted(self.recoveries)
            lines.append(
                "recovery after a fault (a probe broadcast delivered again): "
                f"p50 {statistics.median(ordered):.2f} s, "
                f"p90 {ordered[math.ceil(0.9 * len(ordered)) - 1]:.2f} s, max {ordered[-1]:.2f} s "
                f"({len(ordered)} faults)"
            )
        lines.append(f"violations: {self.violation_count}")
        for invariant, examples in sorted(self.violations.items()):
            lines.append(f"  {invariant}: {len(examples)}")
            lines += [f"    {e}" for e in examples[:EXAMPLES]]
        lines += ["", "schedule:"] + [f"  {s}" for s in self.schedule]
        return "\n".join(lines)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"


class Workload:
    """Rooms of 3-5 simulated clients doing what calls do, and a probe room."""

    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.ops = Ops()
        self.rooms: dict[str, list[Client]] = {}
        self.gone: list[Client] = []
        """Clients that left cleanly."""
        self.http = httpx.AsyncClient()
        self.probe_sent: list[tuple[int, float, Client, Client]] = []
        """Probe broadcasts: number, when sent, by whom, to whom."""
        self.probe: tuple[Client, Client] | None = None
        """The probe room's sender and receiver now."""
        self.probes: list[Client] = []
        """Every client the probe room had (one closed for good is replaced)."""
        self._numbers = 0
        self._names = 0
        self.started = time.monotonic()

    def edge(self) -> str:
        return self.rng.choice(self.world.edge_urls())

    async def _post(self, kind: str, path: str, body: dict[str, Any], **kw: Any) -> Any:
        """POST through a random edge until it succeeds (bounded); the body."""
        for _ in range(20):
            response = await self.ops.call(
                kind, self.http, "POST", self.edge() + path, json=body, **kw
            )
            if response is not None and response.status_code in (200, 201):
                return response.json()
            await asyncio.sleep(0.5)
        raise RuntimeError(f"{kind} kept failing")

    async def member(self, room_id: str) -> Client:
        self._names += 1
        joined = await self._post(
            "join", f"/api/rooms/{room_id}/join", {"participant_name": f"c{self._names}"}
        )
        client = Client(
            room_id,
            f"c{self._names}",
            joined["token"],
            joined["participant_id"],
            self.world.edge_urls,
            random.Random(self.rng.random()),
        ).start()
        await asyncio.wait_for(client.welcomed.wait(), 60)
        return client

    async def start(self) -> None:
        for r in range(ROOMS):
            room = await self._post("create", "/api/rooms", {"name": f"chaos {r}"})
            room_id = room["room_id"]
            self.rooms[room_id] = [
                await self.member(room_id) for _ in range(self.rng.randint(*SIZES))
            ]
            for client in self.rooms[room_id]:
                await self.calls_session(client)
        probe_room = (await self._post("create", "/api/rooms", {"name": "probe"}))["room_id"]
        self.probe = (await self.member(probe_room), await self.member(probe_room))
        self.probes = list(self.probe)

    async def calls_session(self, client: Client) -> None:
        """A Calls session through the proxy, published to the room."""
        response = await self.ops.call(
            "calls",
            self.http,
            "POST",
            self.edge() + "/cloudflare/session",
            headers={"Authorization": f"Bearer {client.token}"},
            json={},
        )
        if response is not None and response.status_code == 201:
            await client.session(response.json()["sessionId"])

    async def run(self, until: float) -> None:
        probing = asyncio.create_task(self._probe(until))
        while time.monotonic() < until:
            await asyncio.sleep(0.05)
            room_id = self.rng.choice(list(self.rooms))
            members = self.rooms[room_id]
            client = self.rng.choice(members)
            roll = self.rng.random()
            self._numbers += 1
            n = self._numbers
            if roll < 0.45:
                await client.chat(n)
            elif roll < 0.65:
                others = [m for m in members if m is not client]
                await client.offer(self.rng.choice(others).pid, n)
            elif roll < 0.85:
                await client.track(self.rng.random() < 0.5)
            elif roll < 0.89:
                client.drop(self.rng.uniform(0.2, 3.0))
            elif roll < 0.905:
                await client.leave()
                members.remove(client)
                self.gone.append(client)
                members.append(await self.member(room_id))
            elif roll < 0.95:
                await self.calls_session(client)
            else:
                await self.ops.call("get", self.http, "GET", self.edge() + f"/api/rooms/{room_id}")
        await probing

    async def _probe(self, until: float) -> None:
        n = 0
        while time.monotonic() < until:
            n += 1
            await self._mend_probe()
            assert self.probe is not None
            sender, receiver = self.probe
            if sender.connected:
                await sender.chat(-n)
                self.probe_sent.append((-n, time.monotonic(), sender, receiver))
            await asyncio.sleep(0.25)

    async def _mend_probe(self) -> None:
        """A probe client closed for good (a fault made the room drop it, as
        it may any client) is replaced by a new member, or the probe would
        measure nothing more."""
        assert self.probe is not None
        pair = list(self.probe)
        for i, client in enumerate(pair):
            if client.closed_for_good is not None:
                try:
                    pair[i] = await self.member(client.room_id)
                except (RuntimeError, TimeoutError):
                    return  # tried again at the next probe
                self.probes.append(pair[i])
        self.probe = (pair[0], pair[1])

    async def stop(self) -> None:
        clients = everyone(self) + self.probes
        await asyncio.gather(*(c.stop() for c in clients))
        await self.http.aclose()


async def chaos(root: Path, seconds: float, seed: int) -> Report:
    report = Report(seed, seconds)
    plan = schedule(seed, seconds)
    report.schedule = [
        f"{f.at:6.2f} s {f.cls} {f.target} {f.kind} {f.seconds:.2f} s"
        + (f" +{f.latency * 1000:.0f} ms" if f.latency else "")
        for f in plan
    ]
    world = World(root)
    workload: Workload | None = None
    try:
        await world.start()
        workload = Workload(world, random.Random(seed))
        await workload.start()
        nemesis = Nemesis(world, plan)
        workload.started = time.monotonic()
        end = time.monotonic() + seconds
        await asyncio.gather(workload.run(end), nemesis.run())
        world.heal()
        await settle(world, workload, report)
        await check(world, workload, nemesis.windows, report)
        dump(root, workload, nemesis.windows)
    finally:
        if workload is not None:
            await workload.stop()
        await world.stop()
    return report


def dump(root: Path, workload: Workload, windows: list[Window]) -> None:
    """What the clients saw and when the faults were, beside the processes'
    logs in ``root`` (times in seconds from the start of the faults)."""
    start = workload.started
    clients = [*everyone(workload), *workload.probes]
    record = {
        "faults": [
            {
                "fault": f"{w.cls} {w.planned.kind} {w.detail}",
                "began": round(w.began - start, 3),
                "ended": None if w.ended is None else round(w.ended - start, 3),
            }
            for w in windows
        ],
        "clients": {
            c.name: {
                "pid": c.pid,
                "room": c.room_id,
                "segments": [
                    [
                        s.edge,
                        round(s.welcomed_at - start, 3),
                        s.ended_at and round(s.ended_at - start, 3),
                    ]
                    for s in c.segments
                ],
                "trace": [[round(t - start, 3), *rest] for t, *rest in c.trace],
            }
            for c in clients
        },
    }
    (root / "chaos-clients.json").write_text(json.dumps(record))


async def settle(world: World, workload: Workload, report: Report) -> None:
    """Every process back, and the rooms converged (or the time is up)."""
    for role in world.roles:
        if not role.child.alive():
            report.violate("processes", f"{role.name} is not running at the end")
            world.restart(role)
    nc = await world.system.connect()
    try:
        kv = await nc.jetstream().key_value("room_state")
        give_up = time.monotonic() + SETTLE
        while True:
            differences = await membership(kv, workload)
            if not differences or time.monotonic() > give_up:
                break
            await asyncio.sleep(0.5)
        for difference in differences:
            report.violate("membership converges", difference)
    finally:
        await nc.close()


async def membership(kv: Any, workload: Workload) -> list[str]:
    differences = []
    rooms = dict(workload.rooms)
    if workload.probe is not None:
        rooms[workload.probe[0].room_id] = list(workload.probes)
    for room_id, members in rooms.items():
        try:
            entry = await kv.get(room_id)
            state = codec.room_state.decode(entry.value)
        except Exception as e:
            differences.append(f"room {room_id[:8]}: state unreadable ({type(e).__name__})")
            continue
        truth = set(state.participants)
        connected = {c.pid for c in members if c.connected}
        if truth != connected:
            differences.append(
                f"room {room_id[:8]}: actor holds {_short(truth)}, connected {_short(connected)}"
            )
        for client in members:
            if client.connected and client.view != truth:
                differences.append(
                    f"room {room_id[:8]}: {client.name} sees {_short(client.view)}, "
                    f"actor holds {_short(truth)}"
                )
    return differences


def _short(ids: set[str]) -> str:
    return "{" + ", ".join(sorted(i[:6] for i in ids)) + "}"


async def check(world: World, workload: Workload, windows: list[Window], report: Report) -> None:
    check_clients(workload, windows, report)
    for message in world.unclean_stops:
        report.violate("SIGTERM stops cleanly", message)
    await event_log(world, workload, report)


def check_clients(workload: Any, windows: list[Window], report: Report) -> None:
    """What the clients saw and did (``workload``: a `Workload`, or anything
    with its ``ops``, ``rooms``, ``gone``, ``probe`` and ``probe_sent``)."""
    for window in windows:
        report.faults[f"{window.cls} {window.planned.kind}"] += 1
    for op in workload.ops.done:
        report.operations[f"{op.kind} {op.outcome}"] += 1
        if op.seconds > OP_BOUND or op.outcome in ("timeout", "500"):
            report.violate(
                "no operation hangs", f"{op.kind}: {op.outcome} after {op.seconds:.1f} s"
            )
    for client in [*everyone(workload), *getattr(workload, "probes", [])]:
        if client.closed_for_good == NOT_IN_ROOM and client.closed_at is not None:
            # Refused on resuming: its place was given up. Fine after the
            # grace, or after a fault that made the room drop it (edge_lost).
            last = client.last_seen() or 0.0
            away = client.closed_at - last
            # Its own edge's fault counts: an edge paused or cut off past
            # EDGE_TIMEOUT has its participants leave (docs/reliability.md).
            edges = {client.segments[-1].edge} if client.segments else set()
            if away >= GRACE - 1.0 or _excused(
                windows, last - EDGE_TIMEOUT, client.closed_at, edges
            ):
                report.deliveries["resumes refused after the grace or a fault"] += 1
            else:
                report.violate(
                    "clients stay connected", f"{client.name} refused 4003 after {away:.1f} s away"
                )
        elif client.closed_for_good is not None:
            report.violate(
                "clients stay connected", f"{client.name} closed with {client.closed_for_good}"
            )
        for i, segment in enumerate(client.segments):
            for a, b in itertools.pairwise(segment.seqs):
                if b <= a:
                    report.violate(
                        "room_seq increases", f"{client.name} connection {i}: {a} then {b}"
                    )
        for code, count in client.errors.items():
            report.deliveries[f"error frames {code}"] += count
    broadcasts(workload, windows, report)
    resumes(workload, windows, report)
    recoveries(workload, windows, report)


def everyone(workload: Any) -> list[Client]:
    """Every client of the rooms, those who left included (not the probe)."""
    members: list[Client] = [c for room in workload.rooms.values() for c in room]
    return members + list(workload.gone)


def _excused(windows: list[Window], start: float, end: float, edges: set[str]) -> bool:
    """Whether a fault that can lose this message was on during it: any node
    or worker fault, or a fault of the edge either end was on."""
    for window in windows:
        if not window.overlaps(start, end):
            continue
        if window.cls in ("node", "worker"):
            return True
        if window.cls == "edge" and window.edge_url in edges:
            return True
    return False


def broadcasts(workload: Any, windows: list[Window], report: Report) -> None:
    clients = everyone(workload)
    for room_id in workload.rooms:
        room_clients = [c for c in clients if c.room_id == room_id]
        for sender in room_clients:
            for n, sent_at in sender.sent_chats:
                for receiver in room_clients:
                    if receiver is sender:
                        continue
                    got = receiver.broadcasts[sender.pid, n]
                    if got > 1:
                        report.violate(
                            "no broadcast twice",
                            f"{receiver.name} got {sender.name}'s {n} {got} times",
                        )
                    there = receiver.present(sent_at)
                    if there is None:
                        continue
                    report.deliveries["broadcasts expected"] += 1
                    if got:
                        report.deliveries["broadcasts delivered"] += 1
                        continue
                    sent_on = sender.present(sent_at)
                    edges = {there.edge} | ({sent_on.edge} if sent_on else set())
                    window = (sent_at - 2, sent_at + 6)
                    if (
                        sender.changed_near(*window)
                        or receiver.changed_near(*window)
                        or _excused(windows, sent_at - 1, sent_at + 6, edges)
                    ):
                        report.deliveries["broadcasts lost in fault windows"] += 1
                    else:
                        others = [
                            f"{c.name}@{p.edge[-5:]}"
                            for c in room_clients
                            if c.broadcasts[sender.pid, n] and (p := c.present(sent_at))
                        ]
                        report.violate(
                            "losses only in fault windows",
                            f"{receiver.name}@{there.edge[-5:]} missed {sender.name}'s chat {n} "
                            f"sent from {sent_on.edge[-5:] if sent_on else '?'} "
                            f"at {sent_at - workload.started:.1f} s (got it: {others})",
                        )
            for to, n, _ in sender.sent_offers:
                target = next((c for c in room_clients if c.pid == to), None)
                if target is None:
                    continue
                got = target.offers[sender.pid, n]
                report.deliveries["offers sent"] += 1
                report.deliveries["offers delivered"] += bool(got)
                if got > 1:
                    report.violate(
                        "no offer twice", f"{target.name} got {sender.name}'s offer {n} {got} times"
                    )


def resumes(workload: Any, windows: list[Window], report: Report) -> None:
    """A client back within the grace was never announced as leaving."""
    clients = everyone(workload)
    for client in clients:
        for dropped, back in client.drops:
            if back is None or back - dropped > GRACE - 1.0:
                continue
            report.deliveries["resumes within the grace"] += 1
            announced = [
                other.name
                for other in clients
                if other.room_id == client.room_id
                and any(who == client.pid and dropped <= at <= back + 1 for at, who in other.leaves)
            ]
            if not announced:
                continue
            edge_trouble = any(
                w.cls in ("edge", "node") and w.overlaps(dropped - EDGE_TIMEOUT, back)
                for w in windows
            )
            if edge_trouble:
                report.deliveries["resumes announced in fault windows"] += 1
            else:
                report.violate(
                    "a resume is not a leave",
                    f"{client.name} was back in {back - dropped:.1f} s; {announced} saw it leave",
                )


def recoveries(workload: Any, windows: list[Window], report: Report) -> None:
    if workload.probe is None:
        return
    arrived = {
        n: receiver.broadcast_times.get((sender.pid, n))
        for n, _, sender, receiver in workload.probe_sent
    }
    for window in windows:
        if window.ended is None:
            continue
        after = [
            (n, sent)
            for n, sent, _, _ in workload.probe_sent
            if sent >= window.ended and arrived.get(n)
        ]
        if after:
            n, _ = after[0]
            got = arrived[n]
            assert got is not None
            report.recoveries.append(max(0.0, got - window.ended))


async def event_log(world: World, workload: Workload, report: Report) -> None:
    """The log holds each room event once, in order; clients' joins and leaves
    are in it; the receiver got every (visible) one, in order, signed; each
    room's state is what its log says (nothing a fenced worker wrote stayed)."""
    nc = await world.system.connect()
    try:
        js = nc.jetstream()
        info = await js.stream_info(LOG_STREAM)
        last = info.state.last_seq
        entries = []
        sub = await js.subscribe(
            subjects.LOG_ALL, ordered_consumer=True, deliver_policy=nats.js.api.DeliverPolicy.ALL
        )
        try:
            while last:
                msg = await sub.next_msg(timeout=10)
                entries.append(log_entry.decode(msg.data))
                if msg.metadata.sequence.stream >= last:
                    break
        finally:
            await sub.unsubscribe()
        kv = await js.key_value("room_state")
        by_room: dict[str, list[Any]] = defaultdict(list)
        for entry in entries:
            by_room[entry.room_id].append(entry)
        report.deliveries["log entries"] = len(entries)
        rooms = set(workload.rooms) | ({workload.probe[0].room_id} if workload.probe else set())
        for room_id in rooms:
            logged = by_room.get(room_id, [])
            seqs = [e.room_seq for e in logged]
            for a, b in itertools.pairwise(seqs):
                if b <= a:
                    report.violate(
                        "the log holds each event once, in order",
                        f"room {room_id[:8]}: {a} then {b}",
                    )
            members: set[str] = set()
            for e in logged:
                if e.event == "participant_joined" and e.participant_id:
                    members.add(e.participant_id)
                elif e.event == "participant_left" and e.participant_id:
                    members.discard(e.participant_id)
            state = codec.room_state.decode((await kv.get(room_id)).value)
            if set(state.participants) != members:
                report.violate(
                    "room state is its log's",
                    f"room {room_id[:8]}: state {_short(set(state.participants))}, "
                    f"log {_short(members)}",
                )
            # Mute changes are numbered from the reservation and saved later:
            # the stored state may lag the log, never its reservation.
            if seqs and max(state.seq, state.seq_reserved) < seqs[-1]:
                report.violate(
                    "room state is its log's",
                    f"room {room_id[:8]}: numbers reserved up to {state.seq_reserved}, "
                    f"log at {seqs[-1]}",
                )
        indexes = {room_id: _index(by_room, room_id) for room_id in rooms}
        for client in everyone(workload):
            for seq, kind, who in client.events:
                event = "participant_joined" if kind == "join" else "participant_left"
                if (seq, event, who) not in indexes[client.room_id]:
                    report.violate(
                        "what clients saw is logged", f"{client.name}: {kind} {who[:6]} at {seq}"
                    )
        await webhooks(world, entries, report)
    finally:
        await nc.close()


def _index(by_room: dict[str, list[Any]], room_id: str) -> set[tuple[int, str, str | None]]:
    return {(e.room_seq, e.event, e.participant_id) for e in by_room.get(room_id, [])}


async def webhooks(world: World, entries: list[Any], report: Report) -> None:
    wanted = {e.id for e in entries if not e.hidden}
    receiver = world.receiver

    def accepted_ids() -> set[str]:
        return {json.loads(d.body)["id"] for d in receiver.accepted()}

    with contextlib.suppress(TimeoutError):
        await receiver.until(lambda: wanted <= accepted_ids(), timeout=SETTLE)
    missing = wanted - accepted_ids()
    for event_id in sorted(missing):
        report.violate("every event reaches the webhook receiver", event_id)
    report.deliveries["webhooks accepted"] = len(receiver.accepted())
    order: dict[str, int] = {}
    firsts: set[str] = set()
    for delivery in receiver.accepted():
        body = json.loads(delivery.body)
        try:
            signing.verify(SECRET, delivery.headers, delivery.body, tolerance=3600)
        except signing.InvalidSignature:
            report.violate("webhooks are signed", body["id"])
        if body["id"] in firsts:  # at least once: a receiver deduplicates on the id
            report.deliveries["webhooks delivered again"] += 1
            continue
        firsts.add(body["id"])
        room_id, seq = body["room_id"], body["room_seq"]
        if seq < order.get(room_id, -1):
            report.violate(
                "webhooks in room order", f"{body['id']} after {room_id[:8]}.{order[room_id]}"
            )
        order[room_id] = max(order.get(room_id, -1), seq)
