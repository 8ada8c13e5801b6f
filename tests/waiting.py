"""One way for a test to wait for something to become true: `eventually`, a
poll with a deadline (instead of a loop written again in every test)."""

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    condition: Callable[[], Awaitable[T]] | Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.05,
    message: str | Callable[[], object] = "the condition never held",
    retry_on: tuple[type[Exception], ...] = (),
) -> T:
    """Call ``condition`` (a function or a coroutine function) until it returns
    a true value, and return that value.

    After ``timeout`` seconds, fail with an `AssertionError` saying ``message``
    (a callable is called then, so logs are read as they are at the end). An
    exception in ``retry_on`` counts as "not yet"; the last one is chained to
    the failure. The condition is always tried once more at the deadline.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        error: Exception | None = None
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
        except retry_on as e:
            error = e
        if loop.time() >= deadline:
            raise AssertionError(message() if callable(message) else message) from error
        await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))
