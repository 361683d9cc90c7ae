"""One log line per connection outage instead of aio-pika's and aiormq's reports.

For one cut connection, aiormq and aio-pika log about six lines (three at
ERROR, one with a traceback), and during a longer outage one more per
reconnect attempt. :class:`OutageLog` logs one WARNING on the
``lexigram.tasks.rabbitmq`` logger when a connection is lost and one when it
is back; :data:`CLIENT_LOG_FILTER`, attached to the client libraries'
loggers in :data:`CLIENT_LOGGERS` when a queue is created, drops the reports
those two lines replace. It drops nothing else, and
``CLIENT_LOG_FILTER.enabled = False`` keeps every line.
"""

from __future__ import annotations

import logging
import time
from typing import Final

logger = logging.getLogger("lexigram.tasks.rabbitmq")

#: ``logger name -> message templates`` of the reports about a lost connection.
_NOISE: Final = {
    "aiormq.connection": (
        "error when creating transport",
        "Unexpected connection close from remote",
        "Cancelling cause reader exited abnormally",
    ),
    "aio_pika.robust_connection": (
        "Connection to %s closed. Reconnecting",
        'Connection attempt to "%s" failed',
        'Connection attempt to "%s" cancelled',
    ),
    "aio_pika.tools": ("Callback %r error",),
}

#: The loggers :data:`CLIENT_LOG_FILTER` is attached to.
CLIENT_LOGGERS: Final = tuple(_NOISE)


class ReconnectNoiseFilter(logging.Filter):
    """Drops aio-pika's and aiormq's reports of a lost connection and of reconnect attempts."""

    def __init__(self) -> None:
        super().__init__()
        #: ``False`` lets every record through.
        self.enabled = True

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.enabled or not isinstance(record.msg, str):
            return True
        templates = _NOISE.get(record.name, ())
        if not record.msg.startswith(templates):
            return True
        if record.name == "aio_pika.tools":
            # Only a robust channel's close callback failing because its
            # connection is gone; any other callback error is kept.
            args = record.args if isinstance(record.args, tuple) else ()
            return not (args and "RobustChannel._on_close" in repr(args[0]))
        return False


CLIENT_LOG_FILTER: Final = ReconnectNoiseFilter()


def install_client_log_filter() -> None:
    """Attach :data:`CLIENT_LOG_FILTER` to the client loggers (once; idempotent)."""
    for name in CLIENT_LOGGERS:
        client_logger = logging.getLogger(name)
        if CLIENT_LOG_FILTER not in client_logger.filters:
            client_logger.addFilter(CLIENT_LOG_FILTER)


class OutageLog:
    """Logs when a connection is lost (once per outage) and when it is back."""

    def __init__(self, name: str, url: str, reconnect_interval: float, nodes: int = 1) -> None:
        self.name = name
        self.url = url
        self.reconnect_interval = reconnect_interval
        self.nodes = nodes
        self._since: float | None = None

    @property
    def down(self) -> bool:
        return self._since is not None

    def lost(self, cause: BaseException | None, describe: str) -> None:
        if self._since is not None:
            return  # the same outage: a failed reconnect attempt
        self._since = time.monotonic()
        how = f"every {self.reconnect_interval:g}s"
        if self.nodes > 1:
            how = f"to each of the {self.nodes} nodes in turn, then {how}"
        logger.warning(
            "RabbitMQ connection %r to %s lost (%s); reconnecting %s",
            self.name,
            self.url,
            describe or (type(cause).__name__ if cause is not None else "closed"),
            how,
        )

    def restored(self) -> None:
        if self._since is None:
            return
        seconds, self._since = time.monotonic() - self._since, None
        logger.warning(
            "RabbitMQ connection %r to %s restored after %.2fs", self.name, self.url, seconds
        )
