"""Connection pools of :class:`PostgresTaskQueue` and the retry around every statement.

:class:`Pooled` holds the pool state the other parts share; the insert path
(:mod:`._insert`), retention (:mod:`._retention`) and the queue itself build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from lexigram.tasks.errors import BackendConnectionError
from lexigram.tasks.postgres._connect import CONNECTION_ERRORS, connection_error, open_pool
from lexigram.tasks.postgres._sql import Statements
from lexigram.tasks.protocol import BaseTaskQueue

logger = logging.getLogger("lexigram.tasks.postgres")

T = TypeVar("T")

#: Attempts for one statement when the connection drops under it.
_ATTEMPTS = 3


class Pooled(BaseTaskQueue):
    """The pools of a PostgreSQL queue (the base of :class:`PostgresTaskQueue`)."""

    postgres_dsn: str
    queue_name: str
    min_pool_size: int
    max_pool_size: int
    connect_timeout: float
    async_commit: bool
    _sql: Statements
    _application_name: str
    _pool: asyncpg.Pool | None
    _worker_pool: asyncpg.Pool | None
    _lock: asyncio.Lock

    async def _open_pool(self, *, synchronous_commit: bool) -> asyncpg.Pool:
        settings = {"application_name": self._application_name}
        if not synchronous_commit:
            settings["synchronous_commit"] = "off"
        return await open_pool(
            self.postgres_dsn,
            min_size=self.min_pool_size,
            max_size=self.max_pool_size,
            timeout=self.connect_timeout,
            server_settings=settings,
            reset=_keep_session,
        )

    def _main(self) -> asyncpg.Pool:
        if self._pool is None:
            raise self._not_connected()
        return self._pool

    def _not_connected(self) -> BackendConnectionError:
        return BackendConnectionError(f"{self!r} is not connected: call connect() first")

    async def _settling(self) -> asyncpg.Pool:
        """The pool for leases and settlements (asynchronous commit when enabled)."""
        main = self._main()
        if not self.async_commit:
            return main
        if self._worker_pool is None:
            async with self._lock:
                if self._worker_pool is None:
                    self._worker_pool = await self._open_pool(synchronous_commit=False)
        return self._worker_pool

    async def _run(
        self,
        operation: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        settling: bool = False,
    ) -> T:
        """Run ``operation`` on a pooled connection, again on a fresh one if it drops.

        A connection that failed is terminated, never handed out again; a
        failure while returning a connection to the pool never discards a
        result already received (leased jobs would otherwise go missing
        until their lease lapsed).
        """
        for attempt in range(1, _ATTEMPTS + 1):
            pool = await self._settling() if settling else self._main()
            try:
                connection = await pool.acquire()
            except CONNECTION_ERRORS as exc:
                failure: BaseException = exc
            else:
                try:
                    return await operation(connection)
                except CONNECTION_ERRORS as exc:
                    _discard(connection)
                    failure = exc
                finally:
                    await _release(pool, connection)
            if attempt == _ATTEMPTS or self._pool is None:
                raise connection_error(self.postgres_dsn, failure) from failure
            logger.warning("PostgreSQL connection lost (%s); retrying", type(failure).__name__)
            await asyncio.sleep(0.05 * 4**attempt)
        raise AssertionError("unreachable")


def _discard(connection: asyncpg.Connection) -> None:
    """Make sure a failed connection is closed, not reused."""
    with contextlib.suppress(asyncpg.InterfaceError):  # already closed and detached
        connection.terminate()


async def _release(pool: asyncpg.Pool, connection: asyncpg.Connection) -> None:
    try:
        await pool.release(connection)
    except Exception as exc:  # the pool has terminated it and opens a new one when needed
        logger.debug("returning a connection to the pool failed: %s", exc)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Pool ``reset`` hook: nothing to undo (the queue leaves no session state behind).

    asyncpg's default reset costs a round trip (``RESET ALL; UNLISTEN *; ...``)
    on every release, which would double the round trips of every operation.
    """
