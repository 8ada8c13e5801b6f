"""``python -m room_actors``: run one room actor worker until SIGTERM/SIGINT."""

import os
import sys

from room_actors.settings import ActorSettings
from room_actors.worker import Worker
from signaling.config import ConfigError
from signaling.runtime import configure_logging, run_until_signalled, tune_gc


def main() -> None:
    try:
        settings = ActorSettings.from_env(os.environ)
    except ConfigError as e:
        sys.exit(f"configuration error: {e}")
    configure_logging(settings.log_level, settings.log_format)
    tune_gc()
    run_until_signalled(Worker(settings).run)


if __name__ == "__main__":
    main()
