"""The lean parts of the edge's WebSocket protocol (`edge.wsproto`): uvicorn's
queue and event, as uvicorn uses them."""

import asyncio
import inspect
import re

from uvicorn.protocols.websockets import websockets_sansio_impl

from edge.wsproto import LeanWebSocketProtocol, _Flag, _Inbox


async def test_the_inbox_is_first_in_first_out_and_wakes_a_waiting_getter() -> None:
    inbox = _Inbox()
    assert inbox.empty()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert not inbox.empty()
    assert [await inbox.get(), await inbox.get()] == [1, 2]
    assert inbox.empty()
    waiting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)  # let it wait
    assert not waiting.done()
    inbox.put_nowait(3)
    assert await asyncio.wait_for(waiting, 5) == 3


async def test_a_getter_cancelled_after_being_woken_leaves_the_item_to_the_next() -> None:
    inbox = _Inbox()
    first = asyncio.create_task(inbox.get())
    second = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("x")  # wakes the first...
    first.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(second, 5) == "x"
    assert first.cancelled()
    assert inbox.empty()


async def test_the_flag_holds_writers_while_cleared() -> None:
    flag = _Flag()
    await asyncio.wait_for(flag.wait(), 5)  # set: no wait
    flag.clear()
    waiting = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    flag.set()
    await asyncio.wait_for(waiting, 5)
    assert flag.is_set()


def test_the_protocol_uses_nothing_else_of_its_queue_and_event() -> None:
    """A uvicorn upgrade that calls another method of either would fail here
    rather than on a live socket."""
    source = inspect.getsource(websockets_sansio_impl)
    assert set(re.findall(r"self\.queue\.(\w+)", source)) <= {"put_nowait", "get", "empty"}
    assert set(re.findall(r"self\.writable\.(\w+)", source)) <= {"set", "clear", "wait"}
    assert issubclass(LeanWebSocketProtocol, websockets_sansio_impl.WebSocketsSansIOProtocol)
