"""``python -m webhooks``: run one webhook dispatcher until SIGTERM/SIGINT."""

import os
import sys

from signaling.config import ConfigError
from signaling.runtime import configure_logging, run_until_signalled
from webhooks.dispatcher import Dispatcher
from webhooks.settings import WebhookSettings


def main() -> None:
    try:
        settings = WebhookSettings.from_env(os.environ)
    except ConfigError as e:
        sys.exit(f"configuration error: {e}")
    configure_logging(settings.log_level, settings.log_format)
    run_until_signalled(Dispatcher(settings).run)


if __name__ == "__main__":
    main()
