"""What every role reads from the environment: where NATS is and how to reach
it (credentials, TLS), how to log, and where metrics are served. Declared with
`runtime.settings`, like each role's own settings.

Only entry points read the environment (``Settings.from_env``); library code
gets a frozen settings object.
"""

import ssl
from collections.abc import Sequence

from runtime.settings import (
    ConfigError,
    Setting,
    Settings,
    choice,
    field_of,
    flag,
    listed,
    nested,
    settings_class,
    text,
)

__all__ = ["CommonSettings", "ConfigError", "NatsCredentials", "NatsTls", "metrics_host"]


@settings_class
class NatsTls(Settings):
    """TLS towards NATS: the CA that signed the servers' certificates (the
    system's roots without it) and, for mutual TLS, this process's own
    certificate and key. TLS is on when any of these is set or a ``NATS_URL``
    entry is ``tls://``."""

    ca_file: str | None = text(
        "NATS_TLS_CA",
        default=None,
        doc="TLS to NATS: the CA to trust (else the system's roots); TLS is on when one of "
        "the `NATS_TLS_*` files is set or `NATS_URL` says `tls://` "
        '([`docs/operations.md`](docs/operations.md), "TLS")',
        values="a PEM file",
    )
    cert_file: str | None = text(
        "NATS_TLS_CERT",
        default=None,
        doc="this process's certificate for mutual TLS to NATS (with `NATS_TLS_KEY`)",
        values="a PEM file",
    )
    key_file: str | None = text(
        "NATS_TLS_KEY",
        default=None,
        doc="the key of `NATS_TLS_CERT` (not encrypted)",
        values="a PEM file",
    )
    first: bool = flag(
        "NATS_TLS_FIRST",
        default=True,
        doc="open TLS before the server's greeting, so a forged greeting cannot talk the "
        "process out of TLS (the servers' `handshake_first`; `off` for servers without it)",
    )
    """Otherwise nats-py upgrades only when the server's plaintext greeting asks
    for TLS, so whoever can forge that greeting on the network reads the password."""

    @property
    def configured(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None

    def enabled(self, servers: Sequence[str]) -> bool:
        return self.configured or any(server.startswith("tls://") for server in servers)

    def context(self) -> ssl.SSLContext:
        """A client context that checks the server's certificate and host name."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file is not None:
            # No passphrase: an encrypted key fails here instead of prompting on a terminal.
            context.load_cert_chain(self.cert_file, self.key_file, password=_no_passphrase)
        return context

    def validate(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("NATS_TLS_CERT and NATS_TLS_KEY go together")
        self.check()

    def check(self) -> None:
        """Load every file once, so a bad one stops the process at start with
        the variable's name rather than at the first connection."""
        if self.ca_file is not None:
            try:
                ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as e:
                message = f"NATS_TLS_CA: cannot load {self.ca_file}: {_reason(e)}"
                raise ConfigError(message) from None
        if self.cert_file is None:
            return
        try:
            ssl.create_default_context().load_cert_chain(
                self.cert_file, self.key_file, password=_no_passphrase
            )
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"NATS_TLS_CERT / NATS_TLS_KEY: cannot load {self.cert_file} with "
                f"{self.key_file}: {_reason(e)}"
            ) from None


def _no_passphrase() -> bytes:
    return b""


def _reason(error: OSError | ssl.SSLError) -> str:
    """What went wrong with a file, without the library's tuple formatting."""
    if isinstance(error, ssl.SSLError):
        return error.reason or str(error)
    return error.strerror or str(error)


@settings_class
class NatsCredentials(Settings):
    """How a process authenticates to NATS: a user and password or a
    credentials file, or nothing; and the TLS it uses, the same for every role."""

    user: str | None = text(
        "NATS_USER",
        default=None,
        doc="NATS user (`edge`, `actors` or `webhooks`, see `signaling/nats_auth.conf`)",
    )
    password: str | None = text(
        "NATS_PASSWORD", default=None, secret=True, doc="the password of `NATS_USER`"
    )
    creds_file: str | None = text(
        "NATS_CREDS", default=None, doc="a NATS credentials file, instead of a user and password"
    )
    tls: NatsTls = nested(NatsTls)

    def validate(self) -> None:
        if (self.user is None) != (self.password is None):
            raise ConfigError("NATS_USER and NATS_PASSWORD go together")


@settings_class
class CommonSettings(Settings):
    """What every role reads: where NATS is, how to log in to it, how to log."""

    nats_servers: tuple[str, ...] = listed(
        "NATS_URL",
        default=("nats://127.0.0.1:4222",),
        schemes=("nats://", "tls://", "ws://", "wss://"),
        doc="NATS seed servers",
    )
    nats_credentials: NatsCredentials = nested(NatsCredentials)
    log_level: str = choice(
        "LOG_LEVEL",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        doc="the least important log lines written",
    )
    log_format: str = choice(
        "LOG_FORMAT",
        default="json",
        choices=("json", "text"),
        doc="JSON lines, or text (what `make run` uses)",
    )


_METRICS_HOST = Setting(
    "METRICS_HOST",
    "where a worker or dispatcher serves its Prometheus metrics (edges serve `/metrics`)",
    str,
)


def metrics_host() -> str:
    """``METRICS_HOST``, declared once for every role that serves its metrics on a port."""
    return field_of(_METRICS_HOST, "127.0.0.1")
