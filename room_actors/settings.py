"""Settings of a room actor worker, read once from the environment."""

from collections.abc import Mapping
from dataclasses import dataclass

from bus_schema.ids import new_token_id
from signaling.config import Env, nats_servers


@dataclass(frozen=True, slots=True)
class ActorSettings:
    nats_servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    worker_id: str = ""
    room_ttl: float = 7200.0
    """Seconds after which an idle room's metadata and state expire from KV."""
    passivate_after: float = 300.0
    """Seconds without a command after which an empty room leaves memory."""
    kv_replicas: int = 1
    recent_commands: int = 64
    """How many applied command ids each room remembers for deduplication."""
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "ActorSettings":
        env = Env(environ)
        return cls(
            nats_servers=tuple(nats_servers(env.text("NATS_URL", "nats://127.0.0.1:4222"))),
            worker_id=env.text("WORKER_ID", new_token_id()),
            room_ttl=env.number("ROOM_TTL", 7200.0, minimum=10.0),
            passivate_after=env.number("ROOM_PASSIVATE_AFTER", 300.0, minimum=1.0),
            kv_replicas=env.integer("KV_REPLICAS", 1, minimum=1, maximum=5),
            log_level=env.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        )
