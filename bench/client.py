"""The load generator's WebSocket client: picows (C-accelerated frames) with
msgspec decoding only the fields a scenario reads.

Every client records what it needs as frames arrive (latencies of timestamped
messages, the welcome, errors); nothing is buffered per frame beyond that.
"""

import asyncio
import time
from dataclasses import dataclass, field

import msgspec
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect


class _Who(msgspec.Struct):
    """A participant named in a ``welcome`` (``id``) or a ``join``/``leave``
    (``data.participant_id``)."""

    id: str = ""
    participant_id: str = ""


class _Frame(msgspec.Struct):
    """The only fields the load generator looks at."""

    type: str
    ts: int = 0
    """Sender's time.time_ns() for timestamped messages."""
    room_seq: int = 0
    participant_id: str = ""
    """In the ``welcome``: the client's own id."""
    participants: list[_Who] = []
    """In the ``welcome``: everyone in the room (ourselves included)."""
    data: _Who | None = None
    """In ``join`` and ``leave``: who."""


_decoder = msgspec.json.Decoder(_Frame)


@dataclass
class Stats:
    """Shared by all clients of one measurement."""

    latencies: list[float] = field(default_factory=list)
    """One-way latencies in seconds of timestamped messages received."""
    offers: list[float] = field(default_factory=list)
    """Those of ``offer`` frames only: the first of each call set-up burst, so
    not queued behind the rest of its burst."""
    received: int = 0
    errors: int = 0
    recording: bool = False
    _awaited: int = field(default=-1, init=False, repr=False)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    membership: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    """Set when a client learns of a member (its welcome, a join, a leave)."""

    since_ns: int = 0
    """Messages sent before this (Unix ns) are not counted: under overload the
    warm-up's may still be arriving while the measurement runs."""

    def reset(self) -> None:
        self.latencies = []
        self.offers = []
        self.received = 0
        self.errors = 0
        self.since_ns = time.time_ns()

    def count(self) -> None:
        """One more timestamped message received while recording."""
        self.received += 1
        if self.received == self._awaited:
            self._arrived.set()

    async def until_received(self, count: int) -> None:
        """Until ``count`` timestamped messages have arrived (bound it with
        ``asyncio.timeout``: lost messages never arrive)."""
        if self.received >= count:
            return
        self._awaited = count
        self._arrived.clear()
        try:
            await self._arrived.wait()
        finally:
            self._awaited = -1


class BenchClient(WSListener):  # type: ignore[misc]
    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.transport: WSTransport | None = None
        self.welcomed = asyncio.get_running_loop().create_future()
        self.closed = False
        self.participant_id = ""
        """Our own id, from the ``welcome``."""
        self.peers: set[str] = set()
        """The others in the room: from the ``welcome``, then ``join`` and ``leave``."""

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        if not self.welcomed.done():
            self.welcomed.set_exception(ConnectionError("closed before welcome"))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        message = _decoder.decode(frame.get_payload_as_bytes())
        stats = self.stats
        if message.ts:
            if stats.recording and message.ts >= stats.since_ns:
                latency = time.time_ns() / 1e9 - message.ts / 1e9
                stats.latencies.append(latency)
                if message.type == "offer":
                    stats.offers.append(latency)
                stats.count()
        elif message.type == "welcome":
            self.participant_id = message.participant_id
            self.peers = {p.id for p in message.participants if p.id != message.participant_id}
            stats.membership.set()
            if not self.welcomed.done():
                self.welcomed.set_result(time.perf_counter())
        elif message.type == "join" and message.data is not None:
            self.peers.add(message.data.participant_id)
            stats.membership.set()
        elif message.type == "leave" and message.data is not None:
            self.peers.discard(message.data.participant_id)
            stats.membership.set()
        elif message.type == "error":
            stats.errors += 1

    def send(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, payload)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.send_close()
            self.transport.disconnect()


async def connect(url: str, stats: Stats) -> BenchClient:
    _, client = await ws_connect(lambda: BenchClient(stats), url, websocket_handshake_timeout=30)
    assert isinstance(client, BenchClient)
    return client


def timestamped(kind: str = "bench") -> bytes:
    """A broadcast carrying its send time (the server relays unknown fields)."""
    return b'{"type":"%s","to":"all","ts":%d}' % (kind.encode(), time.time_ns())
