"""Fixtures: real nats-server, room actor workers and edges on free loopback ports."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from tests.harness import (
    Api,
    System,
    calls_stand_in,
    close_leftovers,
    opened_count,
)
from tools.fakecalls import FakeCallsServer


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def system(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    """One shared system (nats-server, one worker, one edge) for tests that only
    need a working service; each test uses its own rooms."""
    running = System(tmp_path_factory.mktemp("system"))
    try:
        await running.start()
        yield running
    finally:
        await asyncio.to_thread(running.stop)


@pytest_asyncio.fixture(loop_scope="session")
async def api(system: System) -> AsyncIterator[Api]:
    client = Api(system.edges[0].url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def ws_url(system: System) -> str:
    return system.edges[0].ws_url


@pytest_asyncio.fixture(autouse=True, loop_scope="session")
async def closes_what_the_test_opened() -> AsyncIterator[None]:
    """After each test, close the API clients, sockets, NATS connections and
    background tasks it opened through the harness and left open (a failed
    assertion skips the test's own ``close``), so nothing leaks into the next
    test. What wider fixtures opened before (a module's clients) is theirs."""
    before = opened_count()
    yield
    await close_leftovers(before)


@pytest_asyncio.fixture(loop_scope="session")
async def make_system(tmp_path: Path) -> AsyncIterator[Callable[..., System]]:
    """A private system per test, for tests that restart or kill processes;
    its clients are closed, then its processes stopped, after the test."""
    made: list[System] = []
    before = opened_count()

    def make(**env: str) -> System:
        running = System(tmp_path / f"system-{len(made)}", extra_env=dict(env))
        made.append(running)
        return running

    try:
        yield make
    finally:
        await close_leftovers(before)
        for running in made:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(running.stop)


@pytest_asyncio.fixture(loop_scope="session")
async def fake_calls() -> AsyncIterator[FakeCallsServer]:
    """The local stand-in for Cloudflare's Calls API (the only stand-in we use)."""
    async with calls_stand_in() as server:
        yield server
