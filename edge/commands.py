"""Sending room commands to the owning actor, with retries until a deadline.

A command is retried on timeout, on "no responders" (no worker owns the room
right now), on a lost connection and on a retryable rejection (the room is
moving), with exponential backoff; never on another rejection. Commands carry
an id, so a retry after a lost reply is applied once. When the deadline
passes, `CommandFailed` is raised: the caller tells the client.
"""

import logging
from typing import TypeGuard

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from bus_schema import codec, subjects
from bus_schema.commands import Command, Rejected, Reply
from bus_schema.errors import ErrorCode
from runtime.retry import Attempt, Backoff, Retry

log = logging.getLogger(__name__)


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

    async def send(self, command: Command) -> Reply:
        """Send until a reply arrives. A `Rejected` reply that is not retryable is
        returned to the caller, who maps it to a client error."""
        subject = subjects.room_command(command.room_id)
        data = codec.encode(command)

        async def request(attempt: Attempt) -> Reply:
            timeout = attempt.timeout(self._attempt_timeout)
            msg = await self._nc.request(subject, data, timeout=timeout)
            return codec.replies.decode(msg.data)

        try:
            reply = await self._policy.run(request)
        except NatsError as e:
            raise self._unavailable(command, _reason(e)) from None
        except codec.DecodeError:
            log.exception("undecodable reply to %s", type(command).__name__)
            raise CommandFailed(ErrorCode.INTERNAL, "Internal error") from None
        if _moving(reply):  # still moving at the deadline
            raise self._unavailable(command, reply.code)
        return reply

    @staticmethod
    def _unavailable(command: Command, reason: str) -> CommandFailed:
        log.warning("%s for room %s failed: %s", type(command).__name__, command.room_id, reason)
        return CommandFailed(ErrorCode.UNAVAILABLE, "Room service unavailable, try again")


def _moving(reply: Reply) -> TypeGuard[Rejected]:
    return isinstance(reply, Rejected) and reply.retryable


def _reason(error: NatsError) -> str:
    if isinstance(error, NoRespondersError):
        return "no responders"
    if isinstance(error, NatsTimeoutError):
        return "timeout"
    return type(error).__name__  # disconnected, reconnecting, connection closed
