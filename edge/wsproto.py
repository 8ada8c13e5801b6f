"""uvicorn's sans-I/O WebSocket protocol, with lighter parts for idle sockets.

An edge holds tens of thousands of sockets that mostly wait. uvicorn's
protocol gives each an `asyncio.Queue` for incoming messages (three deques, a
counter and an `asyncio.Event` with its own deque) and an `asyncio.Event` for
write flow control: about 3.5 KiB per socket before a single message. This
subclass swaps them for two small objects that make their deques only while
something waits (docs/benchmarks.md, "Idle WebSockets"). Behaviour is
uvicorn's: the protocol uses ``put_nowait``, ``get`` and ``empty`` of its
queue and ``set``, ``clear`` and ``wait`` of its event, nothing else (checked
against the pinned uvicorn by the WebSocket tests).
"""

import asyncio
from collections import deque
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class _Inbox:
    """A FIFO of incoming ASGI events, unbounded like uvicorn's queue."""

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None
        """Usually one (the app's receive), so a list: a deque costs 600 bytes."""

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        self._wake_next()

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except asyncio.CancelledError:
                if getter.done() and not getter.cancelled() and self._items:
                    self._wake_next()  # woken, then cancelled: the next getter's turn
                raise
            finally:
                if self._getters is not None:
                    if getter in self._getters:
                        self._getters.remove(getter)
                    if not self._getters:
                        self._getters = None
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    def _wake_next(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                return

    def empty(self) -> bool:
        return not self._items


class _Flag:
    """Write flow control: set while the transport takes more output."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """`WebSocketsSansIOProtocol` with the incoming queue and the writable
    event above."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]
