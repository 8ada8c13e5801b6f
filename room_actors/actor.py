"""One actor per active room: a mailbox drained in turns.

A turn takes every command waiting in the mailbox, applies them one by one with
`state.decide`, saves the resulting state once with compare-and-set (a group
commit), then publishes the events in sequence order and answers each request.
Nothing is published or acknowledged before the state it describes is saved.
A turn that fails drops the cached state; the next turn reloads it from KV.
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.aio.msg import Msg

from bus_schema import codec, subjects
from bus_schema.commands import Ack, Command, CreateRoom, Rejected, Reply
from bus_schema.control import CloseConnection
from bus_schema.errors import ErrorCode
from bus_schema.events import Event
from bus_schema.state import RoomState
from room_actors.state import Limits, decide
from room_actors.store import Fenced, RoomStore

log = logging.getLogger(__name__)

_RETRY = Rejected(code=ErrorCode.NOT_OWNER, message="Room is moving, retry", retryable=True)


def iso_now() -> str:
    """ISO 8601 in UTC with milliseconds, as JavaScript's ``toISOString`` writes it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(slots=True)
class _Pending:
    command: Command | None
    """``None`` asks for a keep-alive save of the unchanged state."""
    msg: Msg | None


class RoomActor:
    def __init__(
        self,
        room_id: str,
        *,
        nc: Client,
        store: RoomStore,
        limits: Limits,
        on_fenced: Callable[[str], None],
    ) -> None:
        self.room_id = room_id
        self._nc = nc
        self._store = store
        self._limits = limits
        self._on_fenced = on_fenced
        self._mailbox: deque[_Pending] = deque()
        self._task: asyncio.Task[None] | None = None
        self._loaded = False
        self._state: RoomState | None = None
        self._revision: int | None = None
        self.last_active = time.monotonic()

    @property
    def busy(self) -> bool:
        return self._task is not None

    @property
    def state(self) -> RoomState | None:
        return self._state

    def submit(self, command: Command, msg: Msg | None) -> None:
        self._enqueue(_Pending(command, msg))

    def touch(self) -> None:
        """Save the state unchanged, refreshing its age in KV (a room in use never expires)."""
        self._enqueue(_Pending(None, None))

    def _enqueue(self, pending: _Pending) -> None:
        self._mailbox.append(pending)
        self.last_active = time.monotonic()
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name=f"room-{self.room_id}")

    async def wait_idle(self) -> None:
        while (task := self._task) is not None:
            await asyncio.shield(task)

    async def _drain(self) -> None:
        try:
            while self._mailbox:
                batch = list(self._mailbox)
                self._mailbox.clear()
                try:
                    await self._turn(batch)
                except Fenced:
                    log.warning("room %s: fenced, another worker owns it; dropping", self.room_id)
                    self._forget()
                    await self._answer_all(batch, _RETRY)
                    self._on_fenced(self.room_id)
                except Exception:
                    log.exception("room %s: turn failed; state dropped", self.room_id)
                    self._forget()
                    await self._answer_all(batch, _RETRY)
        finally:
            self._task = None

    def _forget(self) -> None:
        self._loaded = False
        self._state = None
        self._revision = None

    async def _turn(self, batch: list[_Pending]) -> None:
        if not self._loaded:
            loaded = await self._store.load(self.room_id)
            self._state, self._revision, self._loaded = loaded.state, loaded.revision, True
        now = iso_now()
        state = self._state
        answers: list[tuple[Msg | None, Reply]] = []
        events: list[Event] = []
        control: list[tuple[str, CloseConnection]] = []
        save = publish_meta = False
        for pending in batch:
            if pending.command is None:
                save = publish_meta = True
                continue
            outcome = decide(state, pending.command, now, self._limits)
            if isinstance(pending.command, CreateRoom) and isinstance(outcome.reply, Ack):
                publish_meta = True
            state = outcome.state
            answers.append((pending.msg, outcome.reply))
            events.extend(outcome.events)
            control.extend(outcome.control)
        if state is not None and (save or state is not self._state):
            self._revision = await self._store.save(state, self._revision)
        self._state = state
        if state is not None and publish_meta:
            await self._store.publish_meta(state.meta)
        for event in events:
            await self._nc.publish(subjects.room_events(self.room_id), codec.encode(event))
        for edge_id, message in control:
            await self._nc.publish(subjects.edge_control(edge_id), codec.encode(message))
        for msg, reply in answers:
            if msg is not None and msg.reply:
                await msg.respond(codec.encode(reply))

    @staticmethod
    async def _answer_all(batch: list[_Pending], reply: Reply) -> None:
        data = codec.encode(reply)
        for pending in batch:
            if pending.msg is not None and pending.msg.reply:
                try:
                    await pending.msg.respond(data)
                except Exception:
                    log.exception("could not answer a command")
