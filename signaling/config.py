"""Reading settings from environment variables, with clear messages for bad values.

Only entry points call this (``Settings.from_env``); library code gets a frozen
settings object.
"""

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
class NatsCredentials:
    """How a process authenticates to NATS: a user and password (``NATS_USER``,
    ``NATS_PASSWORD``) or a credentials file (``NATS_CREDS``), or nothing."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    creds_file: str | None = None

    @classmethod
    def from_env(cls, env: "Env") -> "NatsCredentials":
        user, password = env.optional("NATS_USER"), env.secret("NATS_PASSWORD")
        if (user is None) != (password is None):
            raise ConfigError("NATS_USER and NATS_PASSWORD go together")
        return cls(user=user, password=password, creds_file=env.optional("NATS_CREDS"))


def nats_servers(value: str) -> list[str]:
    """``NATS_URL`` may list several seed servers separated by commas."""
    servers = [part.strip() for part in value.split(",") if part.strip()]
    if not servers:
        raise ConfigError("NATS_URL must name at least one server")
    for server in servers:
        if not server.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise ConfigError(f"NATS_URL entries must start with nats:// or tls://, got {server!r}")
    return servers
