"""runtime.services.MicroService on nats-py's own micro ``Service``, against a
real nats-server: endpoints come and go as partitions move, and ``remove``
reaches into nats-py's private ``_endpoints`` and ``_stop`` (nats-py has no
call for it), so this is what notices when a nats-py upgrade changes them."""

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus_schema import SCHEMA_VERSION
from runtime.services import MicroService
from signaling.natsserver import NatsServer

pytestmark = pytest.mark.asyncio(loop_scope="session")
NAME = "signaling-test"


@pytest_asyncio.fixture(loop_scope="session")
async def nc(tmp_path: Path) -> AsyncIterator[Client]:
    server = NatsServer(data_dir=tmp_path).start()
    try:
        client = await nats.connect(server.url)
        try:
            yield client
        finally:
            await client.close()
    finally:
        server.stop()


async def ask(nc: Client, subject: str, data: bytes = b"") -> bytes:
    return (await nc.request(subject, data, timeout=5)).data


async def service_info(nc: Client) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(await ask(nc, f"$SRV.INFO.{NAME}"))
    return info


async def test_endpoints_are_added_served_and_removed(nc: Client) -> None:
    service = await MicroService.start(nc, name=NAME, instance="worker-1", description="a test")
    try:

        async def echo(msg: Msg) -> None:
            await msg.respond(msg.subject.encode() + b":" + msg.data)

        for n in (1, 2):
            await service.add(f"partition-{n}", f"t.cmd.{n}", echo, queue_group="workers")
        handled = [0]
        await service.add_status("t.status", lambda: {"worker": "worker-1", "n": handled[0]})
        handled[0] = 3

        assert await ask(nc, "t.cmd.1", b"a") == b"t.cmd.1:a"
        assert await ask(nc, "t.cmd.2", b"b") == b"t.cmd.2:b"
        assert json.loads(await ask(nc, "t.status")) == {"worker": "worker-1", "n": 3}
        info = await service_info(nc)
        assert info["id"] == service.id
        assert info["metadata"] == {"instance": "worker-1", "schema": SCHEMA_VERSION}
        assert {e["name"]: e["subject"] for e in info["endpoints"]} == {
            "partition-1": "t.cmd.1",
            "partition-2": "t.cmd.2",
            "status": "t.status",
        }

        await service.remove("partition-1")
        with pytest.raises(nats.errors.NoRespondersError):
            await nc.request("t.cmd.1", b"a", timeout=5)
        assert await ask(nc, "t.cmd.2", b"b") == b"t.cmd.2:b"  # the others still serve
        info = await service_info(nc)
        assert [e["name"] for e in info["endpoints"]] == ["partition-2", "status"]
        stats = json.loads(await ask(nc, f"$SRV.STATS.{NAME}"))
        assert [e["name"] for e in stats["endpoints"]] == ["partition-2", "status"]
        await service.remove("partition-1")  # again, or never added: nothing happens
        await service.remove("partition-9")

        # A partition that comes back is served again under the same name.
        await service.add("partition-1", "t.cmd.1", echo, queue_group="workers")
        assert await ask(nc, "t.cmd.1", b"c") == b"t.cmd.1:c"
        names = [e["name"] for e in (await service_info(nc))["endpoints"]]
        assert sorted(names) == ["partition-1", "partition-2", "status"]
    finally:
        await service.stop()
    for subject in ("t.cmd.1", "t.status", f"$SRV.PING.{NAME}"):
        with pytest.raises(nats.errors.NoRespondersError):
            await nc.request(subject, b"", timeout=5)


async def test_each_instance_answers_its_own_status(nc: Client) -> None:
    """Status subjects are per instance: with two instances of one service,
    each status request is answered by its own instance (no queue group shared)."""
    one = await MicroService.start(nc, name=NAME, instance="one", description="a test")
    two = await MicroService.start(nc, name=NAME, instance="two", description="a test")
    try:
        await one.add_status("t.status.one", lambda: {"instance": "one"})
        await two.add_status("t.status.two", lambda: {"instance": "two"})
        for _ in range(4):
            assert json.loads(await ask(nc, "t.status.one")) == {"instance": "one"}
            assert json.loads(await ask(nc, "t.status.two")) == {"instance": "two"}
        await one.remove("status")
        with pytest.raises(nats.errors.NoRespondersError):
            await nc.request("t.status.one", b"", timeout=5)
        assert json.loads(await ask(nc, "t.status.two")) == {"instance": "two"}
    finally:
        await one.stop()
        await two.stop()
