"""LISTEN on a dedicated connection and wake the dequeues waiting for jobs."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg

from lexigram.tasks.errors import BackendConnectionError
from lexigram.tasks.postgres._connect import open_connection

logger = logging.getLogger("lexigram.tasks.postgres")

#: After a failed attempt, wait this long before trying to LISTEN again.
RETRY_AFTER = 1.0

_LISTEN_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
)
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (BackendConnectionError, *_LISTEN_ERRORS)
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *_LISTEN_ERRORS)


class Listener:
    """Counts notifications for one queue and wakes waiters on each.

    A waiter reads :attr:`seen` before it polls the table and then awaits
    :meth:`wait_after`: a notification that arrived during the poll is not
    lost. When the connection drops (``pg_terminate_backend``, a server
    restart) every waiter is woken, and the next :meth:`ensure` reconnects.
    """

    def __init__(
        self, dsn: str, channel: str, queue_name: str, timeout: float, *, application_name: str
    ) -> None:
        self._dsn = dsn
        self._application_name = application_name
        self._channel = channel
        self._queue_name = queue_name
        self._timeout = timeout
        self._connection: asyncpg.Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._failed_at = 0.0
        self._waiters: set[asyncio.Future[None]] = set()
        self.seen = 0

    @property
    def listening(self) -> bool:
        return self._connection is not None and not self._connection.is_closed()

    async def ensure(self) -> None:
        """Start listening if not already; on failure, keep going without (polling)."""
        if self.listening or time.monotonic() - self._failed_at < RETRY_AFTER:
            return
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.create_task(self._connect())
        try:
            await asyncio.shield(connecting)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this caller was cancelled
            # close() cancelled the attempt: the caller finds the listener closed.
        finally:
            # Every caller awaits the same attempt; the first to see it done clears it.
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> None:
        try:
            connection = await open_connection(
                self._dsn,
                timeout=self._timeout,
                server_settings={"application_name": self._application_name},
            )
            await connection.add_listener(self._channel, self._on_notify)
        except _CONNECT_ERRORS as exc:
            self._failed_at = time.monotonic()
            logger.warning("LISTEN failed, polling instead until it works again: %s", exc)
            return
        connection.add_termination_listener(self._on_terminated)
        self._connection = connection
        self._wake()  # jobs may have arrived while no one was listening

    async def wait_after(self, seen: int, timeout: float) -> None:
        """Return on the first notification after ``seen``, or after ``timeout`` seconds."""
        if self.seen != seen or timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        # A timer on a plain future: fewer event-loop turns per wake-up than wait_for.
        timer = loop.call_later(timeout, _resolve, waiter)
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.discard(waiter)

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            connection.remove_termination_listener(self._on_terminated)
            try:
                await asyncio.wait_for(connection.close(), self._timeout)
            except _CLOSE_ERRORS:
                connection.terminate()
        self._wake()

    def drop(self) -> None:
        """Let go of the connection (its server may be gone or no longer the primary);
        the next :meth:`ensure` connects again, to the server that takes writes now.

        Waiters are woken: notifications sent meanwhile went to the new server.
        """
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.remove_termination_listener(self._on_terminated)
            connection.terminate()
            self._wake()

    def _on_notify(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        if payload == self._queue_name:
            self._wake()

    def _on_terminated(self, connection: Any) -> None:
        logger.info("the LISTEN connection was closed; reconnecting on the next wait")
        self._connection = None
        self._wake()

    def _wake(self) -> None:
        self.seen += 1
        for waiter in self._waiters:
            _resolve(waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
