"""A TCP forwarder a test puts between two of the system's parts (a browser
and an edge, an edge and nats-server) to cut, hold or move the link."""

import asyncio
from urllib.parse import urlsplit

from signaling.cluster import Edge
from tests.harness import System


class Link:
    """Forwards every connection made to it to ``127.0.0.1:upstream``. A test
    can cut every connection at once (a reset, as when a network fails, and
    point new ones elsewhere), or hold what the connecting side sends (its
    bytes wait in order, the connection stays up) and let it through later."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._up = asyncio.Event()
        """Set while what the connecting side sends goes through."""
        self._down = asyncio.Event()
        """Set while what comes back goes through."""
        self.delay = 0.0
        """Seconds added to every byte's way, both directions (latency, not a
        bandwidth limit: what follows is not held behind what is delayed)."""
        self.release()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "Link":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self, new_upstream: int | None = None) -> None:
        """Drop every connection at once; new ones go to ``new_upstream``."""
        if new_upstream is not None:
            self.upstream = new_upstream
        for writer in list(self._writers):
            writer.transport.abort()

    def hold(self, *, both_ways: bool = False) -> None:
        """Keep what the connecting side sends from here on, in order (and,
        ``both_ways``, what comes back: a partition that drops nothing)."""
        self._up.clear()
        if both_ways:
            self._down.clear()

    def hold_back(self) -> None:
        """Keep only what comes back to the connecting side from here on, in
        order (what it sends goes through)."""
        self._down.clear()

    def release(self) -> None:
        self._up.set()
        self._down.set()

    async def close(self) -> None:
        self.release()
        self.cut()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer, self._up), self._pipe(up_reader, writer, self._down)
        )
        self._writers -= {writer, up_writer}

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, flowing: asyncio.Event
    ) -> None:
        loop = asyncio.get_running_loop()
        late = _Late(dst)
        try:
            while data := await src.read(65536):
                await flowing.wait()
                if self.delay or late.pending:  # in order, behind what is still delayed
                    late.put(loop.time() + self.delay, data)
                    continue
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            late.close()
            dst.transport.abort()


class _Late:
    """What a link delays on one way, written when it is due, in order."""

    def __init__(self, dst: asyncio.StreamWriter) -> None:
        self.dst = dst
        self.pending = 0
        self._queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def put(self, due: float, data: bytes) -> None:
        self.pending += 1
        self._queue.put_nowait((due, data))
        if self._task is None:
            self._task = asyncio.create_task(self._send())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, data = await self._queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                self.dst.write(data)
                await self.dst.drain()
                self.pending -= 1
        except OSError:
            self.dst.transport.abort()


async def link_to_nats(system: System) -> Link:
    """A link in front of the system's (first) nats-server."""
    return await Link(urlsplit(system.nats.url).port or 4222).start()


async def edge_behind(system: System, link: Link) -> Edge:
    """A new edge that reaches NATS through ``link``, ready."""
    edge = system.start_edge(NATS_URL=f"nats://127.0.0.1:{link.port}")
    await asyncio.to_thread(system.wait_edge_ready, edge)
    return edge
