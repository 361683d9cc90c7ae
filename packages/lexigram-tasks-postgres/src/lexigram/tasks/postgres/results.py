"""PostgresResultStore: durable job results in PostgreSQL, waited on with LISTEN/NOTIFY.

A result is one row of ``<schema>.results`` (created by migration 0003):
the :class:`~lexigram.tasks.results.JobResult` as JSON and when it expires.
Storing it is one statement that upserts the row and NOTIFYs
``'<schema>.results'`` with the job id, so the notification goes out when
the row commits. Every waiter of a store shares one LISTEN connection; a
waiter reads the row after it is registered (no result is missed between
the two) and again every ``recheck_interval`` seconds, in case a
notification was lost while that connection was being re-established.
Expired rows are never returned and are deleted in batches by a background
task every ``cleanup_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from lexigram.tasks.errors import (
    BackendConnectionError,
    JobSerializationError,
    MalformedJobError,
    ResultTimeoutError,
)
from lexigram.tasks.postgres._pools import _keep_session, failover_patience, run_retrying
from lexigram.tasks.postgres._results_listener import ResultListener
from lexigram.tasks.postgres.connection import (
    CONNECTION_ERRORS,
    connection_error,
    open_pool,
    redacted,
    validate_url,
)
from lexigram.tasks.postgres.migrate import apply_migrations, current_version
from lexigram.tasks.postgres.schema import check_schema_name, quote_ident
from lexigram.tasks.results import JobResult

logger = logging.getLogger("lexigram.tasks.postgres")

T = TypeVar("T")

#: Results bigger than this (bytes of JSON) are refused by default.
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024
#: The migration that creates the results table.
RESULTS_VERSION = 3
#: How often a waiter re-reads its row while no LISTEN connection is up.
_POLL_WITHOUT_LISTEN = 1.0
#: NOTIFY payloads must be shorter than this; longer job ids are found by rechecks.
_NOTIFY_LIMIT = 8000
_PURPOSE = "the result store"
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *CONNECTION_ERRORS)


@dataclass(frozen=True, slots=True)
class _Statements:
    channel: str
    set: str
    get: str
    delete_expired: str

    @classmethod
    def for_schema(cls, schema: str) -> _Statements:
        t = f"{quote_ident(schema)}.results"
        return cls(
            channel=f"{schema}.results",
            set=(
                f"WITH stored AS (INSERT INTO {t} (job_id, status, result, expires_at)"
                " VALUES ($1, $2, $3::json, now() + make_interval(secs => $4))"
                " ON CONFLICT (job_id) DO UPDATE SET status = EXCLUDED.status,"
                " result = EXCLUDED.result, stored_at = EXCLUDED.stored_at,"
                " expires_at = EXCLUDED.expires_at RETURNING job_id)"
                " SELECT pg_notify($5, job_id) FROM stored"
                f" WHERE octet_length(job_id) < {_NOTIFY_LIMIT}"
            ),
            get=f"SELECT result::text FROM {t} WHERE job_id = $1 AND expires_at > now()",
            delete_expired=(
                f"DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t}"
                " WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED)"
            ),
        )


class PostgresResultStore:
    """A :class:`~lexigram.tasks.results.ResultStore` in PostgreSQL tables.

    :param postgres_dsn: ``postgresql://user:password@host:port/database``; any other
        scheme raises :class:`~lexigram.tasks.ConfigurationError`.
    :param schema: the schema holding ``results`` (the queue's schema by default).
    :param ttl: seconds a result is kept when the worker does not say otherwise.
    :param max_result_bytes: results whose JSON is bigger are refused with
        :class:`~lexigram.tasks.JobSerializationError` (the worker then stores
        a failure naming the problem).
    :param cleanup_interval: seconds between deletions of expired rows while
        connected; ``None`` leaves them to other processes (or to
        :meth:`delete_expired`).
    :param cleanup_batch_size: rows per deletion transaction.
    :param recheck_interval: a waiter re-reads its row this often even without
        a notification.
    :param auto_migrate: create or upgrade the schema on :meth:`connect`.
    :param pool: an asyncpg pool of your own to run statements on (not closed by
        :meth:`disconnect`); waiting still opens one LISTEN connection to ``postgres_dsn``.
    """

    def __init__(
        self,
        postgres_dsn: str,
        *,
        schema: str = "lexigram_tasks",
        ttl: float = 3600.0,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        cleanup_interval: float | None = 60.0,
        cleanup_batch_size: int = 1000,
        recheck_interval: float = 5.0,
        auto_migrate: bool = True,
        max_pool_size: int = 5,
        connect_timeout: float = 10.0,
        pool: asyncpg.Pool | None = None,
    ) -> None:
        validate_url(postgres_dsn)
        if ttl <= 0 or recheck_interval <= 0 or connect_timeout <= 0:
            raise ValueError("ttl, recheck_interval and connect_timeout must be > 0")
        if cleanup_interval is not None and cleanup_interval <= 0:
            raise ValueError("cleanup_interval must be > 0 (or None for no cleanup task)")
        if max_result_bytes < 1 or cleanup_batch_size < 1 or max_pool_size < 1:
            raise ValueError("max_result_bytes, cleanup_batch_size and max_pool_size must be >= 1")
        self.postgres_dsn = postgres_dsn
        self.schema = check_schema_name(schema)
        self.ttl = ttl
        self.max_result_bytes = max_result_bytes
        self.cleanup_interval = cleanup_interval
        self.cleanup_batch_size = cleanup_batch_size
        self.recheck_interval = recheck_interval
        self.auto_migrate = auto_migrate
        self.max_pool_size = max_pool_size
        self.connect_timeout = connect_timeout
        #: Every connection of the store is named so in ``pg_stat_activity``.
        self.application_name = f"lexigram-tasks:results:{schema}"[:63]
        self._sql = _Statements.for_schema(schema)
        self._given_pool = pool
        self._pool: asyncpg.Pool | None = None
        self._listener: ResultListener | None = None
        self._cleanup: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return (
            f"PostgresResultStore(postgres_dsn={redacted(self.postgres_dsn)!r}, "
            f"schema={self.schema!r}, ttl={self.ttl})"
        )

    # -- lifecycle -------------------------------------------------------------

    async def connect(self) -> None:
        """Open the pool (unless one was given) and check or migrate the schema."""
        async with self._lock:
            if self._pool is not None:
                return
            pool = self._given_pool
            if pool is None:
                pool = await open_pool(
                    self.postgres_dsn,
                    min_size=1,
                    max_size=self.max_pool_size,
                    timeout=self.connect_timeout,
                    purpose=_PURPOSE,
                    server_settings={"application_name": self.application_name},
                    reset=_keep_session,
                )
            try:
                await self._check_schema(pool)
            except BaseException:
                if self._given_pool is None:
                    await pool.close()
                raise
            self._pool = pool
            if self.cleanup_interval is not None:
                self._cleanup = asyncio.create_task(
                    self._cleanup_loop(self.cleanup_interval), name="lexigram-pg-results-clean"
                )

    async def disconnect(self) -> None:
        """Stop the cleanup task, close the connections; pending waits raise."""
        async with self._lock:
            cleanup, self._cleanup = self._cleanup, None
            if cleanup is not None:
                cleanup.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await cleanup
            pool, self._pool = self._pool, None
            listener, self._listener = self._listener, None
            if listener is not None:
                await listener.close()  # wakes the waiters, which find no pool
            if pool is not None and self._given_pool is None:
                try:
                    await asyncio.wait_for(pool.close(), self.connect_timeout)
                except _CLOSE_ERRORS:
                    pool.terminate()

    async def _check_schema(self, pool: asyncpg.Pool) -> None:
        try:
            async with pool.acquire() as connection:
                if self.auto_migrate:
                    await apply_migrations(connection, self.schema)
                    return
                version = await current_version(connection, self.schema)
        except CONNECTION_ERRORS as exc:
            raise connection_error(self.postgres_dsn, exc, purpose=_PURPOSE) from None
        if version < RESULTS_VERSION:
            raise BackendConnectionError(
                f"schema {self.schema!r} at {redacted(self.postgres_dsn)} is at version "
                f"{version} but the result store needs {RESULTS_VERSION}: run "
                f"'lexigram-tasks postgres migrate --schema {self.schema}' or pass "
                "auto_migrate=True"
            )

    # -- the ResultStore protocol ----------------------------------------------

    async def set(self, job_id: str, result: JobResult, ttl: float | None = None) -> None:
        data = result.to_json()
        size = len(data.encode())
        if size > self.max_result_bytes:
            raise JobSerializationError(
                f"result of job {job_id} is {size} bytes of JSON, more than "
                f"max_result_bytes={self.max_result_bytes}; store large data elsewhere "
                "and return a reference to it"
            )
        seconds = self.ttl if ttl is None else ttl
        await self._run(
            lambda c: c.execute(
                self._sql.set, job_id, result.status, data, seconds, self._sql.channel
            )
        )

    async def get(self, job_id: str) -> JobResult | None:
        data: str | None = await self._run(lambda c: c.fetchval(self._sql.get, job_id))
        return None if data is None else _decode(job_id, data)

    async def wait(self, job_id: str, timeout: float | None = None) -> JobResult:
        result = await self.get(job_id)
        if result is not None:
            return result
        deadline = None if timeout is None else time.monotonic() + timeout
        listener = self._notifications()
        while True:
            if self._listener is not listener:
                raise self._not_connected()  # disconnected meanwhile
            await listener.ensure()
            wake = listener.register(job_id)
            try:
                # Read after registering, so a result stored in between is not missed.
                result = await self.get(job_id)
                if result is not None:
                    return result
                slice_ = self.recheck_interval
                if not listener.listening:
                    slice_ = min(slice_, _POLL_WITHOUT_LISTEN)
                if deadline is not None:
                    slice_ = min(slice_, deadline - time.monotonic())
                    if slice_ <= 0:
                        raise ResultTimeoutError(
                            f"no result for job {job_id} within {timeout} seconds"
                        )
                await asyncio.wait((wake,), timeout=slice_)
            finally:
                listener.forget(job_id, wake)

    # -- retention -------------------------------------------------------------

    async def delete_expired(self) -> int:
        """Delete every expired row, ``cleanup_batch_size`` per transaction; return how many.

        Rows another session holds are skipped (the next run gets them), so
        several processes may clean up at once.
        """
        deleted = 0
        while True:
            status: str = await self._run(
                lambda c: c.execute(self._sql.delete_expired, self.cleanup_batch_size)
            )
            count = int(status.split()[-1])  # "DELETE <count>"
            deleted += count
            if count < self.cleanup_batch_size:
                return deleted
            await asyncio.sleep(0)

    async def _cleanup_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                deleted = await self.delete_expired()
            except Exception as exc:
                logger.warning("cleanup of expired results in %r failed: %s", self, exc)
            else:
                if deleted:
                    logger.debug("deleted %d expired result(s) of %r", deleted, self)

    # -- plumbing --------------------------------------------------------------

    def _notifications(self) -> ResultListener:
        if self._pool is None:
            raise self._not_connected()
        if self._listener is None:
            self._listener = ResultListener(
                self.postgres_dsn,
                self._sql.channel,
                self.connect_timeout,
                application_name=self.application_name,
            )
        return self._listener

    def _not_connected(self) -> BackendConnectionError:
        return BackendConnectionError(f"{self!r} is not connected: call connect() first")

    async def _run(self, operation: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``operation`` on a pooled connection, again on a fresh one if it drops."""
        return await run_retrying(
            self._current_pool,
            operation,
            dsn=self.postgres_dsn,
            purpose=_PURPOSE,
            patience=failover_patience(self.postgres_dsn, self.connect_timeout),
            on_lost=self._server_lost,
        )

    async def _current_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise self._not_connected()
        return self._pool

    def _server_lost(self) -> None:
        """LISTEN again too: the server may be gone or no longer the primary."""
        if self._listener is not None:
            self._listener.drop()


def _decode(job_id: str, data: Any) -> JobResult:
    try:
        return JobResult.from_json(data)
    except (ValueError, TypeError) as exc:
        raise MalformedJobError(f"the stored result of job {job_id} is not valid: {exc}") from exc
