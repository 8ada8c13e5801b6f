"""Reading settings from environment variables, with clear messages for bad values.

Only entry points call this (``Settings.from_env``); library code gets a frozen
settings object.
"""

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

_N = TypeVar("_N", int, float)


class ConfigError(ValueError):
    """A setting is missing or has a bad value; the message names the variable."""


class Env:
    """Typed access to a mapping of environment variables."""

    def __init__(self, environ: Mapping[str, str], record: set[str] | None = None) -> None:
        self._environ = environ
        self._record = record
        """Every variable name looked up is added here (the compose test uses it)."""

    def raw(self, name: str) -> str | None:
        if self._record is not None:
            self._record.add(name)
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def secret(self, name: str) -> str | None:
        """``NAME``, or the contents of the file named by ``NAME_FILE`` (for
        Docker/Kubernetes secrets)."""
        value = self.raw(name)
        path = self.raw(f"{name}_FILE")
        if value is not None or path is None:
            return value
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip() or None
        except OSError as e:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {e.strerror}") from None

    def text(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None else value

    def optional(self, name: str) -> str | None:
        return self.raw(name)

    def integer(
        self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
        return self._bounded(name, number, minimum, maximum)

    def number(
        self, name: str, default: float, *, minimum: float = 0.0, maximum: float | None = None
    ) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
        return self._bounded(name, number, minimum, maximum)

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name} must be true or false, got {value!r}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    @staticmethod
    def _bounded(name: str, number: _N, minimum: _N, maximum: _N | None) -> _N:
        if number < minimum or (maximum is not None and number > maximum):
            upper = "" if maximum is None else f" and at most {maximum}"
            raise ConfigError(f"{name} must be at least {minimum}{upper}, got {number}")
        return number


@dataclass(frozen=True, slots=True)
class NatsTls:
    """TLS towards NATS: the CA that signed the servers' certificates
    (``NATS_TLS_CA``; the system's roots without it) and, for mutual TLS, this
    process's own certificate and key (``NATS_TLS_CERT``, ``NATS_TLS_KEY``).

    TLS is on when any of these is set or a ``NATS_URL`` entry is ``tls://``.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    first: bool = True
    """Open TLS before the server speaks (``NATS_TLS_FIRST``; the server's
    ``handshake_first``). Otherwise nats-py upgrades only when the server's
    plaintext greeting asks for TLS, so whoever can forge that greeting on the
    network reads the password; off only for servers that cannot do it."""

    @property
    def configured(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None

    def enabled(self, servers: list[str]) -> bool:
        return self.configured or any(server.startswith("tls://") for server in servers)

    def context(self) -> ssl.SSLContext:
        """A client context that checks the server's certificate and host name."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file is not None:
            # No passphrase: an encrypted key fails here instead of prompting on a terminal.
            context.load_cert_chain(self.cert_file, self.key_file, password=_no_passphrase)
        return context

    @classmethod
    def from_env(cls, env: "Env") -> "NatsTls":
        tls = cls(
            ca_file=env.optional("NATS_TLS_CA"),
            cert_file=env.optional("NATS_TLS_CERT"),
            key_file=env.optional("NATS_TLS_KEY"),
            first=env.flag("NATS_TLS_FIRST", True),
        )
        if (tls.cert_file is None) != (tls.key_file is None):
            raise ConfigError("NATS_TLS_CERT and NATS_TLS_KEY go together")
        tls.check()
        return tls

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


@dataclass(frozen=True, slots=True)
class NatsCredentials:
    """How a process authenticates to NATS: a user and password (``NATS_USER``,
    ``NATS_PASSWORD``) or a credentials file (``NATS_CREDS``), or nothing; and
    the TLS it uses (`NatsTls`), the same for every role."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    creds_file: str | None = None
    tls: NatsTls = field(default_factory=NatsTls)

    @classmethod
    def from_env(cls, env: "Env") -> "NatsCredentials":
        user, password = env.optional("NATS_USER"), env.secret("NATS_PASSWORD")
        if (user is None) != (password is None):
            raise ConfigError("NATS_USER and NATS_PASSWORD go together")
        return cls(
            user=user,
            password=password,
            creds_file=env.optional("NATS_CREDS"),
            tls=NatsTls.from_env(env),
        )


def nats_servers(value: str) -> list[str]:
    """``NATS_URL`` may list several seed servers separated by commas."""
    servers = [part.strip() for part in value.split(",") if part.strip()]
    if not servers:
        raise ConfigError("NATS_URL must name at least one server")
    for server in servers:
        if not server.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise ConfigError(f"NATS_URL entries must start with nats:// or tls://, got {server!r}")
    return servers
