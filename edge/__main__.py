"""``python -m edge``: run one edge (Litestar on uvicorn) until SIGTERM/SIGINT."""

from collections.abc import Callable

from edge.server import build_server
from edge.settings import EdgeSettings
from runtime.process import run_role


def prepare(settings: EdgeSettings) -> Callable[[], None]:
    return build_server(settings).run


def main() -> None:
    run_role(EdgeSettings.from_env, prepare)


if __name__ == "__main__":
    main()
