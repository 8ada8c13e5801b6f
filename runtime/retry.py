"""Trying an operation again, with the policy stated once where it is used.

A `Retry` says what is tried again (errors of some types or that a predicate
picks; results that a predicate picks, such as an HTTP 503), for how many
attempts or until what deadline, and the backoff between attempts.
`Retry.run(operation)` calls ``operation(attempt)`` until it succeeds, fails
with an error that is not retried, or the attempts or the deadline run out;
then the last error is raised (or the last result returned) for the caller to
map to its own. No attempt starts at or after the deadline, and ``attempt``
says how much time is left, so each attempt can bound its own wait.
Cancellation is never retried.

Hand-written rather than `stamina` or `tenacity`: our call sites retry on
results as well as errors, give each attempt a timeout from the time that is
left, and need a deterministic, injectable clock in tests; this is ~100 lines.
"""

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Seconds between attempts: ``first``, multiplied by ``factor`` after each
    attempt, never more than ``cap``."""

    first: float
    cap: float
    factor: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield min(delay, self.cap)
            delay = min(delay * self.factor, self.cap)


class Attempt(NamedTuple):
    """What an operation knows about the attempt it is making (a tuple: made
    on every call, so it must cost next to nothing)."""

    number: int
    """1 for the first attempt."""
    remaining: float | None
    """Seconds until the deadline (``None``: no deadline)."""

    def timeout(self, most: float, *, least: float = 0.01) -> float:
        """A timeout for this attempt: at most ``most`` and not past the
        deadline (but at least ``least``, so a last attempt is a real one)."""
        if self.remaining is None:
            return most
        return max(least, min(most, self.remaining))


Retryable = tuple[type[Exception], ...] | Callable[[Exception], bool]
"""The errors that are tried again: these types, or those the predicate picks."""


@dataclass(frozen=True, slots=True)
class Retry:
    """A retry policy: what, how often or how long, and how far apart."""

    on: Retryable
    backoff: Backoff
    attempts: int | None = None
    """Attempts at most, the first included."""
    deadline: float | None = None
    """Seconds from the first attempt after which no attempt starts."""
    result: Callable[[Any], bool] | None = None
    """Results that are tried again (the last one is returned when the
    attempts or the deadline run out)."""

    def __post_init__(self) -> None:
        if self.attempts is None and self.deadline is None:
            raise ValueError("a retry needs a number of attempts or a deadline")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError("a retry makes at least one attempt")

    def retries(self, error: Exception) -> bool:
        """Whether ``error`` is tried again (while attempts and time are left)."""
        if isinstance(self.on, tuple):
            return isinstance(error, self.on)
        return self.on(error)

    async def run(
        self,
        operation: Callable[[Attempt], Awaitable[_T]],
        *,
        on_retry: Callable[[object, float], None] | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> _T:
        """``operation``'s result, tried again by this policy. ``on_retry``
        hears of each error or result tried again and the delay before the
        next attempt (to log it)."""
        now = clock or asyncio.get_running_loop().time
        started = now()
        give_up = None if self.deadline is None else started + self.deadline
        remaining = self.deadline
        delays: Iterator[float] | None = None  # made at the first failure: the
        number = 0  # first attempt (nearly every call) costs next to nothing
        while True:
            number += 1
            failed: Exception | None = None
            try:
                outcome = await operation(Attempt(number, remaining))
            except Exception as e:
                if not self.retries(e):
                    raise
                failed = e
            else:
                if self.result is None or not self.result(outcome):
                    return outcome
            if delays is None:
                delays = self.backoff.delays()
            delay = next(delays)
            if self._last(number, now() + delay, give_up):
                if failed is not None:
                    raise failed
                return outcome
            if on_retry is not None:
                on_retry(failed if failed is not None else outcome, delay)
            await sleep(delay)
            remaining = None if give_up is None else give_up - now()

    def _last(self, number: int, next_start: float, give_up: float | None) -> bool:
        """No attempt is left, or the next would start at or past the deadline."""
        out_of_attempts = self.attempts is not None and number >= self.attempts
        return out_of_attempts or (give_up is not None and next_start >= give_up)
