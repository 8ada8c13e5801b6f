"""Edges: stateless Litestar nodes serving HTTP and WebSockets.

`app.create_app` builds the application from `settings.EdgeSettings`; `bus` owns
the NATS connection, `commands` sends room commands to the owning actor,
`fanout` delivers room events to local sockets, `socket` runs each WebSocket,
`rooms` the HTTP endpoints, `auth` the join tokens, `calls_proxy` the
``/cloudflare`` routes.
"""

from edge.app import create_app
from edge.settings import EdgeSettings

__all__ = ["EdgeSettings", "create_app"]
