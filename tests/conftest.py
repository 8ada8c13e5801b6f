"""Fixtures: real nats-server, room actor workers and edges on free loopback ports."""

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.harness import CALLS_APP_ID, CALLS_APP_SECRET, TURN_KEY, TURN_TOKEN, Api, System
from tools.fakecalls import FakeCalls, FakeCallsConfig, FakeCallsServer


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def system(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    """One shared system (nats-server, one worker, one edge) for tests that only
    need a working service; each test uses its own rooms."""
    running = System(tmp_path_factory.mktemp("system"))
    try:
        await running.start()
        yield running
    finally:
        running.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def api(system: System) -> AsyncIterator[Api]:
    client = Api(system.edges[0].url)
    yield client
    await client.close()


@pytest.fixture
def ws_url(system: System) -> str:
    return system.edges[0].ws_url


@pytest.fixture
def make_system(tmp_path: Path) -> Iterator[Callable[..., System]]:
    """A private system per test, for tests that restart or kill processes."""
    made: list[System] = []

    def make(**env: str) -> System:
        running = System(tmp_path / f"system-{len(made)}", extra_env=dict(env))
        made.append(running)
        return running

    yield make
    for running in made:
        with contextlib.suppress(Exception):
            running.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def fake_calls() -> AsyncIterator[FakeCallsServer]:
    """The local stand-in for Cloudflare's Calls API (the only stand-in we use)."""
    config = FakeCallsConfig(
        apps={CALLS_APP_ID: CALLS_APP_SECRET}, turn_keys={TURN_KEY: TURN_TOKEN}
    )
    server = await FakeCallsServer(FakeCalls(config)).start()
    yield server
    await server.stop()
