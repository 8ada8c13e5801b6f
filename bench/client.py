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


class _Frame(msgspec.Struct):
    """The only fields the load generator looks at."""

    type: str
    ts: int = 0
    """Sender's time.time_ns() for timestamped messages."""
    room_seq: int = 0


_decoder = msgspec.json.Decoder(_Frame)


@dataclass
class Stats:
    """Shared by all clients of one measurement."""

    latencies: list[float] = field(default_factory=list)
    """One-way latencies in seconds of timestamped messages received."""
    received: int = 0
    errors: int = 0
    recording: bool = False

    def reset(self) -> None:
        self.latencies = []
        self.received = 0
        self.errors = 0


class BenchClient(WSListener):  # type: ignore[misc]
    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.transport: WSTransport | None = None
        self.welcomed = asyncio.get_running_loop().create_future()
        self.closed = False

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
            if stats.recording:
                stats.latencies.append(time.time_ns() / 1e9 - message.ts / 1e9)
                stats.received += 1
        elif message.type == "welcome":
            if not self.welcomed.done():
                self.welcomed.set_result(time.perf_counter())
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
