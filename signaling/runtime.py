"""Process plumbing shared by every entry point: logging and signal handling."""

import asyncio
import logging
import re
import signal
from collections.abc import Awaitable, Callable

_SECRETS = re.compile(
    r"(?P<key>token=|Bearer\s+)[^\s&\"']+"  # query parameters and bearer headers
    r"|eyJ[\w-]+\.[\w-]+\.[\w-]+"  # anything shaped like a JWT
)


def redact(text: str) -> str:
    """Replace tokens and anything that looks like a JWT with ``<redacted>``."""
    return _SECRETS.sub(lambda m: f"{m.group('key') or ''}<redacted>", text)


class RedactingFilter(logging.Filter):
    """Keeps tokens out of every log line, including those of uvicorn and libraries
    (uvicorn logs the WebSocket request line, query string included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` on uvloop (when available); SIGTERM or SIGINT sets ``stop``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        import uvloop
    except ImportError:
        asyncio.run(runner())
    else:
        uvloop.run(runner())
