"""Abuse limits: messages and bytes per connection, misbehaviour strikes,
connections and room creations per client address.

All are token buckets kept in this edge's memory: with N edges behind a load
balancer a client address gets up to N times the per-edge allowance, which is
what per-edge limits are for (stopping one noisy client from hurting an edge).
Entries for idle addresses are dropped, so memory stays bounded.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from edge.settings import EdgeSettings


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up. A token is a
    message, or a byte when ``take`` is given a cost."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float | None = None, *, cost: float = 1.0) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


class ConnectionLimits:
    """Per WebSocket: messages and bytes per second (each with a burst), and
    strikes for refused messages; a client out of strikes is closed (1008).

    Counting messages alone would let a client send its whole message burst as
    the largest frames; the byte budget bounds what one socket can make an edge
    relay (and fan out) however it sizes its frames."""

    __slots__ = ("bytes", "messages", "strikes")

    def __init__(self, settings: EdgeSettings) -> None:
        self.messages = TokenBucket(settings.messages_per_second, settings.messages_burst)
        self.bytes = TokenBucket(settings.bytes_per_second, settings.bytes_burst)
        self.strikes = TokenBucket(settings.strikes_per_minute / 60.0, settings.max_strikes)

    def allow_message(self) -> bool:
        return self.messages.take()

    def allow_bytes(self, size: int) -> bool:
        """A frame of ``size`` bytes fits the byte budget (and is counted in it)."""
        return self.bytes.take(cost=size)

    def strike(self) -> bool:
        """Count a refused message; False once the client has used up its strikes."""
        return self.strikes.take()


class AddressLimits:
    """Per client address: open connections, room creations and joins per minute."""

    def __init__(self, settings: EdgeSettings) -> None:
        self._max_connections = settings.max_connections_per_address
        self._header = settings.client_ip_header
        self._connections: dict[str, int] = {}
        self._per_minute = {
            "create": settings.room_creations_per_minute,
            "join": settings.joins_per_minute,
        }
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._last_prune = time.monotonic()

    def address(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """The client's address: the socket peer, or with ``CLIENT_IP_HEADER``
        set (behind a trusted proxy), the last address in that header."""
        if self._header:
            forwarded = headers.get(self._header, "")
            last = forwarded.split(",")[-1].strip()
            if last:
                return last
        return peer or "unknown"

    def open_connection(self, address: str) -> bool:
        count = self._connections.get(address, 0)
        if count >= self._max_connections:
            return False
        self._connections[address] = count + 1
        return True

    def close_connection(self, address: str) -> None:
        count = self._connections.get(address, 0) - 1
        if count > 0:
            self._connections[address] = count
        else:
            self._connections.pop(address, None)

    def create_room(self, address: str) -> bool:
        return self._take("create", address)

    def join(self, address: str) -> bool:
        """A join token (each may cost a call to the TURN API)."""
        return self._take("join", address)

    def _take(self, action: str, address: str) -> bool:
        now = time.monotonic()
        self._prune(now)
        bucket = self._buckets.get((action, address))
        if bucket is None:
            per_minute = self._per_minute[action]
            bucket = self._buckets[(action, address)] = TokenBucket(per_minute / 60.0, per_minute)
        return bucket.take(now)

    def _prune(self, now: float) -> None:
        if now - self._last_prune < 60:
            return
        self._last_prune = now
        for key in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[key]
