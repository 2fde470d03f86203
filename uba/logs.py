"""Logging to stderr, as text for people or JSON lines for machines."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

LOGGER_NAME = "uba"
_format: Literal["text", "json"] = "text"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            payload.update(extra)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def printable_line(text: str) -> str:
    """``text`` as one printable line: each character ``str.isprintable`` refuses (a line
    break, a carriage return, an ANSI escape, a C1 control, a bidi override, U+2028) is
    written as its Python escape (``\\n``, ``\\x1b``, ``\\u202e``); other text is unchanged.

    For what a log line or the CLI's ``error:`` line quotes: a file name from a drop folder
    (``a\\n2026-... ERROR ...: FORGED.csv``) printed a forged log line and the CLI error
    on two lines, and an escape in it rewrote the operator's terminal (found by an attack)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _TextFormatter(logging.Formatter):
    """The text format, one printable line per record (``printable_line``); a traceback
    (``exc_info``) keeps its lines, appended after the escaped message."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802  # logging's name
        return printable_line(super().formatMessage(record))


def configure_logging(fmt: Literal["text", "json"] = "text", level: str = "INFO") -> None:
    """Send the ``uba`` loggers to stderr; called once by each entry point, never on import."""
    global _format
    _format = "json" if fmt == "json" else "text"
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger(LOGGER_NAME)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def get_logger(name: str) -> logging.Logger:
    """A child of the ``uba`` logger so one configuration covers every module."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if not name.startswith(LOGGER_NAME) else name)


def current_format() -> Literal["text", "json"]:
    """The format ``configure_logging`` last set: the API's buffered access lines
    (``uba.api.access_log``) are written in it without going through a formatter."""
    return _format
