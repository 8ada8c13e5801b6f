"""``python -m edge``: run one edge (Litestar on uvicorn) until SIGTERM/SIGINT."""

import os
import sys

import uvicorn

from edge.app import create_app
from edge.settings import EdgeSettings
from signaling.config import ConfigError
from signaling.runtime import configure_logging


def server_config(settings: EdgeSettings) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ws="websockets-sansio",
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        http="httptools",
        loop="uvloop",
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=5,
    )


def main() -> None:
    try:
        settings = EdgeSettings.from_env(os.environ)
    except ConfigError as e:
        sys.exit(f"configuration error: {e}")
    configure_logging(settings.log_level)
    # uvicorn handles SIGTERM/SIGINT: stop accepting, close sockets, run the
    # lifespan shutdown (which drains the NATS connection).
    uvicorn.Server(server_config(settings)).run()


if __name__ == "__main__":
    main()
