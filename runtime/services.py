"""NATS micro services: every process registers one, so ``nats micro ls``,
``nats micro info <name>`` and ``nats micro stats <name>`` describe the running
system (the CLI sends ``$SRV.PING|INFO|STATS`` requests; every instance answers).

Room actor workers serve their partitions' command subjects as endpoints of
their service, adding and removing them as partitions move; nats-py's micro API
has no call to remove one endpoint, so `MicroService.remove` reaches into it
(nats-py is pinned; `tests/system/test_services.py` would notice a change).
"""

import contextlib
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from bus_schema import SCHEMA_VERSION


def version() -> str:
    try:
        return metadata.version("signaling")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0.0.0"


class MicroService:
    def __init__(self, service: Service) -> None:
        self._service = service

    @classmethod
    async def start(
        cls, nc: Client, *, name: str, instance: str, description: str
    ) -> "MicroService":
        service = await add_service(
            nc,
            name=name,
            version=version(),
            description=description,
            metadata={"instance": instance, "schema": SCHEMA_VERSION},
        )
        return cls(service)

    @property
    def id(self) -> str:
        return str(self._service.id)

    async def add(
        self,
        name: str,
        subject: str,
        handler: Callable[[Msg], Awaitable[None]],
        *,
        queue_group: str,
        metadata: dict[str, str] | None = None,
    ) -> None:
        async def handle(request: Request) -> None:
            await handler(request._msg)  # our handlers answer the message themselves

        await self._service.add_endpoint(
            name=name,
            subject=subject,
            handler=handle,
            queue_group=queue_group,
            metadata=metadata or {},
        )

    async def add_status(self, subject: str, status: Callable[[], Any]) -> None:
        """The ``status`` endpoint: answers each request with ``status()`` as JSON
        (``nats req <subject> ''``). Served by this instance alone."""

        async def respond(msg: Msg) -> None:
            await msg.respond(msgspec.json.encode(status()))

        await self.add("status", subject, respond, queue_group=f"status-{self.id}")

    async def remove(self, name: str) -> None:
        endpoints: list[Any] = self._service._endpoints
        for endpoint in [e for e in endpoints if e._name == name]:
            with contextlib.suppress(Exception):
                await endpoint._stop()
            endpoints.remove(endpoint)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._service.stop()
