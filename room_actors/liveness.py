"""Edge liveness: which edges are alive, from their heartbeats.

Every edge publishes a heartbeat each ``HEARTBEAT_INTERVAL``. An edge not heard
from for ``EDGE_TIMEOUT`` is dead, and so is an edge this worker has never heard
from once the worker itself has listened for ``EDGE_TIMEOUT`` (participants left
behind by an edge that died before this worker started). The worker then makes
the connected participants of dead edges leave the rooms it owns.

Silence is evidence only if the worker could hear: while it hears no edge at
all (its own node paused or cut off), no edge is taken for dead, and once it
hears again every edge gets a whole ``EDGE_TIMEOUT`` from then (found by the
nemesis: a worker on a paused node took all three edges for dead at once).
"""

import logging
import time

from nats.aio.msg import Msg

from bus_schema import codec

log = logging.getLogger(__name__)


class EdgeLiveness:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._started = time.monotonic()
        self._last_seen: dict[str, float] = {}
        self._heard = self._started
        """When any edge was last heard (or the worker started listening)."""

    async def on_heartbeat(self, msg: Msg) -> None:
        try:
            heartbeat = codec.edge_heartbeat.decode(msg.data)
        except codec.DecodeError:
            log.warning("dropped an undecodable heartbeat on %s", msg.subject)
            return
        now = time.monotonic()
        if now - self._heard > self.timeout:
            # Deaf until now: the silence was this worker's, not the edges'.
            log.info("edge heartbeats heard again; every edge gets %.1f s from now", self.timeout)
            self._started = now
            self._last_seen = dict.fromkeys(self._last_seen, now)
        self._heard = now
        self._last_seen[heartbeat.edge_id] = now

    def dead(self, edge_ids: set[str]) -> frozenset[str]:
        """Those of ``edge_ids`` that are dead."""
        now = time.monotonic()
        if now - self._heard > self.timeout:
            return frozenset()  # this worker hears no edge at all: it cannot tell
        if now - self._started < self.timeout:
            return frozenset(
                e
                for e in edge_ids
                if e in self._last_seen and now - self._last_seen[e] > self.timeout
            )
        return frozenset(e for e in edge_ids if now - self._last_seen.get(e, -1e9) > self.timeout)

    def forget_stale(self) -> None:
        """Drop edges silent for a long time (memory stays bounded)."""
        cutoff = time.monotonic() - 10 * self.timeout
        for edge_id in [e for e, seen in self._last_seen.items() if seen < cutoff]:
            del self._last_seen[edge_id]
