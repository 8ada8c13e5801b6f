"""One client socket as the fan-out sees it: a bounded output queue.

A client that does not read and lets its pending output pass the bound
(``SEND_QUEUE_BYTES``, counted in UTF-8 bytes) is disconnected (close code
4008). Before that, output past a lower mark (`congestion_mark`) makes the
connection *congested*: its room's feed holds back the senders of the room on
this edge until it drains (`edge.fanout.RoomFeed.until_flowing`), so an edge
short of CPU slows the senders instead of cutting receivers; one that stays
congested while the senders wait is too slow itself and is cut (4008).

A ``welcome`` and its replays (the room's state, which is bounded elsewhere)
count on top of the bound until they are written, so a large room is never
taken for a slow client. Targeted frames that arrive before the client's
``welcome`` are held until it went out.
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bus_schema import ids
from bus_schema.closecodes import CloseCode
from edge import metrics, protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str
    discard_pending: bool = False
    """Close at once, dropping queued frames (a slow consumer); otherwise the
    frames queued before the close (an ``error``, say) go out first."""


def _size(text: str) -> int:
    """The bytes a frame takes on the wire (UTF-8): what the output bound counts."""
    return len(text) if text.isascii() else len(text.encode())


class Connection:
    """A client socket as the fan-out sees it."""

    __slots__ = (
        "_grace",
        "_grace_end",
        "_held",
        "_high",
        "_limit",
        "_low",
        "_pending",
        "_queue",
        "_queued",
        "_wakeup",
        "_written",
        "closing",
        "congested_since",
        "conn_id",
        "identity",
        "on_abandon",
        "on_congestion",
        "opened_at",
        "start_seq",
    )

    def __init__(self, identity: protocol.Identity, *, limit_bytes: int) -> None:
        self.conn_id = ids.new_command_id()
        self.identity = identity
        self.opened_at = time.time()
        """When the socket was accepted (Unix seconds): targeted frames sent
        before it were meant for an earlier connection of the participant."""
        self.start_seq = 0
        """Room events with a higher seq than this are delivered; the rest are in
        the client's ``welcome`` already."""
        self._limit = limit_bytes
        self._high = congestion_mark(limit_bytes)
        self._low = self._high // 4
        self.congested_since = 0.0
        """When the output passed the congestion mark (monotonic seconds; 0: it has not)."""
        self.on_congestion: Callable[[Connection, bool], None] | None = None
        """Told when the connection becomes congested (True) and when it drains (False)."""
        self._queue: deque[str | Close] | None = None
        """Output not yet taken by the writer; none while there is none (an
        empty deque weighs about 600 bytes, and most sockets are idle)."""
        self._wakeup: asyncio.Future[None] | None = None
        """Set while the writer waits for output (a deque and one future weigh
        less than an asyncio.Queue, and there is one per socket)."""
        self._pending = 0
        self._queued = 0
        self._written = 0
        """Bytes ever queued and ever handed to the writer."""
        self._grace = 0
        self._grace_end = 0
        """The last snapshot's size, allowed beyond the bound until the writer
        has passed ``_grace_end`` (where that snapshot ends in the output)."""
        self._held: list[str] | None = []
        self.closing: Close | None = None
        self.on_abandon: Callable[[], object] | None = None
        """Called for a slow consumer: stop reading and writing it at once."""

    @property
    def participant_id(self) -> str:
        return self.identity.participant_id

    def send(self, text: str) -> None:
        """Queue a frame; disconnect the client if its unsent output passes the bound."""
        if self.closing is not None:
            return
        size = _size(text)
        self._pending += size
        limit = self._limit + (self._grace if self._written < self._grace_end else 0)
        if self._pending > limit:
            log.info(
                "conn %s: slow consumer, disconnecting",
                self.conn_id,
                extra={"participant_id": self.participant_id, "conn_id": self.conn_id},
            )
            self.close(CloseCode.SLOW_CONSUMER, "Too slow: output queue full", discard=True)
            return
        self._queued += size
        self._push(text)
        if (
            not self.congested_since
            and self._pending > self._high
            and self._pending > self._high + self._grace_left()
        ):
            self.congested_since = time.monotonic()
            if self.on_congestion is not None:
                self.on_congestion(self, True)

    def _grace_left(self) -> int:
        return self._grace if self._written < self._grace_end else 0

    def _drained(self) -> None:
        self.congested_since = 0.0
        if self.on_congestion is not None:
            self.on_congestion(self, False)

    def send_snapshot(self, texts: list[str]) -> None:
        """A ``welcome`` and its replays: the room's state, bounded by the room's
        own limits, not by this client's speed. They never trip the slow-consumer
        bound by themselves; what is queued after them is held to the bound."""
        if self.closing is not None:
            return
        size = sum(_size(text) for text in texts)
        self._grace = size
        self._grace_end = self._queued + size
        for text in texts:
            self._push(text)
        self._pending += size
        self._queued += size

    def _push(self, item: "str | Close") -> None:
        if self._queue is None:
            self._queue = deque()
        self._queue.append(item)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def send_direct(self, text: str) -> None:
        """A targeted frame from a peer; held until the ``welcome`` went out."""
        metrics.child(metrics.MESSAGES_OUT, "direct").inc()
        if self._held is not None:
            self._held.append(text)
        else:
            self.send(text)

    def go_live(self) -> None:
        held, self._held = self._held or [], None
        for text in held:
            self.send(text)

    def close(self, code: int, reason: str, *, discard: bool = False) -> None:
        if self.closing is None:
            self.closing = Close(code, reason, discard)
            self._push(self.closing)
            if self.congested_since:
                self._drained()  # nothing more is queued: no one waits for it
            if discard:
                metrics.SLOW_CONSUMERS.inc()
                if self.on_abandon is not None:
                    self.on_abandon()

    async def next_output(self) -> str | Close:
        while not self._queue:
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        queue = self._queue
        assert queue is not None
        item = queue.popleft()
        if not queue:
            self._queue = None
        if isinstance(item, str):
            size = _size(item)
            self._pending -= size
            self._written += size
            if self.congested_since and self._pending <= self._low:
                self._drained()
        return item


def congestion_mark(limit_bytes: int) -> int:
    """Unsent output past which a connection holds its room's senders back: a
    quarter of the bound, at most 64 KiB (a fraction of a second of a busy room)."""
    return min(limit_bytes // 4, 64 * 1024)
