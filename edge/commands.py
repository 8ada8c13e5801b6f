"""Sending room commands to the owning actor, with retries until a deadline.

A command is retried on timeout, on "no responders" (no worker owns the room
right now) and on a retryable rejection (the room is moving), with exponential
backoff. Commands carry an id, so a retry after a lost reply is applied once.
When the deadline passes, `CommandFailed` is raised: the caller tells the client.
"""

import asyncio
import logging

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from bus_schema import codec, subjects
from bus_schema.commands import Command, Rejected, Reply
from bus_schema.errors import ErrorCode

log = logging.getLogger(__name__)

_MAX_BACKOFF = 0.25
"""Seconds between retries at most: a failover is noticed within this."""


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
        self._deadline = deadline

    async def send(self, command: Command) -> Reply:
        """Send until a reply arrives. A `Rejected` reply that is not retryable is
        returned to the caller, who maps it to a client error."""
        subject = subjects.room_command(command.room_id)
        data = codec.encode(command)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._deadline
        delay = 0.02
        while True:
            timeout = max(0.01, min(self._attempt_timeout, give_up - loop.time()))
            try:
                msg = await self._nc.request(subject, data, timeout=timeout)
                reply = codec.replies.decode(msg.data)
                if not (isinstance(reply, Rejected) and reply.retryable):
                    return reply
                reason = reply.code
            except NoRespondersError:
                reason = "no responders"
            except NatsTimeoutError:
                reason = "timeout"
            except NatsError as e:  # disconnected, reconnecting, connection closed
                reason = type(e).__name__
            except codec.DecodeError:
                log.exception("undecodable reply to %s", type(command).__name__)
                raise CommandFailed(ErrorCode.INTERNAL, "Internal error") from None
            if loop.time() + delay >= give_up:
                log.warning(
                    "%s for room %s failed: %s", type(command).__name__, command.room_id, reason
                )
                raise CommandFailed(ErrorCode.UNAVAILABLE, "Room service unavailable, try again")
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)
