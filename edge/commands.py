"""Sending room commands to the owning actor, with retries until a deadline.

A command is retried on timeout, on "no responders" (no worker owns the room
right now), on a lost connection and on a retryable rejection (the room is
moving), with exponential backoff; never on another rejection. Commands carry
an id, so a retry after a lost reply is applied once. When the deadline
passes, `CommandFailed` is raised: the caller tells the client.

A relayed message (`relay`) is sent quiet: the actor answers a refusal only,
and the edge takes the event carrying the command's id, which comes back on
the room's stream it is subscribed to anyway, as the success (`echoed`). No
reply message, no request machinery per message; a command whose event does
not come back within the attempt timeout goes the ordinary way (`send`, which
the actor answers in full and applies once).

During a failover a command finds no worker ("no responders") until a
survivor serves the room's partition. The survivor announces it
(`bus_schema.subjects.PARTITIONS_SERVED`), and a command waiting to be tried
again goes at once; without the announcement (lost, or not subscribed) it
goes at its next retry, at most `FAILOVER_POLL` later.
"""

import asyncio
import contextlib
import dataclasses
import logging
from typing import TypeGuard

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from bus_schema import codec, subjects
from bus_schema.commands import (
    Ack,
    Broadcast,
    Command,
    PublishSession,
    Rejected,
    Reply,
    SetTrackState,
)
from bus_schema.errors import ErrorCode
from edge import metrics
from runtime.outage import Outage
from runtime.retry import Attempt, Backoff, Retry

log = logging.getLogger(__name__)

COMMANDS = Outage(log, "room commands", "commands", metrics.BUS_OUTAGES, metrics.BUS_FAILURES)
"""Commands that found no worker until their deadline: logged once per episode."""

FAILOVER_POLL = 1.0
"""Seconds between tries of a command whose partition no worker serves, when
the announcement of the survivor that takes it over would wake it earlier."""


class CommandFailed(Exception):
    """No actor acknowledged the command before the deadline."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RoomCommands:
    def __init__(self, nc: Client, *, attempt_timeout: float, deadline: float) -> None:
        self._nc = nc
        self._attempt_timeout = attempt_timeout
        # Every NATS error (no responders: no worker owns the room right now;
        # timeout; disconnected, reconnecting) and a retryable rejection (the
        # room is moving) are tried again until the deadline; at most 0.25 s
        # apart, so a failover is noticed within that.
        self._policy = Retry(
            on=(NatsError,), result=_moving, deadline=deadline, backoff=Backoff(0.02, cap=0.25)
        )
        self._echoes: dict[str, asyncio.Future[Reply | _TimedOut | None]] = {}
        """Quiet commands in flight by id: resolved by their event or a refusal."""
        self._deadline = deadline
        self._progress: dict[str, list[int]] = {}
        """Rooms with quiet commands in flight: [waiting commands, events seen]."""
        self._refusals: Subscription | None = None
        self._refusal_prefix = ""
        self._announcements: Subscription | None = None
        self._served: dict[int, int] = {}
        """Partitions by how many times a worker announced it serves them."""
        self._waiting: dict[int, asyncio.Event] = {}
        """Partitions commands wait for a worker to serve, each with the event
        its announcement sets."""

    async def start(self) -> None:
        """Subscribe to the answers to quiet commands (refusals only) and to
        the announcements of partitions taken over."""
        self._refusal_prefix = self._nc.new_inbox() + "."
        self._refusals = await self._nc.subscribe(self._refusal_prefix + "*", cb=self._on_refusal)
        self._announcements = await self._nc.subscribe(
            subjects.PARTITIONS_SERVED, cb=self._on_served
        )

    async def stop(self) -> None:
        for subscription in (self._refusals, self._announcements):
            if subscription is not None:
                with contextlib.suppress(NatsError):
                    await subscription.unsubscribe()
        self._refusals = self._announcements = None

    def waiting_for(self, partition: int) -> bool:
        """Commands wait for a worker to serve ``partition``."""
        return partition in self._waiting

    async def _on_served(self, msg: Msg) -> None:
        try:
            served = codec.partitions_served.decode(msg.data)
        except codec.DecodeError:
            log.warning("ignored an unreadable announcement of partitions served")
            return
        for partition in served.partitions:
            self._served[partition] = self._served.get(partition, 0) + 1
            waiting = self._waiting.pop(partition, None)
            if waiting is not None:
                waiting.set()

    def echoed(self, room_id: str, cmd_id: str, seq: int) -> None:
        """An event of the command ``cmd_id`` came on a room's stream: if it is
        a quiet command of ours, it succeeded (and the room is moving on)."""
        progress = self._progress.get(room_id)
        if progress is not None:
            progress[1] += 1
        waiter = self._echoes.pop(cmd_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(Ack(seq=seq))

    async def _on_refusal(self, msg: Msg) -> None:
        waiter = self._echoes.pop(msg.subject[len(self._refusal_prefix) :], None)
        if waiter is None or waiter.done():
            return
        try:
            reply: Reply | None = codec.replies.decode(msg.data)
        except codec.DecodeError:
            reply = None  # "no responders" (an empty status message): the ordinary way
        waiter.set_result(reply)

    async def relay(self, command: PublishSession | SetTrackState | Broadcast) -> Reply:
        """Send a relayed message quiet (``command.quiet``); its event is the
        answer. Refusals come back as a reply; anything else (a timeout, no
        worker, the room moving) goes the ordinary way, retried until the
        deadline."""
        if not command.quiet:
            return await self.send(command)
        if self._refusals is None:  # not started, or stopping: answered in full
            return await self.send(msgspec.structs.replace(command, quiet=False))
        loop = asyncio.get_running_loop()
        cmd_id, room_id = command.cmd_id, command.room_id
        progress = self._progress.setdefault(room_id, [0, 0])
        progress[0] += 1
        give_up = loop.time() + self._deadline
        reply: Reply | None = None
        try:
            waiter = self._expect(cmd_id)
            await self._nc.publish(
                subjects.room_command(room_id),
                codec.encode(command),
                reply=self._refusal_prefix + cmd_id,
            )
            while True:
                seen = progress[1]
                # A timer, not `wait_for`: under load every extra hop through
                # the event loop is a full turn of a long ready queue.
                timer = loop.call_later(self._attempt_timeout, _time_out, waiter)
                try:
                    answer = await waiter
                finally:
                    timer.cancel()
                if not isinstance(answer, _TimedOut):
                    reply = answer
                    break
                # The room's events still come (a busy room: ours is queued
                # behind them): keep waiting rather than add a retry to the
                # load. Nothing came: the ordinary way.
                if progress[1] == seen or loop.time() >= give_up:
                    break
                waiter = self._expect(cmd_id)
        except NatsError:
            pass
        finally:
            self._echoes.pop(cmd_id, None)
            progress[0] -= 1
            if not progress[0]:
                del self._progress[room_id]
        if reply is None or _moving(reply):
            metrics.RELAY_FALLBACKS.inc()
            return await self.send(msgspec.structs.replace(command, quiet=False))
        COMMANDS.over()
        return reply

    def _expect(self, cmd_id: str) -> "asyncio.Future[Reply | _TimedOut | None]":
        waiter: asyncio.Future[Reply | _TimedOut | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._echoes[cmd_id] = waiter
        return waiter

    async def send(self, command: Command, *, deadline: float | None = None) -> Reply:
        """Send until a reply arrives. A `Rejected` reply that is not retryable is
        returned to the caller, who maps it to a client error. ``deadline``
        shortens the command deadline for this command."""
        subject = subjects.room_command(command.room_id)
        data = codec.encode(command)
        partition = subjects.partition_of(command.room_id)
        last: list[object] = [None, 0]  # the last attempt's failure, announcements before it

        async def request(attempt: Attempt) -> Reply:
            last[1] = self._served.get(partition, 0)
            timeout = attempt.timeout(self._attempt_timeout)
            try:
                msg = await self._nc.request(subject, data, timeout=timeout)
            except NatsError as e:
                last[0] = e
                raise
            reply = last[0] = codec.replies.decode(msg.data)
            return reply

        async def pause(delay: float) -> None:
            failover = isinstance(last[0], NoRespondersError) or (
                isinstance(last[0], Rejected) and _moving(last[0])
            )
            if not failover or self._announcements is None:
                await asyncio.sleep(delay)
            elif self._served.get(partition, 0) == last[1]:  # not served since the try
                waiting = self._waiting.setdefault(partition, asyncio.Event())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiting.wait(), max(delay, FAILOVER_POLL))

        try:
            policy = self._policy
            if deadline is not None and deadline < self._deadline:
                policy = dataclasses.replace(policy, deadline=deadline)
            reply = await policy.run(request, sleep=pause)
        except NatsError as e:
            raise self._unavailable(command, _reason(e)) from None
        except codec.DecodeError:
            log.exception("undecodable reply to %s", type(command).__name__)
            raise CommandFailed(ErrorCode.INTERNAL, "Internal error") from None
        if _moving(reply):  # still moving at the deadline
            raise self._unavailable(command, reply.code)
        COMMANDS.over()
        return reply

    @staticmethod
    def _unavailable(command: Command, reason: str) -> CommandFailed:
        log.debug("%s for room %s failed: %s", type(command).__name__, command.room_id, reason)
        COMMANDS.failed(reason)
        return CommandFailed(ErrorCode.UNAVAILABLE, "Room service unavailable, try again")


class _TimedOut:
    """An attempt's time ran out before the echo or a refusal came."""


_TIMED_OUT = _TimedOut()


def _time_out(waiter: "asyncio.Future[Reply | _TimedOut | None]") -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


def _moving(reply: Reply) -> TypeGuard[Rejected]:
    return isinstance(reply, Rejected) and reply.retryable


def _reason(error: NatsError) -> str:
    if isinstance(error, NoRespondersError):
        return "no responders"
    if isinstance(error, NatsTimeoutError):
        return "timeout"
    return type(error).__name__  # disconnected, reconnecting, connection closed
