"""A local stand-in for Cloudflare Calls, for tests and for trying the service
offline (``signaling dev --fake-calls``). See `app` for what it implements."""

import asyncio
import contextlib
import socket

import uvicorn

from tools.fakecalls.app import CallsError, FakeCalls, FakeCallsConfig

__all__ = ["CallsError", "FakeCalls", "FakeCallsConfig", "FakeCallsServer"]


class FakeCallsServer:
    """The stand-in served by uvicorn inside the current event loop."""

    def __init__(self, fake: FakeCalls, host: str = "127.0.0.1", port: int = 0) -> None:
        self.fake = fake
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        """What ``CALLS_API_URL`` should be set to."""
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> "FakeCallsServer":
        # IPPROTO_TCP, not 0: asyncio turns Nagle off only on sockets that say TCP
        # (without it every answer waited ~40 ms for a delayed ACK).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.fake.app(), log_config=None, access_log=False, lifespan="off", http="h11"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._server = None
        self._task = None
