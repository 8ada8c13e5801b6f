"""Room actors: the workers that own room state.

`worker.Worker` connects to NATS and serves the command subjects of the rooms it
owns; `registry.Registry` activates one `actor.RoomActor` per active room and
passivates idle ones; each actor runs turns of load -> `state.decide` -> CAS save
(`store.RoomStore`) -> publish events -> reply.
"""

from room_actors.settings import ActorSettings
from room_actors.worker import Worker

__all__ = ["ActorSettings", "Worker"]
