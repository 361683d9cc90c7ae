"""Logging and printing for the CLI, with credentials redacted on the way out."""

from __future__ import annotations

import logging
import sys

from lexigram.tasks.cli._errors import redact

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """Formats records, tracebacks included, then removes passwords from URLs."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _CLIHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so a second call replaces only it."""


def setup_logging(level: str) -> None:
    """Send log records of ``level`` and above to stderr."""
    handler = _CLIHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _CLIHandler):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())


def status(message: str) -> None:
    """A status line for people (stderr, so that stdout stays for data)."""
    print(redact(message), file=sys.stderr, flush=True)


def error(message: str) -> None:
    print(f"error: {redact(message)}", file=sys.stderr, flush=True)
