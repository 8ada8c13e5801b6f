"""``python -m edge``: run one edge (Litestar on uvicorn) until SIGTERM/SIGINT."""

import os
import sys

from edge.server import build_server
from edge.settings import EdgeSettings
from signaling.config import ConfigError
from signaling.runtime import configure_logging, tune_gc


def main() -> None:
    try:
        settings = EdgeSettings.from_env(os.environ)
    except ConfigError as e:
        sys.exit(f"configuration error: {e}")
    configure_logging(settings.log_level, settings.log_format)
    server = build_server(settings)
    tune_gc()
    server.run()


if __name__ == "__main__":
    main()
