"""Identifier formats. Every id that becomes a subject token or KV key is checked here."""

import itertools
import re
import secrets
import uuid

_UUID = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_TOKEN = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")


def new_id() -> str:
    """A room or participant id: a lowercase UUID4 string."""
    return str(uuid.uuid4())


def new_token_id() -> str:
    """An edge, worker or request id: 16 random hex characters."""
    return secrets.token_hex(8)


_PROCESS = secrets.token_hex(6)
_COUNTER = itertools.count(1)


def new_command_id() -> str:
    """A command or connection id: unique (a random per-process prefix and a
    counter), cheap to make on every message; not meant to be unguessable."""
    return f"{_PROCESS}{next(_COUNTER):x}"


def is_uuid(value: str) -> bool:
    """True for a canonical lowercase UUID, the only form room and participant ids take."""
    return _UUID.match(value) is not None


def is_token_id(value: str) -> bool:
    """True for a value that is safe as one NATS subject token or KV key."""
    return _TOKEN.match(value) is not None
