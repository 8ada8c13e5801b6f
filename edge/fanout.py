"""Room subscriptions and per-connection output queues.

An edge subscribes to a room's events only while one of its clients is in the
room (reference counted: subscribe on the first, unsubscribe after the last).
Each `RoomFeed` applies the room's events in sequence order, renders each event
once and hands the text to every local connection that should see it. A feed
that sees a gap in the sequence (core NATS is at most once) resynchronises from
the actor: it gets the missed events when the actor still has them (clients
notice nothing), or a snapshot, and then sends its clients a fresh ``welcome``
instead of delivering a wrong view.

Each local client is a `edge.connection.Connection` with a bounded output
queue. When one of a room's connections has more output waiting than its
congestion mark (the edge is short of CPU, or the client reads slowly), the
room's senders on this edge are not read until it drains (`until_flowing`):
demand beyond what the edge can deliver slows the senders, and well-behaved
receivers lose nothing. A connection still congested after
``BACKPRESSURE_STALL`` seconds of that is too slow itself: it is cut (4008) and
the room goes on.

Targeted frames from other edges are checked (`protocol.peer_frame`) before a
client sees them: a compromised edge cannot forge a ``welcome`` or speak for a
participant who is not in the room.
"""

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus_schema import codec, ids, subjects
from bus_schema.closecodes import CloseCode
from bus_schema.commands import Catchup, GetSnapshot, Snapshot
from bus_schema.control import KICKED, CloseConnection
from bus_schema.events import (
    Broadcasted,
    Event,
    ParticipantJoined,
    ParticipantLeft,
    RoomClosed,
    SessionPublished,
    TrackMuted,
    TrackStateChanged,
)
from edge import metrics, protocol
from edge.commands import CommandFailed, RoomCommands
from edge.connection import Connection

log = logging.getLogger(__name__)

RECENT_EVENTS = 256
"""Rendered events each feed keeps, to catch up a client that joined behind it."""
BACKPRESSURE_STALL = 2.0
"""Seconds a congested connection may hold its room's senders back before it is
cut as a slow consumer (close 4008)."""
_STALL_CHECK = 0.25
"""How often a held-back sender looks for connections past the stall."""
PEER_CLOCK_MARGIN = 0.25
"""Seconds by which the edges' clocks may disagree (NTP keeps them far
closer): a targeted frame is taken for older than a connection only if it was
sent this much before the connection was opened."""
WAITING_PEER_FRAMES = 256
"""Targeted frames a feed keeps while it cannot check their sender yet (no
snapshot yet, or resyncing); more are dropped."""


class RoomFeed:
    """One room's event subscription on this edge, shared by its local clients."""

    def __init__(self, room_id: str, *, request_resync: Callable[["RoomFeed"], None]) -> None:
        self.room_id = room_id
        self.refs = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.subscriptions: list[Subscription] = []
        self.seq: int | None = None
        """The last event applied; ``None`` until the first snapshot arrives."""
        self.members: set[str] = set()
        self.connections: dict[str, Connection] = {}
        self._by_participant: dict[str, Connection] = {}
        """Where targeted messages for a local participant go (its newest socket)."""
        self._recent: deque[tuple[int, str, str]] = deque(maxlen=RECENT_EVENTS)
        self._commands_order: deque[str] = deque(maxlen=RECENT_EVENTS)
        self._commands_seen: set[str] = set()
        self._buffer: list[Event] = []
        self._waiting_peers: list[tuple[str, bytes, float | None]] = []
        """Targeted frames that came before the feed could check their sender."""
        self._request_resync = request_resync
        self.resyncing = False
        self._congested: set[Connection] = set()
        self._flowing: asyncio.Future[None] | None = None
        """Resolved when no connection of the room is congested any more."""

    @property
    def congested(self) -> bool:
        return bool(self._congested)

    def _on_congestion(self, connection: Connection, congested: bool) -> None:
        if congested:
            self._congested.add(connection)
            return
        self._congested.discard(connection)
        if not self._congested and self._flowing is not None and not self._flowing.done():
            self._flowing.set_result(None)

    async def until_flowing(self) -> None:
        """Wait (a sender's next frame) until no connection of the room is
        congested; cut those that stay congested for ``BACKPRESSURE_STALL``."""
        metrics.BACKPRESSURE_WAITS.inc()
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            while self._congested:
                if self._flowing is None or self._flowing.done():
                    self._flowing = loop.create_future()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._flowing), _STALL_CHECK)
                self._cut_stalled(time.monotonic())
        finally:
            metrics.BACKPRESSURE_SECONDS.inc(time.monotonic() - started)

    def _cut_stalled(self, now: float) -> None:
        for connection in list(self._congested):
            if now - connection.congested_since >= BACKPRESSURE_STALL:
                log.info(
                    "conn %s: slow consumer (behind for %.1f s while the room waited), "
                    "disconnecting",
                    connection.conn_id,
                    now - connection.congested_since,
                    extra={"participant_id": connection.participant_id},
                )
                connection.close(
                    CloseCode.SLOW_CONSUMER, "Too slow: the room waited for you", discard=True
                )

    def on_event(self, event: Event) -> None:
        if self.seq is None or self.resyncing:
            self._buffer.append(event)
            return
        if event.seq <= self.seq:
            return
        if event.seq > self.seq + 1:
            log.info("room %s: gap (%d after %d), resyncing", self.room_id, event.seq, self.seq)
            self._buffer.append(event)
            self._request_resync(self)
            return
        self._apply(event)

    def _apply(self, event: Event) -> None:
        self.seq = event.seq
        if event.cmd_id:
            if event.cmd_id in self._commands_seen:
                return  # a command applied again by a new owner: delivered already
            if len(self._commands_order) == self._commands_order.maxlen:
                self._commands_seen.discard(self._commands_order[0])
            self._commands_order.append(event.cmd_id)
            self._commands_seen.add(event.cmd_id)
        text = _render(event)
        match event:
            case ParticipantJoined():
                self.members.add(event.participant_id)
            case ParticipantLeft():
                self.members.discard(event.participant_id)
        # A mute by someone else (an operator) is news to the participant too.
        about = "" if isinstance(event, TrackMuted) else event.participant_id
        self._recent.append((event.seq, about, text))
        delivered = 0
        for connection in self.connections.values():
            if event.seq <= connection.start_seq:
                continue
            if about != connection.participant_id:
                connection.send(text)
                delivered += 1
            elif isinstance(event, ParticipantLeft) and event.reason == "edge_lost":
                # The room took this edge for dead (it was cut off from NATS
                # past EDGE_TIMEOUT) and removed its participants: this socket
                # is in the room no more. Its client reconnects and joins again.
                connection.close(
                    CloseCode.TRY_AGAIN_LATER, "Connection to the room lost, reconnect"
                )
        if delivered:
            metrics.child(metrics.MESSAGES_OUT, _OUT_KIND[type(event)]).inc(delivered)
        if isinstance(event, RoomClosed):
            for connection in list(self.connections.values()):
                connection.close(CloseCode.ROOM_NOT_FOUND, "Room closed")

    def add(self, connection: Connection, snapshot: Snapshot) -> None:
        """Start delivering to a connection whose Join returned ``snapshot``:
        its ``welcome``, then exactly the events after the snapshot."""
        connection.start_seq = snapshot.seq
        connection.on_congestion = self._on_congestion
        _send_welcome(connection, snapshot, replays=True)
        connection.go_live()
        self.connections[connection.conn_id] = connection
        if self.seq is None:
            self._adopt(snapshot)
            return
        if self.seq > snapshot.seq:
            missed = [r for r in self._recent if r[0] > snapshot.seq]
            if not missed or missed[0][0] != snapshot.seq + 1:
                self._request_resync(self)
                return
            for _seq, about, text in missed:
                if about != connection.participant_id:
                    connection.send(text)
            connection.start_seq = self.seq

    def expect(self, connection: Connection) -> None:
        """A socket about to join: targeted messages for it are held until its
        ``welcome`` is sent."""
        self._by_participant[connection.participant_id] = connection

    def holds(self, participant_id: str) -> bool:
        """The participant's newest socket is on this edge."""
        return participant_id in self._by_participant

    def on_peer(self, participant_id: str, data: bytes, sent_at: float | None = None) -> None:
        """A targeted message for a participant of this room (maybe not local),
        sent at ``sent_at`` (Unix seconds; ``None``: just now, or not said).
        Until the feed knows the room's members (before its first snapshot,
        while resyncing) it is kept, and checked once they are known."""
        if participant_id not in self._by_participant:
            return  # someone on another edge: not ours to check or deliver
        if self.seq is None or self.resyncing:
            if len(self._waiting_peers) < WAITING_PEER_FRAMES:
                self._waiting_peers.append((participant_id, data, sent_at))
            else:
                _dropped_peer_frame(self.room_id, "overflow")
            return
        self._deliver_peer(participant_id, data, sent_at)

    def _deliver_peer(self, participant_id: str, data: bytes, sent_at: float | None) -> None:
        connection = self._by_participant.get(participant_id)
        if connection is None:
            return
        if sent_at is not None and sent_at < connection.opened_at - PEER_CLOCK_MARGIN:
            # Sent before this connection was opened, and held by the network
            # (found by the nemesis: a node paused 5 s): the participant's
            # earlier connection had it, or it is lost (at most once).
            metrics.child(metrics.PEER_FRAMES_DROPPED, "sent_before_connection").inc()
            return
        try:
            text = protocol.peer_frame(data, participant_id, self.members)
        except protocol.RefusedPeerFrame as e:
            _dropped_peer_frame(self.room_id, e.reason)
            return
        connection.send_direct(text)

    def _release_waiting_peers(self) -> None:
        """The members are known again: check and deliver what was kept."""
        waiting, self._waiting_peers = self._waiting_peers, []
        for participant_id, data, sent_at in waiting:
            self._deliver_peer(participant_id, data, sent_at)

    def give_up(self) -> None:
        """The room's state could not be had: forget what waited for it."""
        self.resyncing = False
        self._waiting_peers = []

    def remove(self, connection: Connection) -> None:
        connection.on_congestion = None
        self._on_congestion(connection, False)
        self.connections.pop(connection.conn_id, None)
        if self._by_participant.get(connection.participant_id) is connection:
            del self._by_participant[connection.participant_id]

    def caught_up(self, events: list[Event], skip_to: int = 0) -> None:
        """The actor still had the events we missed: deliver them as if they had
        arrived in order. Clients notice nothing (but a skip in ``room_seq``
        after the room moved to another worker)."""
        self.resyncing = False
        if self.seq is not None and skip_to > self.seq:
            self.seq = skip_to
        for event in events:
            if self.seq is not None and event.seq == self.seq + 1:
                self._apply(event)
        self._drain_buffer(resynced=True)

    def resynced(self, snapshot: Snapshot) -> None:
        """A fresh snapshot after a gap: every client gets a new ``welcome``."""
        self.resyncing = False
        if self.seq is not None and snapshot.seq < self.seq:
            # An older view than what the clients already have: wait for events.
            self._drain_buffer(resynced=True)
            return
        present = {p.id: p.conn_id for p in snapshot.participants}
        for connection in list(self.connections.values()):
            conn_id = present.get(connection.participant_id)
            if conn_id is None:
                # Removed while we were not listening (this edge was taken for
                # dead): the client reconnects and joins again.
                connection.close(
                    CloseCode.TRY_AGAIN_LATER, "Connection to the room lost, reconnect"
                )
            elif conn_id != connection.conn_id:
                connection.close(CloseCode.REPLACED, "Replaced by a newer connection")
            else:
                connection.start_seq = snapshot.seq
                _send_welcome(connection, snapshot, replays=False)
        self._adopt(snapshot, resynced=True)

    def _adopt(self, snapshot: Snapshot, *, resynced: bool = False) -> None:
        self.seq = snapshot.seq
        # Hidden participants are not addressable, and send to no one by `to`.
        self.members = {p.id for p in snapshot.participants if not p.hidden}
        self._recent.clear()
        self._drain_buffer(resynced=resynced)

    def _drain_buffer(self, *, resynced: bool) -> None:
        """Apply the events that arrived while waiting for a snapshot. After a
        resync, events that still leave a gap cannot be right (the snapshot is at
        least as new as any real event received before it) and are dropped;
        otherwise a gap means events were lost, and the feed resyncs."""
        buffered = sorted(self._buffer, key=lambda e: e.seq)
        self._buffer = []
        for index, event in enumerate(buffered):
            if self.seq is None or event.seq <= self.seq:
                continue
            if event.seq == self.seq + 1:
                self._apply(event)
            elif resynced:
                log.warning("room %s: dropped event %d after %d", self.room_id, event.seq, self.seq)
            else:
                self._buffer = buffered[index:]
                self._request_resync(self)
                return
        self._release_waiting_peers()


def _send_welcome(connection: Connection, snapshot: Snapshot, *, replays: bool) -> None:
    metrics.child(metrics.MESSAGES_OUT, "welcome").inc()
    texts = [protocol.welcome(connection.participant_id, snapshot)]
    if replays:
        texts += protocol.session_replays(connection.participant_id, snapshot)
    connection.send_snapshot(texts)


class _Throttled:
    """A warning at most once per ``interval`` seconds, with the number of those
    left out: a compromised edge cannot flood the log through us."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        suppressed, self._suppressed = self._suppressed, 0
        self._next = now + self._interval
        log.warning(message + "; %d more since the last warning", *args, suppressed)


_peer_warnings = _Throttled(10.0)


def _sent_at(msg: Msg) -> float | None:
    """When the sending edge sent a targeted frame (``None``: not said, as by
    an edge of an earlier version, or not a number)."""
    value = (msg.headers or {}).get(subjects.PEER_SENT_AT)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _dropped_peer_frame(room_id: str, reason: str) -> None:
    metrics.child(metrics.PEER_FRAMES_DROPPED, reason).inc()
    _peer_warnings.warning("room %s: dropped a targeted frame from the bus (%s)", room_id, reason)


_OUT_KIND: dict[type, str] = {
    ParticipantJoined: "join",
    ParticipantLeft: "leave",
    SessionPublished: "cloudflare-session",
    TrackStateChanged: "track-state",
    TrackMuted: "track-state",
    Broadcasted: "other",
    RoomClosed: "room-closed",
}


def _render(event: Event) -> str:
    match event:
        case ParticipantJoined():
            return protocol.joined(event)
        case ParticipantLeft():
            return protocol.left(event)
        case SessionPublished() | TrackStateChanged() | Broadcasted():
            return protocol.relayed(event.frame, event.seq)
        case TrackMuted():
            return protocol.track_muted(event)
        case RoomClosed():
            return protocol.room_closed(event)


class Fanout:
    """All room feeds and connections of this edge."""

    def __init__(self, nc: Client, commands: RoomCommands, edge_id: str) -> None:
        self._nc = nc
        self._commands = commands
        self.edge_id = edge_id
        self._feeds: dict[str, RoomFeed] = {}
        self._connections: dict[str, Connection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._control: Subscription | None = None

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def room_count(self) -> int:
        return len(self._feeds)

    async def start(self) -> None:
        self._control = await self._nc.subscribe(
            subjects.edge_control(self.edge_id), cb=self._on_control
        )

    async def acquire(self, room_id: str) -> RoomFeed:
        """The room's feed, subscribed before this returns."""
        feed = self._feeds.get(room_id)
        if feed is None:
            feed = RoomFeed(room_id, request_resync=self._request_resync)
            self._feeds[room_id] = feed
            feed.refs += 1
            try:
                feed.subscriptions = [
                    await self._nc.subscribe(subjects.room_events(room_id), cb=self._on_event),
                    await self._nc.subscribe(
                        subjects.room_peers(room_id), cb=functools.partial(self._on_peer, feed)
                    ),
                ]
            except BaseException as e:
                feed.ready.set_exception(e)
                await self.release(feed)
                raise
            feed.ready.set_result(None)
            return feed
        feed.refs += 1
        try:
            await asyncio.shield(feed.ready)
        except BaseException:
            await self.release(feed)
            raise
        return feed

    async def release(self, feed: RoomFeed) -> None:
        feed.refs -= 1
        if feed.refs > 0:
            return
        if self._feeds.get(feed.room_id) is feed:
            del self._feeds[feed.room_id]
        for subscription in feed.subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    def register(self, connection: Connection) -> None:
        self._connections[connection.conn_id] = connection

    def unregister(self, connection: Connection) -> None:
        self._connections.pop(connection.conn_id, None)

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = codec.events.decode(msg.data)
        except codec.DecodeError:
            log.warning("dropped an undecodable event on %s", msg.subject)
            return
        if event.cmd_id:
            self._commands.echoed(event.room_id, event.cmd_id, event.seq)
        feed = self._feeds.get(event.room_id)
        if feed is not None:
            feed.on_event(event)

    async def _on_peer(self, feed: RoomFeed, msg: Msg) -> None:
        """A targeted frame on the subscription of ``feed``. A feed released
        while its subscription was still being removed can be followed at once
        by a new feed of the room with a subscription of its own: the old
        subscription's frames are not the new feed's, or each would be
        delivered twice (found by the nemesis: an `offer` arrived twice)."""
        if self._feeds.get(feed.room_id) is not feed:
            return
        participant_id = msg.subject.rsplit(".", 1)[1]
        feed.on_peer(participant_id, msg.data, _sent_at(msg))

    async def _on_control(self, msg: Msg) -> None:
        try:
            message = codec.control.decode(msg.data)
        except codec.DecodeError:
            log.warning("dropped an undecodable control message")
            return
        if isinstance(message, CloseConnection):
            connection = self._connections.get(message.conn_id)
            if connection is not None:
                if message.notice == KICKED:
                    connection.send(protocol.kicked(connection.identity.room_id, message.by))
                connection.close(message.code, message.reason)

    def resync_all(self) -> None:
        """After a NATS reconnect events may have been lost: resync every feed."""
        for feed in list(self._feeds.values()):
            if feed.seq is not None:
                self._request_resync(feed)

    def _request_resync(self, feed: RoomFeed) -> None:
        if feed.resyncing:
            return
        feed.resyncing = True
        task = asyncio.create_task(self._resync(feed), name=f"resync-{feed.room_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resync(self, feed: RoomFeed) -> None:
        command = GetSnapshot(cmd_id=ids.new_command_id(), room_id=feed.room_id, since=feed.seq)
        try:
            reply = await self._commands.send(command)
        except CommandFailed:
            reply = None
        if isinstance(reply, Catchup):
            feed.caught_up(reply.events, reply.skip_to)
            return
        if not isinstance(reply, Snapshot):
            log.warning("room %s: resync failed, closing its connections", feed.room_id)
            feed.give_up()
            for connection in list(feed.connections.values()):
                connection.close(CloseCode.TRY_AGAIN_LATER, "Room state unavailable, reconnect")
            return
        feed.resynced(reply)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._control is not None:
            with contextlib.suppress(Exception):
                await self._control.unsubscribe()
