"""A rolling restart nobody notices (issue 18): under live calls, every process
is restarted one at a time as docs/operations.md tells an operator to (each
nats-server node, each worker, each edge, each webhook dispatcher). Clients
reconnect as the web client does (same token, any edge) and must see no
`leave` or `join`, no event twice or out of order, every mute change, and be
connected at the end."""

import asyncio
import contextlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import websockets

from signaling.cluster import Edge
from tests.harness import Api, System
from tests.system.test_webhooks import FAST, Receiver
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(240)]

RECONNECT = {1001, 1006, 1011, 1012, 1013}
"""Close codes after which a client reconnects (docs/protocol.md)."""


@dataclass
class Caller:
    """A participant whose client reconnects through any live edge with its
    token when its socket closes, as the web client does; it keeps what it saw."""

    token: str
    participant_id: str
    edges: Callable[[], list[Edge]]
    seq: int = 0
    welcomes: int = 0
    churn: list[dict[str, Any]] = field(default_factory=list)
    out_of_order: list[tuple[int, int]] = field(default_factory=list)
    audio: dict[str, bool | None] = field(default_factory=dict)
    """Each other participant's audio as this client knows it."""
    closed_for_good: int | None = None
    ws: Any = None
    welcomed: asyncio.Event = field(default_factory=asyncio.Event)
    recording: bool = False

    async def run(self) -> None:
        attempt = 0
        while True:
            live = [e for e in self.edges() if e.alive()]
            edge = live[attempt % len(live)]
            attempt += 1
            try:
                async with websockets.connect(
                    f"{edge.ws_url}?token={self.token}", open_timeout=3
                ) as ws:
                    self.ws = ws
                    async for raw in ws:
                        self._see(json.loads(raw))
            except (OSError, websockets.InvalidStatus, websockets.InvalidHandshake):
                # That edge is going away: the next one, after a moment (a
                # client's reconnect backoff, not a wait for the test).
                await asyncio.sleep(0.05)
                continue
            except websockets.ConnectionClosed:
                pass
            finally:
                self.welcomed.clear()
            code = self.ws.close_code if self.ws is not None else None
            if code not in RECONNECT:
                self.closed_for_good = code
                return

    def _see(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        seq = message.get("room_seq")
        if kind == "welcome":
            self.welcomes += 1
            self.seq = seq or 0
            self.audio = {
                p["id"]: p.get("audio")
                for p in message["participants"]
                if p["id"] != self.participant_id
            }
            self.welcomed.set()
            return
        if isinstance(seq, int):
            if seq <= self.seq:
                self.out_of_order.append((self.seq, seq))
            self.seq = max(self.seq, seq)
        if kind in ("join", "leave"):
            if self.recording:
                self.churn.append(message)
            who = message["data"]["participant_id"]
            if kind == "join":
                self.audio.setdefault(who, None)
            else:
                self.audio.pop(who, None)
        if kind == "track-state" and message.get("kind") == "audio":
            self.audio[message["from"]] = message["enabled"]

    async def send(self, message: dict[str, Any]) -> None:
        await asyncio.wait_for(self.welcomed.wait(), 30)
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.ws.send(json.dumps(message))


async def healthy(node_url: str) -> bool:
    async with httpx.AsyncClient() as http:
        try:
            return (await http.get(f"{node_url}/healthz", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False


async def test_a_rolling_restart_of_every_process_is_not_noticed(
    make_system: Callable[..., System],
) -> None:
    receiver = await Receiver().start()
    system = make_system(KV_REPLICAS="3", DRAIN_DELAY="0.5", RESUME_GRACE="30")
    await system.start(cluster=3, actors=3, edges=3)
    bus = await system.bus()
    await bus.balanced([a.env["WORKER_ID"] for a in system.actors])
    for _ in range(2):
        system.start_webhooks(WEBHOOK_URL=receiver.url, **FAST)
    api = Api(system.edges[0].url)
    callers: list[Caller] = []
    rooms: dict[str, list[Caller]] = {}
    tasks: list[asyncio.Task[None]] = []
    toggling = True
    try:
        for r in range(4):
            room_id = await api.create_room(f"call {r}")
            members = []
            for m in range(3):
                joined = await api.join(room_id, f"p{m}")
                caller = Caller(joined["token"], joined["participant_id"], lambda: system.edges)
                members.append(caller)
                tasks.append(asyncio.create_task(caller.run()))
                await asyncio.wait_for(caller.welcomed.wait(), 30)
            rooms[room_id] = members
            callers += members
        for caller in callers:
            await eventually(lambda c=caller: len(c.audio) == 2, timeout=30)  # type: ignore[misc]
            caller.recording = True

        rng = random.Random(18)
        states: dict[str, bool] = {}

        async def toggle() -> None:
            while toggling:
                caller = rng.choice(callers)
                states[caller.participant_id] = enabled = not states.get(
                    caller.participant_id, True
                )
                await caller.send({"type": "track-state", "kind": "audio", "enabled": enabled})
                await asyncio.sleep(0.05)

        traffic = asyncio.create_task(toggle())

        # Stops wait for the process to exit: off the event loop, where the
        # clients must go on (reconnecting) meanwhile.
        for node in system.nodes:
            await asyncio.to_thread(node.stop)
            await asyncio.to_thread(node.start)
            await eventually(lambda n=node: healthy(n.monitor_url), timeout=60)  # type: ignore[misc]
        for worker in list(system.actors):
            assert await asyncio.to_thread(worker.stop) == 0  # stopped, not killed
            system.actors.remove(worker)
            system.start_actor()
            await bus.balanced([a.env["WORKER_ID"] for a in system.actors], timeout=60)
        for edge in list(system.edges):
            replacement = system.start_edge()
            await asyncio.to_thread(system.wait_edge_ready, replacement)
            system.edges.remove(edge)  # out of the load balancer first, then
            # Drained: its clients go to the others.
            assert await asyncio.to_thread(edge.stop) == 0
        for dispatcher in list(system.dispatchers):
            assert await asyncio.to_thread(dispatcher.stop) == 0
            system.dispatchers.remove(dispatcher)
            system.start_webhooks(WEBHOOK_URL=receiver.url, **FAST)

        toggling = False
        await traffic
        # Every client is in, and knows every mute state the room holds.
        for room_id, members in rooms.items():

            async def agree(room_id: str = room_id, members: list[Caller] = members) -> bool:
                # KV reads may come from a replica still catching up: read
                # until the room's state and every client's view agree.
                truth = await bus.room_state(room_id)
                if truth is None or sorted(truth.participants) != sorted(
                    c.participant_id for c in members
                ):
                    return False
                return all(
                    c.welcomed.is_set()
                    and c.audio == {p: truth.participants[p].audio for p in c.audio}
                    for c in members
                )

            await eventually(agree, timeout=30, message=f"room {room_id}: views differ")
        for caller in callers:
            assert caller.closed_for_good is None
            assert caller.churn == [], caller.churn
            assert caller.out_of_order == [], caller.out_of_order
    finally:
        toggling = False
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()
        await receiver.stop()
