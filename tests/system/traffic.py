"""Rooms full of participants that talk, and checks on what each one saw."""

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import websockets

from tests.harness import Api, Member, enter, opened


@dataclass
class Recorder:
    """Everything one member receives, gathered by a background task."""

    member: Member
    messages: list[dict[str, Any]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: "asyncio.Task[None] | None" = None

    def start(self) -> "Recorder":
        self._task = asyncio.create_task(self._run())
        return opened(self)

    async def _run(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                self.messages.append(await self.member.client.recv(timeout=3600))
                self._changed.set()

    async def wait_for(
        self, condition: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0
    ) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not condition(self.messages):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"{self.member.name} saw {self.messages[-5:]}") from None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    close = stop  # so the harness stops a recorder a failed test left running

    def chats(self, sender: Member) -> list[int]:
        return [
            m["n"]
            for m in self.messages
            if m["type"] == "chat" and m["from"] == sender.participant_id
        ]


@dataclass
class Room:
    room_id: str
    members: list[Member]
    recorders: list[Recorder] = field(default_factory=list)


async def open_rooms(api: Api, ws_urls: Sequence[str], rooms: int, size: int) -> list[Room]:
    """``rooms`` rooms of ``size`` members each, members spread over ``ws_urls``;
    every member has consumed its welcome and the joins of those after it."""
    opened = []
    for r in range(rooms):
        room_id = await api.create_room(f"room-{r}")
        members = []
        for m in range(size):
            member = await enter(api, ws_urls[(r + m) % len(ws_urls)], room_id, f"m{m}")
            for earlier in members:
                await earlier.recv_type("join")
            members.append(member)
        opened.append(Room(room_id, members))
    for room in opened:
        room.recorders = [Recorder(member).start() for member in room.members]
    return opened


async def chat(rooms: Sequence[Room], count: int, *, first: int = 0, pause: float = 0.02) -> None:
    """Every member broadcasts ``count`` numbered chat messages, paced by ``pause``."""

    async def talk(member: Member) -> None:
        for n in range(first, first + count):
            await member.send({"type": "chat", "to": "all", "n": n})
            await asyncio.sleep(pause)

    await asyncio.gather(*(talk(m) for room in rooms for m in room.members))


async def wait_delivered(rooms: Sequence[Room], upto: int, timeout: float = 60.0) -> None:
    """Until every member has seen chats 0..upto-1 from each other member."""

    def complete(recorder: Recorder, room: Room) -> Callable[[list[dict[str, Any]]], bool]:
        others = [m for m in room.members if m is not recorder.member]
        return lambda _: all(len(recorder.chats(o)) >= upto for o in others)

    await asyncio.gather(
        *(r.wait_for(complete(r, room), timeout) for room in rooms for r in room.recorders)
    )


def assert_exactly_once_in_order(rooms: Sequence[Room], upto: int) -> None:
    """Each member saw each other member's chats once, in order; sequenced
    messages in strictly increasing ``room_seq``; all members agree on what each
    ``room_seq`` carried; no errors and no resynchronisation."""
    for room in rooms:
        by_seq: dict[int, tuple[str, Any]] = {}
        for recorder in room.recorders:
            for other in room.members:
                if other is not recorder.member:
                    assert recorder.chats(other) == list(range(upto)), (room.room_id, other.name)
            kinds = {m["type"] for m in recorder.messages}
            assert not kinds & {"error", "welcome"}, recorder.messages
            seqs = [m["room_seq"] for m in recorder.messages if "room_seq" in m]
            assert seqs == sorted(set(seqs)), seqs
            for message in recorder.messages:
                if "room_seq" in message:
                    key = (message["from"], message.get("n"))
                    assert by_seq.setdefault(message["room_seq"], key) == key


async def stop_recorders(rooms: Sequence[Room]) -> None:
    for room in rooms:
        for recorder in room.recorders:
            await recorder.stop()
