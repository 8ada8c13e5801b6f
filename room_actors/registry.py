"""Which room actors are active in this worker: activation, dispatch, passivation."""

import asyncio
import logging
import time

from nats.aio.client import Client
from nats.aio.msg import Msg

from bus_schema import codec
from bus_schema.commands import Rejected
from bus_schema.errors import ErrorCode
from room_actors.actor import RoomActor
from room_actors.state import Limits
from room_actors.store import RoomStore

log = logging.getLogger(__name__)


class Registry:
    def __init__(self, nc: Client, store: RoomStore, limits: Limits) -> None:
        self._nc = nc
        self._store = store
        self._limits = limits
        self._actors: dict[str, RoomActor] = {}

    def __len__(self) -> int:
        return len(self._actors)

    def actor(self, room_id: str) -> RoomActor:
        """The room's actor, activated on first use."""
        actor = self._actors.get(room_id)
        if actor is None:
            actor = RoomActor(
                room_id,
                nc=self._nc,
                store=self._store,
                limits=self._limits,
                on_fenced=self._drop,
            )
            self._actors[room_id] = actor
        return actor

    async def dispatch(self, msg: Msg) -> None:
        """Route one command message to its room's mailbox (never blocks on I/O)."""
        try:
            command = codec.commands.decode(msg.data)
        except codec.DecodeError as e:
            log.warning("rejected a malformed command: %s", e)
            if msg.reply:
                bad = Rejected(code=ErrorCode.BAD_COMMAND, message=f"malformed command: {e}")
                await msg.respond(codec.encode(bad))
            return
        self.actor(command.room_id).submit(command, msg)

    def _drop(self, room_id: str) -> None:
        self._actors.pop(room_id, None)

    def passivate_idle(self, idle_for: float) -> int:
        """Evict empty rooms that saw no command for ``idle_for`` seconds; their
        state stays in KV. Rooms with participants stay active."""
        cutoff = time.monotonic() - idle_for
        idle = [
            room_id
            for room_id, actor in self._actors.items()
            if not actor.busy
            and actor.last_active < cutoff
            and (actor.state is None or not actor.state.participants)
        ]
        for room_id in idle:
            del self._actors[room_id]
        return len(idle)

    def touch_rooms_in_use(self) -> int:
        """Refresh the KV age of every room that has participants."""
        in_use = [a for a in self._actors.values() if a.state is not None and a.state.participants]
        for actor in in_use:
            actor.touch()
        return len(in_use)

    async def close(self) -> None:
        """Let running turns finish."""
        await asyncio.gather(*(a.wait_idle() for a in list(self._actors.values())))
