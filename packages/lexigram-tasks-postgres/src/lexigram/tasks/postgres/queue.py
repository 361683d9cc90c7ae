"""PostgresTaskQueue: jobs as rows, leased with FOR UPDATE SKIP LOCKED."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

import asyncpg

from lexigram.tasks.errors import BackendConnectionError, JobTooLargeError
from lexigram.tasks.job import DEFAULT_MAX_JOB_BYTES, Job
from lexigram.tasks.postgres._connect import (
    CONNECTION_ERRORS,
    connection_error,
    open_pool,
    redacted,
    validate_url,
)
from lexigram.tasks.postgres._listener import Listener
from lexigram.tasks.postgres._sql import Statements
from lexigram.tasks.postgres.migrate import (
    apply_migrations,
    check_schema_name,
    current_version,
    latest_version,
    migrate,
)
from lexigram.tasks.protocol import BaseTaskQueue, Capability, DeadLetter, Delivery, QueueCounts

logger = logging.getLogger("lexigram.tasks.postgres")

T = TypeVar("T")
#: A job with its encoded payload, checked by ``encode_job`` before any write.
_Encoded = tuple[Job, bytes]

#: Connections bound with :meth:`PostgresTaskQueue.using`, by queue instance id.
_BOUND: ContextVar[Mapping[int, Any] | None] = ContextVar(
    "lexigram_tasks_postgres_bound", default=None
)

_CLOSE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *CONNECTION_ERRORS)

#: Attempts for one statement when the connection drops under it.
_ATTEMPTS = 3
#: Longest wait between polls while no LISTEN connection is up.
_POLL_WITHOUT_LISTEN = 1.0
#: Payload bytes per INSERT of a bulk enqueue. PostgreSQL takes at most 1 GB
#: in one value (the statement's bytea[] of payloads) and one protocol
#: message: a bigger batch is split into several INSERTs in one transaction.
_STATEMENT_BYTES = 64 * 1024 * 1024
#: The largest payload PostgreSQL can take: 1 GB, less room for the rest of the row.
_PAYLOAD_LIMIT = 1024**3 - 1024**2


class PostgresTaskQueue(BaseTaskQueue):
    """A task queue stored in PostgreSQL tables, on an asyncpg connection pool.

    Jobs are rows of ``<schema>.jobs``, leased with ``FOR UPDATE SKIP LOCKED``
    in batches; idle workers are woken by ``LISTEN/NOTIFY`` rather than by
    polling. Enqueue can join the caller's own transaction (``connection=``
    or :meth:`using`), so a job exists if and only if that transaction commits.

    :param postgres_dsn: ``postgresql://user:password@host:port/database``
        (``sslmode`` and the other libpq URL options pass through to asyncpg);
        any other scheme raises :class:`~lexigram.tasks.ConfigurationError`.
    :param queue_name: the queue this instance reads and writes.
    :param schema: the schema holding the tables; created by the migrations.
    :param auto_migrate: create or upgrade the schema on :meth:`connect`
        (otherwise run ``lexigram-tasks postgres migrate`` beforehand).
    :param keep_finished: seconds to keep finished jobs as ``status = 'done'``
        rows; ``0`` deletes a job as soon as it is acked.
    :param keep_failed: seconds to keep dead-lettered rows; ``None`` keeps them
        until they are replayed or purged.
    :param cleanup_interval: seconds between retention cleanups.
    :param async_commit: commit leases, acks and lease extensions without
        waiting for the WAL flush (``synchronous_commit = off`` on the
        workers' connections). Enqueues always wait. A database crash can then
        forget the last moments of settlements, which only makes those jobs
        run again: at-least-once delivery is kept.
    :param max_job_bytes: largest encoded job an enqueue accepts; a bigger one
        raises :class:`~lexigram.tasks.JobTooLargeError` and nothing is written.
    """

    system = "postgresql"
    capabilities = frozenset(
        {Capability.DELAY, Capability.PRIORITY, Capability.UNIQUE, Capability.TRANSACTIONAL}
    )

    def __init__(
        self,
        postgres_dsn: str,
        queue_name: str = "default",
        *,
        schema: str = "lexigram_tasks",
        auto_migrate: bool = True,
        min_pool_size: int = 1,
        max_pool_size: int = 10,
        connect_timeout: float = 10.0,
        keep_finished: float = 0.0,
        keep_failed: float | None = None,
        cleanup_interval: float = 60.0,
        cleanup_batch_size: int = 1000,
        async_commit: bool = True,
        max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
    ) -> None:
        validate_url(postgres_dsn)
        if not queue_name:
            raise ValueError("queue_name must not be empty")
        if keep_finished < 0 or (keep_failed is not None and keep_failed < 0):
            raise ValueError("keep_finished and keep_failed must be >= 0")
        if max_job_bytes < 1:
            raise ValueError("max_job_bytes must be >= 1")
        self.postgres_dsn = postgres_dsn
        self.queue_name = queue_name
        self.schema = check_schema_name(schema)
        self.auto_migrate = auto_migrate
        self.min_pool_size = min_pool_size
        self.max_pool_size = max_pool_size
        self.connect_timeout = connect_timeout
        self.keep_finished = keep_finished
        self.keep_failed = keep_failed
        self.cleanup_interval = cleanup_interval
        self.cleanup_batch_size = cleanup_batch_size
        self.async_commit = async_commit
        self.max_job_bytes = max_job_bytes
        self._sql = Statements.for_schema(schema)
        self._application_name = f"lexigram-tasks:{queue_name}"[:63]
        self._pool: asyncpg.Pool | None = None
        self._worker_pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._listener: Listener | None = None
        self._cleanup: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"PostgresTaskQueue(postgres_dsn={redacted(self.postgres_dsn)!r}, "
            f"queue_name={self.queue_name!r}, schema={self.schema!r})"
        )

    # -- lifecycle -------------------------------------------------------------

    async def connect(self) -> None:
        """Open the pool (and migrate the schema when ``auto_migrate``)."""
        async with self._lock:
            if self._pool is not None:
                return
            pool = await self._open_pool(synchronous_commit=True)
            try:
                async with pool.acquire() as connection:
                    await self._check_schema(connection)
            except BaseException:
                await pool.close()
                raise
            self._pool = pool
            self._listener = Listener(
                self.postgres_dsn,
                self._sql.channel,
                self.queue_name,
                self.connect_timeout,
                application_name=self._application_name,
            )
            if self.keep_finished > 0 or self.keep_failed is not None:
                self._cleanup = asyncio.create_task(self._cleanup_loop(), name="lexigram-pg-clean")

    async def disconnect(self) -> None:
        """Close every connection; pending dequeues return."""
        async with self._lock:
            if self._cleanup is not None:
                self._cleanup.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._cleanup
                self._cleanup = None
            if self._listener is not None:
                await self._listener.close()
                self._listener = None
            pools = [p for p in (self._worker_pool, self._pool) if p is not None]
            self._pool = self._worker_pool = None
            for pool in pools:
                try:
                    await asyncio.wait_for(pool.close(), self.connect_timeout)
                except _CLOSE_ERRORS:
                    pool.terminate()

    async def migrate(self) -> list[int]:
        """Create or upgrade this queue's schema; return the versions applied now."""
        return await migrate(self.postgres_dsn, self.schema)

    async def _check_schema(self, connection: asyncpg.Connection) -> None:
        if self.auto_migrate:
            applied = await apply_migrations(connection, self.schema)
            if applied:
                logger.info("migrated schema %s to version %d", self.schema, applied[-1])
            return
        version = await current_version(connection, self.schema)
        if version < latest_version():
            raise BackendConnectionError(
                f"schema {self.schema!r} at {redacted(self.postgres_dsn)} is at version "
                f"{version} but lexigram-tasks-postgres needs {latest_version()}: run "
                f"'lexigram-tasks postgres migrate --schema {self.schema}' or pass "
                "auto_migrate=True"
            )

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

    # -- enqueue ---------------------------------------------------------------

    @contextlib.contextmanager
    def using(self, connection: asyncpg.Connection) -> Iterator[None]:
        """Run every enqueue made inside this block on ``connection``.

        Open a transaction on ``connection`` around it, and the jobs enqueued
        inside (directly, through a provider or a task's ``enqueue``) exist if
        and only if that transaction commits.
        """
        token = _BOUND.set({**(_BOUND.get() or {}), id(self): connection})
        try:
            yield
        finally:
            _BOUND.reset(token)

    async def enqueue(self, job: Job, *, connection: asyncpg.Connection | None = None) -> str:
        """Store ``job``; with ``connection``, inside that connection's transaction.

        Returns the id of the job holding ``job.dedup_key`` (``job.id`` when
        it was stored). Raises :class:`~lexigram.tasks.JobSerializationError`
        (or its :class:`~lexigram.tasks.JobTooLargeError`) before any write.
        """
        if connection is None:
            return await super().enqueue(job)
        with self.using(connection):
            return await super().enqueue(job)

    async def enqueue_many(
        self, jobs: Sequence[Job], *, connection: asyncpg.Connection | None = None
    ) -> list[str]:
        """Store ``jobs`` with one multi-row INSERT (one round trip, atomic).

        Every job is encoded and checked first: one that cannot be stored
        raises before anything is written.
        """
        if connection is None:
            return await super().enqueue_many(jobs)
        with self.using(connection):
            return await super().enqueue_many(jobs)

    def encode_job(self, job: Job) -> bytes:
        """:meth:`BaseTaskQueue.encode_job`, and PostgreSQL's own limit on one value."""
        payload = super().encode_job(job)
        if len(payload) > _PAYLOAD_LIMIT:
            raise JobTooLargeError(
                f"job {job.id} of task {job.task!r} is {len(payload):,} bytes, over "
                f"PostgreSQL's limit of {_PAYLOAD_LIMIT:,} for one value: lower "
                "max_job_bytes and pass a reference to large data instead"
            )
        return payload

    async def _enqueue_encoded(self, job: Job, data: bytes) -> str:
        return (await self._store([(job, data)]))[0]

    async def _enqueue_many_encoded(self, encoded: Sequence[_Encoded]) -> list[str]:
        return await self._store(encoded)

    async def _store(self, encoded: Sequence[_Encoded]) -> list[str]:
        connection = (_BOUND.get() or {}).get(id(self))
        if connection is not None:
            return await self._insert(connection, encoded)
        return await self._run(lambda c: self._insert(c, encoded))

    async def _insert(
        self, connection: asyncpg.Connection, encoded: Sequence[_Encoded]
    ) -> list[str]:
        chunks = _chunks(encoded)
        if len(chunks) == 1:
            return await self._insert_chunk(connection, encoded)
        ids: list[str] = []
        async with connection.transaction():  # a savepoint inside the caller's transaction
            for chunk in chunks:
                ids += await self._insert_chunk(connection, chunk)
        return ids

    async def _insert_chunk(
        self, connection: asyncpg.Connection, encoded: Sequence[_Encoded]
    ) -> list[str]:
        if len(encoded) == 1:
            job, payload = encoded[0]
            stored = await connection.fetchval(
                self._sql.insert_one,
                self.queue_name,
                job.id,
                job.priority,
                job.run_at,
                job.attempt,
                job.dedup_key,
                payload,
            )
            if stored is not None or job.dedup_key is None:
                return [job.id]
            return await self._resolve_duplicates(connection, encoded)
        columns = _columns(encoded)
        if not any(columns[4]):  # no dedup keys
            await connection.execute(self._sql.insert_many_plain, self.queue_name, *columns)
            return [job.id for job, _ in encoded]
        rows = await connection.fetch(self._sql.insert_many, self.queue_name, *columns)
        if len(rows) == len(encoded):
            return [job.id for job, _ in encoded]
        return await self._resolve_duplicates(connection, encoded)

    async def _resolve_duplicates(
        self, connection: asyncpg.Connection, encoded: Sequence[_Encoded]
    ) -> list[str]:
        """Ids for a batch where some dedup keys were taken: the holders' ids.

        A holder can finish between the INSERT and this lookup, releasing
        its key; such jobs are inserted again.
        """
        for _ in range(5):
            keys = list({j.dedup_key for j, _ in encoded if j.dedup_key is not None})
            rows = await connection.fetch(self._sql.dedup_holders, self.queue_name, keys)
            holders: dict[str, str] = {row["dedup_key"]: row["job_id"] for row in rows}
            orphans = [
                (j, p) for j, p in encoded if j.dedup_key is not None and j.dedup_key not in holders
            ]
            if not orphans:
                return [
                    holders[j.dedup_key] if j.dedup_key is not None else j.id for j, _ in encoded
                ]
            await connection.fetch(self._sql.insert_many, self.queue_name, *_columns(orphans))
        raise RuntimeError("dedup keys kept changing hands; enqueue not confirmed")

    async def push_raw(self, payload: bytes, *, priority: int = 0) -> None:
        """Store ``payload`` as a job row byte for byte, as a foreign producer would."""

        async def insert(connection: asyncpg.Connection) -> None:
            await connection.execute(
                self._sql.insert_one, self.queue_name, None, priority, None, 0, None, payload
            )

        await self._run(insert)

    # -- leasing ---------------------------------------------------------------

    async def dequeue(
        self, *, max_jobs: int = 1, lease_seconds: float = 30.0, wait: float = 0.0
    ) -> list[Delivery]:
        """Lease up to ``max_jobs`` jobs in one statement, waiting up to ``wait`` seconds.

        While waiting, a NOTIFY from an enqueue (or the time the next delayed
        job is due) wakes the call at once: latency does not depend on how
        often the worker polls.
        """
        if max_jobs < 1:
            return []
        listener = self._listener
        if listener is None:
            raise self._not_connected()
        deadline = time.monotonic() + wait
        while True:
            if wait > 0:
                await listener.ensure()
            seen = listener.seen
            deliveries, due = await self._claim(max_jobs, lease_seconds)
            remaining = deadline - time.monotonic()
            if deliveries or remaining <= 0:
                return deliveries
            timeout = remaining if due is None else min(remaining, max(due, 0.005))
            if not listener.listening:
                timeout = min(timeout, _POLL_WITHOUT_LISTEN)
            await listener.wait_after(seen, timeout)
            if self._listener is not listener:
                return []  # disconnected meanwhile

    async def _claim(
        self, max_jobs: int, lease_seconds: float
    ) -> tuple[list[Delivery], float | None]:
        """Lease up to ``max_jobs``; with none leased, also seconds until one may be due."""
        token = random.getrandbits(63)
        rows = await self._run(
            lambda c: c.fetch(self._sql.claim, self.queue_name, max_jobs, token, lease_seconds),
            settling=True,
        )
        if len(rows) == 1 and rows[0]["id"] is None:
            due: float | None = rows[0]["due"]
            return [], due
        return [self._delivery(row, token) for row in rows], None

    def _delivery(self, row: Any, token: int) -> Delivery:
        return self.parse_delivery(row["payload"], (row["id"], token), attempt=row["attempt"])

    async def extend_lease(self, deliveries: Sequence[Delivery], lease_seconds: float) -> None:
        if not deliveries:
            return
        ids, tokens = _pairs(deliveries)
        await self._run(
            lambda c: c.execute(self._sql.extend, ids, tokens, lease_seconds), settling=True
        )

    # -- settling --------------------------------------------------------------

    async def ack(self, delivery: Delivery) -> None:
        await self.ack_many([delivery])

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Finish several jobs with one statement (a stale lease is a no-op)."""
        if not deliveries:
            return
        ids, tokens = _pairs(deliveries)
        statement = self._sql.ack_keep if self.keep_finished > 0 else self._sql.ack_delete
        await self._run(lambda c: c.execute(statement, ids, tokens), settling=True)

    async def nack(
        self, delivery: Delivery, *, requeue: bool, delay: float = 0.0, reason: str = ""
    ) -> None:
        row_id, token = delivery.token
        job = delivery.job
        if requeue and job is not None:
            payload = job.to_bytes()
            await self._run(
                lambda c: c.execute(
                    self._sql.requeue,
                    row_id,
                    token,
                    payload,
                    job.attempt,
                    job.priority,
                    max(delay, 0.0),
                    reason or None,
                    self._sql.channel,
                ),
                settling=True,
            )
            return
        await self._run(
            lambda c: c.execute(self._sql.dead_letter, row_id, token, reason, delivery.job_id),
            settling=True,
        )

    # -- inspection and retention ----------------------------------------------

    async def counts(self) -> QueueCounts:
        row = await self._run(lambda c: c.fetchrow(self._sql.counts, self.queue_name))
        return QueueCounts(
            ready=row["ready"], delayed=row["delayed"], running=row["running"], failed=row["failed"]
        )

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        rows = await self._run(lambda c: c.fetch(self._sql.dead_letters, self.queue_name, limit))
        return [
            DeadLetter(
                payload=row["payload"],
                reason=row["failure_reason"] or "",
                job_id=row["job_id"],
                failed_at=row["failed_at"],
            )
            for row in rows
        ]

    async def explain_dequeue(self, max_jobs: int = 100, *, analyze: bool = False) -> str:
        """The query plan of the dequeue statement, to check it uses ``jobs_ready_idx``.

        With ``analyze=True`` the statement really runs (``EXPLAIN ANALYZE``)
        inside a transaction that is rolled back, so no job is leased.
        """
        options = "ANALYZE, BUFFERS, " if analyze else ""

        async def explain(connection: asyncpg.Connection) -> str:
            async with connection.transaction():
                rows = await connection.fetch(
                    f"EXPLAIN ({options}COSTS OFF) {self._sql.claim}",
                    self.queue_name,
                    max_jobs,
                    0,
                    30.0,
                )
                plan = "\n".join(row[0] for row in rows)
                raise _RollBack(plan)

        try:
            await self._run(explain)
        except _RollBack as done:
            return done.plan
        raise AssertionError("unreachable")

    async def delete_expired(self) -> int:
        """Delete this queue's finished and failed rows older than their retention.

        Runs in batches of ``cleanup_batch_size`` rows, each its own short
        transaction that skips rows another session holds; returns how many
        rows it deleted. The cleanup task calls it every ``cleanup_interval``.
        """
        deleted = 0
        targets = [(self._sql.purge_done, self.keep_finished)]
        if self.keep_failed is not None:
            targets.append((self._sql.purge_failed, self.keep_failed))
        for statement, keep in targets:
            while True:
                count = await self._run(self._purge_batch(statement, keep))
                deleted += count
                if count < self.cleanup_batch_size:
                    break
                await asyncio.sleep(0)
        return deleted

    async def purge(self) -> int:
        """Deprecated name of :meth:`delete_expired` (``purge`` elsewhere empties a queue)."""
        warnings.warn(
            "PostgresTaskQueue.purge() is deprecated; call delete_expired()",
            DeprecationWarning,
            stacklevel=2,
        )
        return await self.delete_expired()

    def _purge_batch(
        self, statement: str, keep: float
    ) -> Callable[[asyncpg.Connection], Awaitable[int]]:
        async def purge(connection: asyncpg.Connection) -> int:
            status: str = await connection.execute(
                statement, self.queue_name, keep, self.cleanup_batch_size
            )
            return int(status.split()[-1])  # "DELETE <count>"

        return purge

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cleanup_interval)
            try:
                deleted = await self.delete_expired()
            except Exception as exc:
                logger.warning("retention cleanup of %r failed: %s", self, exc)
            else:
                if deleted:
                    logger.debug("retention cleanup deleted %d row(s) of %r", deleted, self)


def _columns(encoded: Sequence[_Encoded]) -> tuple[list[Any], ...]:
    """The column arrays of a multi-row INSERT: id, priority, run_at, attempt, dedup, payload."""
    ids: list[str] = []
    priorities: list[int] = []
    run_ats: list[float | None] = []
    attempts: list[int] = []
    dedup_keys: list[str | None] = []
    payloads: list[bytes] = []
    for job, payload in encoded:
        ids.append(job.id)
        priorities.append(job.priority)
        run_ats.append(job.run_at)
        attempts.append(job.attempt)
        dedup_keys.append(job.dedup_key)
        payloads.append(payload)
    return ids, priorities, run_ats, attempts, dedup_keys, payloads


def _chunks(encoded: Sequence[_Encoded]) -> list[list[_Encoded]]:
    """``encoded`` in runs of at most ``_STATEMENT_BYTES`` of payload (at least one job each)."""
    chunks: list[list[_Encoded]] = [[]]
    size = 0
    for item in encoded:
        if chunks[-1] and size + len(item[1]) > _STATEMENT_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += len(item[1])
    return chunks


class _RollBack(Exception):
    """Leaves a transaction by rollback, carrying what it computed."""

    def __init__(self, plan: str) -> None:
        super().__init__("rollback")
        self.plan = plan


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


def _pairs(deliveries: Sequence[Delivery]) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    tokens: list[int] = []
    for delivery in deliveries:
        row_id, token = delivery.token
        ids.append(row_id)
        tokens.append(token)
    return ids, tokens
