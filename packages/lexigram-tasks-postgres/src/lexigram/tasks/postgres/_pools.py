"""Connection pools of :class:`PostgresTaskQueue` and the retry around every statement.

:class:`Pooled` holds the pool state the other parts share; the insert path
(:mod:`._insert`), retention (:mod:`._retention`) and the queue itself build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from lexigram.tasks.errors import BackendConnectionError
from lexigram.tasks.postgres._connect import RETRY_ERRORS, connection_error, open_pool
from lexigram.tasks.postgres._hosts import several
from lexigram.tasks.postgres._listener import Listener
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
    _listener: Listener | None
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
        """Run ``operation`` on a pooled connection, again on a fresh one if it drops
        (see :func:`run_retrying`)."""
        return await run_retrying(
            self._settling if settling else self._main_pool,
            operation,
            dsn=self.postgres_dsn,
            patience=failover_patience(self.postgres_dsn, self.connect_timeout),
            on_lost=self._server_lost,
        )

    async def _main_pool(self) -> asyncpg.Pool:
        return self._main()

    def _server_lost(self) -> None:
        """A statement lost its server: LISTEN again too, maybe on the new primary."""
        if self._listener is not None:
            self._listener.drop()


def failover_patience(dsn: str, connect_timeout: float) -> float | None:
    """How long a statement keeps being retried on lost connections: with
    several hosts, ``connect_timeout`` seconds (a failover takes a while);
    else ``None``, a few quick attempts."""
    return connect_timeout if several(dsn) else None


async def run_retrying(
    get_pool: Callable[[], Awaitable[asyncpg.Pool]],
    operation: Callable[[asyncpg.Connection], Awaitable[T]],
    *,
    dsn: str,
    purpose: str = "",
    patience: float | None = None,
    on_lost: Callable[[], None] | None = None,
) -> T:
    """Run ``operation`` on a connection of ``get_pool()``, again on a fresh one if it fails
    with one of :data:`RETRY_ERRORS`.

    A connection that failed is terminated, never handed out again, and the
    pool's other connections are replaced as they are next used, since they
    may be to the same lost (or now read-only) server; ``on_lost`` is then
    called. ``patience``: seconds to keep retrying after the first failure
    (``None``: :data:`_ATTEMPTS` attempts). The last failure is raised as
    :class:`~lexigram.tasks.BackendConnectionError`. A failure while returning
    a connection to the pool never discards a result already received
    (leased jobs would otherwise go missing until their lease lapsed).
    """
    give_up: float | None = None
    attempt = 0
    while True:
        attempt += 1
        pool = await get_pool()
        try:
            connection = await pool.acquire()
        except RETRY_ERRORS as exc:
            failure: BaseException = exc
        else:
            try:
                return await operation(connection)
            except RETRY_ERRORS as exc:
                _discard(connection)
                failure = exc
            finally:
                await _release(pool, connection)
        await pool.expire_connections()
        if on_lost is not None:
            on_lost()
        now = time.monotonic()
        if give_up is None:
            give_up = now + (patience or 0.0)
        pause = 0.05 * 4**attempt if patience is None else min(0.1 * 2**attempt, 1.0)
        out_of_attempts = attempt >= _ATTEMPTS if patience is None else now + pause > give_up
        if out_of_attempts:
            raise connection_error(dsn, failure, purpose=purpose) from failure
        logger.warning(
            "PostgreSQL connection lost or its server read-only (%s); retrying",
            type(failure).__name__,
        )
        await asyncio.sleep(pause)


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
