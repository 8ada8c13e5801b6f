"""Running an edge under uvicorn, with a graceful drain on SIGTERM.

First SIGTERM (or Ctrl-C): the edge starts draining: ``/ready`` answers 503 and
new WebSockets are refused, so the load balancer stops sending clients here.
After ``DRAIN_DELAY`` seconds uvicorn stops: it closes every socket with 1012
(service restart; clients reconnect to another edge with the same token and
resume without leave/join churn), waits up to 5 s for the handlers to finish
(each tells its room the connection is gone, trying for at most 3.5 s), then
closes NATS. A second signal
skips the delay.
"""

import time
from types import FrameType

import uvicorn
from litestar import Litestar

from edge.app import create_app, start_draining
from edge.settings import SHUTDOWN_GRACE, EdgeSettings
from edge.wsproto import LeanWebSocketProtocol


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Litestar, delay: float) -> None:
        super().__init__(config)
        self._app = app
        self._delay = delay
        self._stop_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._stop_at is not None:  # a second signal: stop now
            super().handle_exit(sig, frame)
            return
        self._stop_at = time.monotonic() + self._delay
        start_draining(self._app)

    async def on_tick(self, counter: int) -> bool:
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            self.should_exit = True
        return await super().on_tick(counter)


def build_server(settings: EdgeSettings) -> DrainingServer:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws=LeanWebSocketProtocol,  # uvicorn's websockets-sansio, lighter when idle
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        http="httptools",
        loop="uvloop",
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )
    return DrainingServer(config, app, settings.drain_delay)
