"""``python -m webhooks``: run one webhook dispatcher until SIGTERM/SIGINT."""

from collections.abc import Callable

from runtime.process import run_role, run_until_signalled
from webhooks.dispatcher import Dispatcher
from webhooks.settings import WebhookSettings


def prepare(settings: WebhookSettings) -> Callable[[], None]:
    dispatcher = Dispatcher(settings)
    return lambda: run_until_signalled(dispatcher.run)


def main() -> None:
    run_role(WebhookSettings.from_env, prepare)


if __name__ == "__main__":
    main()
