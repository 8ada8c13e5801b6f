"""``python -m room_actors``: run one room actor worker until SIGTERM/SIGINT."""

from collections.abc import Callable

from room_actors.settings import ActorSettings
from room_actors.worker import Worker
from runtime.process import run_role, run_until_signalled


def prepare(settings: ActorSettings) -> Callable[[], None]:
    worker = Worker(settings)
    return lambda: run_until_signalled(worker.run)


def main() -> None:
    run_role(ActorSettings.from_env, prepare)


if __name__ == "__main__":
    main()
