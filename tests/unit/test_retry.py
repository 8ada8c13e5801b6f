"""runtime.retry: attempts, deadline, backoff, what is retried, cancellation
(a fake clock: no time passes unless an attempt or a backoff says so)."""

import asyncio
import itertools

import pytest

from runtime.retry import Attempt, Backoff, Retry


class Boom(Exception):
    pass


class Busy(Boom):
    """A retryable kind of `Boom`."""


class Clock:
    """Time passes only in `sleep` and when an attempt takes some."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self.now += delay


class Operation:
    """Fails with ``errors`` (or returns ``results``) in turn, then returns
    "done"; each attempt takes ``takes`` seconds of the fake clock."""

    def __init__(
        self,
        clock: Clock,
        *,
        errors: list[Exception] | None = None,
        results: list[object] | None = None,
        takes: float = 0.0,
    ) -> None:
        self.clock = clock
        self.errors = list(errors or [])
        self.results = list(results or [])
        self.takes = takes
        self.attempts: list[Attempt] = []

    async def __call__(self, attempt: Attempt) -> object:
        self.attempts.append(attempt)
        self.clock.now += self.takes
        if self.errors:
            raise self.errors.pop(0)
        if self.results:
            return self.results.pop(0)
        return "done"


def test_backoff_grows_to_its_cap() -> None:
    delays = Backoff(0.1, cap=1.0).delays()
    assert [round(d, 3) for d in itertools.islice(delays, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert list(itertools.islice(Backoff(0.5, cap=10.0, factor=3.0).delays(), 3)) == [0.5, 1.5, 4.5]


async def test_retries_until_it_succeeds_with_growing_delays() -> None:
    clock = Clock()
    operation = Operation(clock, errors=[Boom(), Boom(), Boom()])
    policy = Retry(on=(Boom,), attempts=5, backoff=Backoff(0.1, cap=0.3))
    assert await policy.run(operation, clock=clock.time, sleep=clock.sleep) == "done"
    assert [a.number for a in operation.attempts] == [1, 2, 3, 4]
    assert [round(d, 3) for d in clock.slept] == [0.1, 0.2, 0.3]


async def test_gives_up_after_its_attempts_with_the_last_error() -> None:
    clock = Clock()
    last = Boom("third")
    operation = Operation(clock, errors=[Boom("first"), Boom("second"), last, Boom("fourth")])
    policy = Retry(on=(Boom,), attempts=3, backoff=Backoff(0.1, cap=1.0))
    with pytest.raises(Boom) as raised:
        await policy.run(operation, clock=clock.time, sleep=clock.sleep)
    assert raised.value is last
    assert len(operation.attempts) == 3
    assert len(clock.slept) == 2  # no sleep after the last attempt


async def test_no_attempt_starts_at_or_after_the_deadline() -> None:
    clock = Clock()
    operation = Operation(clock, errors=[Boom()] * 100, takes=1.0)
    policy = Retry(on=(Boom,), deadline=4.5, backoff=Backoff(0.5, cap=0.5))
    with pytest.raises(Boom):
        await policy.run(operation, clock=clock.time, sleep=clock.sleep)
    # Attempts start at 0, 1.5 and 3.0; the next would start at 4.5, the deadline.
    assert [a.remaining for a in operation.attempts] == [4.5, 3.0, 1.5]
    assert clock.now - 100.0 == 4.0


async def test_an_attempt_is_given_the_time_that_is_left() -> None:
    attempt = Attempt(3, remaining=0.7)
    assert attempt.timeout(2.0) == 0.7
    assert attempt.timeout(0.5) == 0.5
    assert Attempt(4, remaining=-1.0).timeout(2.0) == 0.01
    assert Attempt(4, remaining=0.0).timeout(2.0, least=0.1) == 0.1
    assert Attempt(1, remaining=None).timeout(2.0) == 2.0


async def test_other_errors_are_not_retried() -> None:
    clock = Clock()
    operation = Operation(clock, errors=[ValueError("bad input")])
    policy = Retry(on=(Boom,), attempts=5, backoff=Backoff(0.1, cap=1.0))
    with pytest.raises(ValueError, match="bad input"):
        await policy.run(operation, clock=clock.time, sleep=clock.sleep)
    assert len(operation.attempts) == 1
    assert clock.slept == []


async def test_a_predicate_picks_what_is_retried() -> None:
    clock = Clock()
    only_busy = Retry(on=lambda e: isinstance(e, Busy), attempts=5, backoff=Backoff(0.1, cap=1.0))
    assert only_busy.retries(Busy())
    assert not only_busy.retries(Boom())
    operation = Operation(clock, errors=[Busy(), Boom("not busy")])
    with pytest.raises(Boom, match="not busy"):
        await only_busy.run(operation, clock=clock.time, sleep=clock.sleep)
    assert len(operation.attempts) == 2


async def test_results_can_be_retried_and_the_last_is_returned() -> None:
    clock = Clock()
    policy = Retry(on=(Boom,), result=lambda r: r == 503, attempts=3, backoff=Backoff(0.1, cap=1.0))
    recovering = Operation(clock, results=[503, 200])
    assert await policy.run(recovering, clock=clock.time, sleep=clock.sleep) == 200
    down = Operation(clock, results=[503, 503, 503, 200])
    assert await policy.run(down, clock=clock.time, sleep=clock.sleep) == 503
    assert len(down.attempts) == 3


async def test_each_retry_is_reported_with_its_delay() -> None:
    clock = Clock()
    error = Boom()
    heard: list[tuple[object, float]] = []
    policy = Retry(on=(Boom,), result=lambda r: r == "again", attempts=4, backoff=Backoff(1, 8))
    operation = Operation(clock, errors=[error], results=["again"])
    await policy.run(
        operation, clock=clock.time, sleep=clock.sleep, on_retry=lambda *h: heard.append(h)
    )
    assert heard == [(error, 1), ("again", 2)]


async def test_cancellation_is_never_retried() -> None:
    started = asyncio.Event()
    attempts = 0

    async def hangs(attempt: Attempt) -> None:
        nonlocal attempts
        attempts += 1
        started.set()
        await asyncio.sleep(60)

    policy = Retry(on=(Exception,), attempts=5, backoff=Backoff(0.001, cap=0.001))
    task = asyncio.create_task(policy.run(hangs))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert attempts == 1


async def test_cancellation_during_the_backoff_stops_it() -> None:
    clock = Clock()
    sleeping = asyncio.Event()

    async def sleep(delay: float) -> None:
        sleeping.set()
        await asyncio.sleep(60)

    operation = Operation(clock, errors=[Boom()] * 5)
    policy = Retry(on=(Boom,), attempts=5, backoff=Backoff(1.0, cap=1.0))
    task = asyncio.create_task(policy.run(operation, clock=clock.time, sleep=sleep))
    await asyncio.wait_for(sleeping.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert len(operation.attempts) == 1


def test_a_policy_is_bounded() -> None:
    with pytest.raises(ValueError, match="attempts or a deadline"):
        Retry(on=(Boom,), backoff=Backoff(0.1, cap=1.0))
    with pytest.raises(ValueError, match="at least one attempt"):
        Retry(on=(Boom,), attempts=0, backoff=Backoff(0.1, cap=1.0))
