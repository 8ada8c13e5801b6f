"""Logging for every process: JSON lines or text, every line filtered for secrets."""

import json
import logging
import re
import time

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


class RefusedHandshakeFilter(logging.Filter):
    """uvicorn's websockets-sansio protocol logs ``ASGI callable returned without
    completing handshake.`` at ERROR after every WebSocket refused with an HTTP
    denial response (``websocket.http.response.*``): it never marks the handshake
    done after sending the denial (wsproto does; Kludex/uvicorn PR #3138). The
    edge refuses upgrades that way on purpose (401, 403, 429, 503), so a stranger
    could fill the error log; uvicorn already logs the refusal itself at INFO
    (``"WebSocket /ws" 401``). The line is kept only at DEBUG, as DEBUG."""

    MESSAGE = "ASGI callable returned without completing handshake."

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "uvicorn.error" or record.msg != self.MESSAGE:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


CONTEXT_FIELDS = ("room_id", "participant_id", "conn_id", "edge_id", "worker_id", "partition")
"""Passed as ``extra=`` on log calls; JSON lines carry them as fields."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context ids, and
    the exception (already redacted by `RedactingFilter`) if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(
            f"{name}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        )
        return redact(f"{text} [{context}]" if context else text)


def configure_logging(level: str, fmt: str = "text") -> None:
    """Logs to stderr, JSON lines or plain text, every line filtered for secrets."""
    handler = logging.StreamHandler()
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    handler.addFilter(RefusedHandshakeFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
