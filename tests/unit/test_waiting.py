"""`tests.waiting.eventually`, the one poll loop the tests wait with."""

import asyncio

import pytest

from tests.waiting import eventually


async def test_returns_the_first_true_value_of_a_function_or_a_coroutine() -> None:
    calls: list[int] = []

    def third_time() -> str | None:
        calls.append(1)
        return "done" if len(calls) == 3 else None

    assert await eventually(third_time, timeout=5, interval=0) == "done"
    assert len(calls) == 3

    async def at_once() -> list[int]:
        return [1]

    assert await eventually(at_once, timeout=5) == [1]


async def test_fails_with_the_message_at_the_deadline_after_a_last_try() -> None:
    calls: list[float] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    logs = ["starting"]

    def never() -> bool:
        calls.append(loop.time() - started)
        logs.append("still not")
        return False

    with pytest.raises(AssertionError, match=r"never: \['starting', .*'still not'\]"):
        await eventually(never, timeout=0.3, interval=0.1, message=lambda: f"never: {logs}")
    assert calls[-1] >= 0.3  # tried once more at the deadline
    assert 3 <= len(calls) <= 6


async def test_retries_the_given_exceptions_and_no_other() -> None:
    attempts: list[int] = []

    def flaky() -> bool:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("not yet")
        return True

    def down() -> bool:
        raise ConnectionError("refused")

    assert await eventually(flaky, timeout=5, interval=0, retry_on=(ConnectionError,))
    with pytest.raises(AssertionError, match="down") as failed:
        await eventually(down, timeout=0.1, message="down", retry_on=(ConnectionError,))
    assert isinstance(failed.value.__cause__, ConnectionError)
    with pytest.raises(ValueError, match="bad"):
        await eventually(lambda: int("bad"), timeout=5, retry_on=(ConnectionError,))
