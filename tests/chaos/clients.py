"""Simulated clients, as the web client behaves: join over HTTP, a WebSocket
through any edge, reconnect (same token, another edge) after a close that
says so, and record everything they see."""

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets

RECONNECT = {1001, 1006, 1011, 1012, 1013}
"""Close codes after which a client reconnects (docs/protocol.md)."""
NOT_IN_ROOM = 4003
OP_BOUND = 30.0
"""Seconds within which every operation must end, in success or an explicit error."""


@dataclass
class Op:
    """One HTTP operation and how it ended."""

    kind: str
    started: float
    seconds: float
    outcome: str  # an HTTP status, or the error's name


@dataclass
class Segment:
    """One connection of a client, from its `welcome` to its close."""

    edge: str
    welcomed_at: float
    welcome_seq: int
    ended_at: float | None = None
    close_code: int | None = None
    seqs: list[int] = field(default_factory=list)


@dataclass
class Ops:
    """Every HTTP operation of a run, timed."""

    done: list[Op] = field(default_factory=list)

    async def call(
        self, kind: str, http: httpx.AsyncClient, method: str, url: str, **kwargs: Any
    ) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = await http.request(method, url, timeout=OP_BOUND, **kwargs)
        except httpx.TimeoutException:
            self.done.append(Op(kind, started, time.monotonic() - started, "timeout"))
            return None
        except httpx.HTTPError as e:
            self.done.append(Op(kind, started, time.monotonic() - started, type(e).__name__))
            return None
        self.done.append(Op(kind, started, time.monotonic() - started, str(response.status_code)))
        return response


@dataclass
class Client:
    room_id: str
    name: str
    token: str
    pid: str
    edges: Callable[[], list[str]]
    """The edges' base URLs (http://host:port) as the load balancer knows them."""
    rng: random.Random
    segments: list[Segment] = field(default_factory=list)
    view: set[str] = field(default_factory=set)
    """Who is in the room, as this client knows it."""
    broadcasts: Counter[tuple[str, int]] = field(default_factory=Counter)
    broadcast_times: dict[tuple[str, int], float] = field(default_factory=dict)
    offers: Counter[tuple[str, int]] = field(default_factory=Counter)
    leaves: list[tuple[float, str]] = field(default_factory=list)
    """(when, who) for every `leave` seen."""
    events: list[tuple[int, str, str]] = field(default_factory=list)
    """(room_seq, type, participant) of every join and leave seen."""
    errors: Counter[str] = field(default_factory=Counter)
    sent_chats: list[tuple[int, float]] = field(default_factory=list)
    sent_offers: list[tuple[str, int, float]] = field(default_factory=list)
    drops: list[tuple[float, float | None]] = field(default_factory=list)
    """(dropped at, welcomed again at) of each drop the workload made."""
    rejoin: Callable[[], Awaitable[tuple[str, str]]] | None = None
    """If set: after a close saying it is no longer in the room (4003: its edge
    was taken for dead, say), the client joins again over HTTP, as
    docs/protocol.md tells a client to, with the (token, participant id) this
    gives; tried again while it fails."""
    rejoins: int = 0
    closed_for_good: int | None = None
    closed_at: float | None = None
    trace: list[tuple[float, str, Any, Any, Any]] = field(default_factory=list)
    """(when, type, room_seq, from, n) of every message after a welcome."""
    left_at: float | None = None
    ws: Any = None
    welcomed: asyncio.Event = field(default_factory=asyncio.Event)
    heard: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at each broadcast received (a test clears it, then waits on it)."""
    _resume_after: float = 0.0
    _leaving: bool = False
    _attempt: int = 0
    task: "asyncio.Task[None] | None" = None

    @property
    def connected(self) -> bool:
        return self.welcomed.is_set()

    def start(self) -> "Client":
        self.task = asyncio.create_task(self._run(), name=f"client-{self.name}")
        return self

    async def _run(self) -> None:
        self._attempt = self.rng.randrange(1000)
        while True:
            if self._resume_after:
                await asyncio.sleep(self._resume_after)
                self._resume_after = 0.0
            urls = self.edges()
            base = urls[self._attempt % len(urls)]
            self._attempt += 1
            url = base.replace("http://", "ws://") + f"/ws?token={self.token}"
            try:
                async with websockets.connect(url, open_timeout=5, close_timeout=2) as ws:
                    self.ws = ws
                    async for raw in ws:
                        self._see(json.loads(raw), base)
            except (OSError, TimeoutError, websockets.InvalidStatus, websockets.InvalidHandshake):
                await asyncio.sleep(0.1 + self.rng.random() * 0.2)  # the client's backoff
                continue
            except websockets.ConnectionClosed:
                pass
            finally:
                self._ended()
            if self._leaving:
                return
            code = self.ws.close_code if self.ws is not None else None
            if self._resume_after or code in RECONNECT:
                continue
            if code == NOT_IN_ROOM and self.rejoin is not None:
                await self._join_again(self.rejoin)
                continue
            self.closed_for_good = code
            self.closed_at = time.monotonic()
            return

    async def _join_again(self, rejoin: Callable[[], Awaitable[tuple[str, str]]]) -> None:
        while True:
            try:
                self.token, self.pid = await rejoin()
            except Exception:  # the service is not answering yet (a 503, a refused connection)
                await asyncio.sleep(0.2 + self.rng.random() * 0.3)
                continue
            self.rejoins += 1
            return

    def _ended(self) -> None:
        if self.welcomed.is_set():
            self.welcomed.clear()
            segment = self.segments[-1]
            segment.ended_at = time.monotonic()
            segment.close_code = self.ws.close_code if self.ws is not None else None

    def _see(self, message: dict[str, Any], edge: str) -> None:
        now = time.monotonic()
        kind = message.get("type")
        seq = message.get("room_seq")
        if kind == "welcome":
            self.trace.append((round(now, 3), "welcome", seq, edge, None))
            if self.segments and self.segments[-1].ended_at is None:
                # A fresh welcome on the same connection (its edge resynced):
                # a new stretch of room_seq begins.
                self.segments[-1].ended_at = now
            self.segments.append(Segment(edge, now, seq or 0))
            self.view = {p["id"] for p in message["participants"]}
            self.welcomed.set()
            if self.drops and self.drops[-1][1] is None:
                self.drops[-1] = (self.drops[-1][0], now)
            return
        if not self.segments:
            return
        self.trace.append((round(now, 3), str(kind), seq, message.get("from"), message.get("n")))
        if isinstance(seq, int):
            self.segments[-1].seqs.append(seq)
        if kind in ("join", "leave"):
            who = message["data"]["participant_id"]
            if isinstance(seq, int):
                self.events.append((seq, kind, who))
            if kind == "join":
                self.view.add(who)
            else:
                self.view.discard(who)
                self.leaves.append((now, who))
        elif kind == "chat" and "n" in message:
            key = (message["from"], message["n"])
            self.broadcasts[key] += 1
            self.heard.set()
            self.broadcast_times.setdefault(key, now)
        elif kind == "offer" and "n" in message:
            self.offers[message["from"], message["n"]] += 1
        elif kind == "error":
            self.errors[str(message.get("code"))] += 1

    async def _send(self, message: dict[str, Any]) -> bool:
        """Send if connected and welcomed; whether it went out."""
        if not self.welcomed.is_set() or self.ws is None:
            return False
        try:
            await self.ws.send(json.dumps(message))
        except websockets.ConnectionClosed:
            return False
        return True

    async def chat(self, n: int) -> None:
        if await self._send({"type": "chat", "to": "all", "n": n}):
            self.sent_chats.append((n, time.monotonic()))

    async def offer(self, to: str, n: int) -> None:
        sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        if await self._send({"type": "offer", "to": to, "n": n, "sdp": sdp}):
            self.sent_offers.append((to, n, time.monotonic()))

    async def track(self, enabled: bool) -> None:
        await self._send({"type": "track-state", "kind": "audio", "enabled": enabled})

    async def session(self, session_id: str) -> None:
        await self._send({"type": "cloudflare-session", "sessionId": session_id, "tracks": []})

    def drop(self, resume_after: float) -> None:
        """Lose the connection without a Close frame, and resume after a while."""
        if self.ws is None or not self.welcomed.is_set():
            return
        self._resume_after = resume_after
        self.drops.append((time.monotonic(), None))
        self.ws.transport.abort()

    async def leave(self) -> None:
        """Leave for good, cleanly (a Close frame)."""
        self._leaving = True
        self.left_at = time.monotonic()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 10)

    async def stop(self) -> None:
        self._leaving = True
        if self.ws is not None:
            self.ws.transport.abort()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task

    def present(self, at: float) -> Segment | None:
        """The connection this client had at ``at``, if any."""
        for segment in self.segments:
            if segment.welcomed_at <= at and (segment.ended_at is None or at < segment.ended_at):
                return segment
        return None

    def last_seen(self) -> float | None:
        """When its last connection ended."""
        ended = [s.ended_at for s in self.segments if s.ended_at is not None]
        return max(ended) if ended else None

    def changed_near(self, start: float, end: float) -> bool:
        """Whether a connection of this client began or ended between the two."""
        for segment in self.segments:
            if start <= segment.welcomed_at <= end:
                return True
            if segment.ended_at is not None and start <= segment.ended_at <= end:
                return True
        return False
