"""edge.commands: what a room command is retried on, and what ends it (a fake
NATS client answers from a script; the delays are tiny real ones)."""

import asyncio
from typing import Any

import pytest
from nats.errors import ConnectionReconnectingError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from bus_schema import codec, ids
from bus_schema.commands import Ack, CheckMember, Rejected
from bus_schema.errors import ErrorCode
from edge.commands import CommandFailed, RoomCommands

COMMAND = CheckMember(cmd_id="c1", room_id=ids.new_id(), participant_id="p1", issued_at=0)
MOVING = Rejected(code=ErrorCode.NOT_OWNER, message="Room is moving, retry", retryable=True)


class Answer:
    def __init__(self, data: bytes) -> None:
        self.data = data


class ScriptedNats:
    """Answers each request with the next item: an exception to raise, or a reply."""

    def __init__(self, *script: Exception | Any) -> None:
        self.script = list(script)
        self.timeouts: list[float] = []

    async def request(self, subject: str, data: bytes, timeout: float) -> Answer:
        self.timeouts.append(timeout)
        item = self.script.pop(0) if self.script else NoRespondersError()
        if isinstance(item, Exception):
            raise item
        if isinstance(item, bytes):
            return Answer(item)
        return Answer(codec.encode(item))


def commands(nc: ScriptedNats, *, deadline: float = 5.0) -> RoomCommands:
    return RoomCommands(nc, attempt_timeout=2.0, deadline=deadline)  # type: ignore[arg-type]


async def test_no_responders_timeouts_disconnects_and_moves_are_retried() -> None:
    nc = ScriptedNats(
        NoRespondersError(), NatsTimeoutError(), ConnectionReconnectingError(), MOVING, Ack(seq=7)
    )
    assert await commands(nc).send(COMMAND) == Ack(seq=7)
    assert len(nc.timeouts) == 5


async def test_another_rejection_is_returned_at_once() -> None:
    full = Rejected(code=ErrorCode.ROOM_FULL, message="Room is full")
    nc = ScriptedNats(full, Ack(seq=1))
    assert await commands(nc).send(COMMAND) == full
    assert len(nc.timeouts) == 1


async def test_an_undecodable_reply_is_an_internal_error_at_once() -> None:
    nc = ScriptedNats(b"not json", Ack(seq=1))
    with pytest.raises(CommandFailed) as failed:
        await commands(nc).send(COMMAND)
    assert failed.value.code == ErrorCode.INTERNAL
    assert len(nc.timeouts) == 1


@pytest.mark.parametrize("failure", [NoRespondersError(), MOVING])
async def test_the_deadline_ends_it_as_unavailable(failure: Exception | Rejected) -> None:
    nc = ScriptedNats(*[failure] * 1000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CommandFailed) as failed:
        await commands(nc, deadline=0.3).send(COMMAND)
    assert failed.value.code == ErrorCode.UNAVAILABLE
    assert loop.time() - started < 0.3 + 0.25  # no attempt starts past the deadline
    assert 3 <= len(nc.timeouts) < 20  # backoff: 0.02 s doubling, at most 0.25 s
    # Each attempt waits no longer than the time that is left.
    assert all(timeout <= 0.3 for timeout in nc.timeouts)


class TimedNats(ScriptedNats):
    """Also notes when each attempt starts."""

    def __init__(self, *script: Exception | Any) -> None:
        super().__init__(*script)
        self.started: list[float] = []

    async def request(self, subject: str, data: bytes, timeout: float) -> Answer:
        self.started.append(asyncio.get_running_loop().time())
        return await super().request(subject, data, timeout)


async def test_the_backoff_grows_from_20_ms_and_stays_at_most_250_ms() -> None:
    """Attempts come quickly at first (a room that moves is back within
    milliseconds), then every 0.25 s until the deadline (a failover is noticed
    within that): never sooner than the backoff says."""
    nc = TimedNats(*[NoRespondersError()] * 1000)
    with pytest.raises(CommandFailed):
        await commands(nc, deadline=3.0).send(COMMAND)
    gaps = [later - earlier for earlier, later in zip(nc.started, nc.started[1:], strict=False)]
    planned = [0.02, 0.04, 0.08, 0.16, 0.25, 0.25, 0.25]
    assert all(gap >= 0.9 * want for gap, want in zip(gaps, planned, strict=False)), gaps
    assert all(gap >= 0.9 * 0.25 for gap in gaps[4:]), gaps
    assert gaps[0] * 3 < gaps[4], gaps  # it grows
    # Capped: a doubling backoff would make 8 attempts in 3 s, a capped one 16.
    assert len(nc.started) >= 12, gaps
