"""Structured logs: one JSON object per line, with connection and request ids.

:func:`configure_logging` installs :class:`JsonFormatter` on the ``bluewren`` logger
(``bluewren serve`` does it). Each line carries ``ts``, ``level``, ``logger``, ``msg``
and, when known, ``conn_id`` (the connection) and ``request_id`` (one command of it);
those come from the record's ``extra`` or from :data:`conn_id_var` /
:data:`request_id_var`, which the node sets in each command's task.

The node never logs message bodies or tokens; as a second line of defence the formatter
replaces anything shaped like a JWT with ``[redacted-token]``.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Final

__all__ = [
    "JsonFormatter",
    "configure_logging",
    "conn_id_var",
    "next_request_id",
    "redact",
    "request_id_var",
]

conn_id_var: Final[contextvars.ContextVar[int | None]] = contextvars.ContextVar(
    "bluewren_conn_id", default=None
)
"""The connection a log line is about (set per command task)."""

request_id_var: Final[contextvars.ContextVar[str | None]] = contextvars.ContextVar(
    "bluewren_request_id", default=None
)
"""The command a log line is about: ``<conn_id>-<n>`` (set per command task)."""

_TOKEN: Final = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")

_STANDARD: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


def redact(text: str) -> str:
    """``text`` with anything shaped like a JWT replaced by ``[redacted-token]``."""
    return _TOKEN.sub("[redacted-token]", text)


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        conn = getattr(record, "conn_id", None)
        conn = conn if conn is not None else conn_id_var.get()
        if conn is not None:
            obj["conn_id"] = conn
        request = getattr(record, "request_id", None)
        request = request if request is not None else request_id_var.get()
        if request is not None:
            obj["request_id"] = request
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in obj and key not in ("conn_id", "request_id"):
                obj[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info:
            obj["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(obj, default=str)


def configure_logging(level: int | str = logging.INFO, stream: IO[str] | None = None) -> None:
    """Sends the ``bluewren`` loggers to ``stream`` (stderr) as JSON lines at ``level``."""
    logger = logging.getLogger("bluewren")
    for handler in list(logger.handlers):
        if getattr(handler, "_bluewren_json", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._bluewren_json = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    logger.propagate = False


_requests = itertools.count(1)


def next_request_id(conn_id: int) -> str:
    """A new request id for a command of connection ``conn_id``: ``<conn_id>-<n>``."""
    return f"{conn_id}-{next(_requests)}"
