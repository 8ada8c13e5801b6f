"""Process plumbing shared by every entry point: garbage-collector tuning and
running until a signal."""

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

from runtime.config import ConfigError
from runtime.logs import configure_logging


def tune_gc() -> None:
    """Shorter garbage-collection pauses for a long-running event loop: what is
    alive after start-up (modules, classes, the app) is frozen out of the
    collector's view, so a full collection only walks what came later, and the
    youngest generation is collected less often (a server allocates quickly)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


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


class RoleSettings(Protocol):
    """What `run_role` needs of a role's settings."""

    @property
    def log_level(self) -> str: ...

    @property
    def log_format(self) -> str: ...


_S = TypeVar("_S", bound=RoleSettings)


def run_role(
    settings_from_env: Callable[[Mapping[str, str]], _S],
    prepare: Callable[[_S], Callable[[], None]],
) -> None:
    """The one way every role's ``__main__`` runs: settings read once from the
    environment (a bad value stops the process with a message naming the
    variable), logging, ``prepare(settings)`` builds what the process needs and
    returns what runs it, the garbage collector is tuned with everything built
    so far frozen, then it runs until SIGTERM/SIGINT."""
    try:
        settings = settings_from_env(os.environ)
    except ConfigError as e:
        sys.exit(f"configuration error: {e}")
    configure_logging(settings.log_level, settings.log_format)
    run = prepare(settings)
    tune_gc()
    run()
