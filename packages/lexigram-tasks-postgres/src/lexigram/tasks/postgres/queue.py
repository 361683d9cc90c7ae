"""PostgresTaskQueue: jobs as rows, leased with FOR UPDATE SKIP LOCKED."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import asyncpg

from lexigram.tasks.errors import BackendConnectionError, JobTooLargeError
from lexigram.tasks.job import DEFAULT_MAX_JOB_BYTES, Job
from lexigram.tasks.postgres._connect import CONNECTION_ERRORS, redacted, validate_url
from lexigram.tasks.postgres._control import Controlling
from lexigram.tasks.postgres._control_sql import ControlStatements
from lexigram.tasks.postgres._drivers import async_runner, sync_runner
from lexigram.tasks.postgres._insert import BOUND, Encoded, Inserting
from lexigram.tasks.postgres._listener import Listener
from lexigram.tasks.postgres._retention import Retention
from lexigram.tasks.postgres._settling import Settling
from lexigram.tasks.postgres._sql import Statements
from lexigram.tasks.postgres.migrate import (
    apply_migrations,
    check_schema_name,
    current_version,
    latest_version,
    migrate,
)
from lexigram.tasks.protocol import Capability, Delivery

if TYPE_CHECKING:
    from typing import TypeAlias

    import psycopg

    #: A connection an async enqueue can join: asyncpg's, or psycopg 3's async one.
    AsyncConnection: TypeAlias = asyncpg.Connection | psycopg.AsyncConnection[Any]

logger = logging.getLogger("lexigram.tasks.postgres")

_CLOSE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *CONNECTION_ERRORS)

#: Longest wait between polls while no LISTEN connection is up.
_POLL_WITHOUT_LISTEN = 1.0
#: The largest payload PostgreSQL can take: 1 GB, less room for the rest of the row.
_PAYLOAD_LIMIT = 1024**3 - 1024**2


class PostgresTaskQueue(Inserting, Settling, Retention, Controlling):
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
        rows, where :meth:`get_job` reports how they ended; ``0`` deletes a
        job as soon as it is acked (cancelled jobs are then kept an hour).
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
        {
            Capability.DELAY,
            Capability.PRIORITY,
            Capability.UNIQUE,
            Capability.TRANSACTIONAL,
            Capability.INSPECT,
            Capability.CANCEL,
            Capability.WORKERS,
            Capability.ATTEMPTS,
        }
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
        self._control = ControlStatements.for_schema(schema)
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

    @property
    def pool(self) -> asyncpg.Pool | None:
        """The connection pool while connected, else None (the workflow store shares it)."""
        return self._pool

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
            # Always: jobs cancelled before they started are kept a while (see Retention).
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
            await self._let_producer_go()  # a pool closes once its connections are back
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

    # -- enqueue ---------------------------------------------------------------

    @contextlib.contextmanager
    def using(self, connection: AsyncConnection) -> Iterator[None]:
        """Run every enqueue made inside this block on ``connection``.

        ``connection`` is an asyncpg connection or a ``psycopg.AsyncConnection``
        to this queue's database. Open a transaction on it around the block,
        and the jobs enqueued inside (directly, through a provider or a task's
        ``enqueue``) exist if and only if that transaction commits.
        """
        token = BOUND.set({**(BOUND.get() or {}), id(self): async_runner(connection)})
        try:
            yield
        finally:
            BOUND.reset(token)

    async def enqueue(self, job: Job, *, connection: AsyncConnection | None = None) -> str:
        """Store ``job``; with ``connection``, inside that connection's transaction.

        ``connection`` is an asyncpg connection or a ``psycopg.AsyncConnection``
        (see :meth:`enqueue_sync` for a blocking one). Returns the id of the job
        holding ``job.dedup_key`` (``job.id`` when it was stored). Raises
        :class:`~lexigram.tasks.JobSerializationError` (or its
        :class:`~lexigram.tasks.JobTooLargeError`) before any write.
        """
        if connection is None:
            return await super().enqueue(job)
        with self.using(connection):
            return await super().enqueue(job)

    async def enqueue_many(
        self, jobs: Sequence[Job], *, connection: AsyncConnection | None = None
    ) -> list[str]:
        """Store ``jobs`` with one multi-row INSERT (one round trip, atomic).

        Every job is encoded and checked first: one that cannot be stored
        raises before anything is written.
        """
        if connection is None:
            return await super().enqueue_many(jobs)
        with self.using(connection):
            return await super().enqueue_many(jobs)

    def enqueue_sync(self, job: Job, *, connection: psycopg.Connection[Any]) -> str:
        """:meth:`enqueue` on a blocking ``psycopg.Connection``, in its transaction.

        For code without an event loop (a Django view, a WSGI app, a script):
        the same checks and the same INSERT, sent on ``connection``. The queue
        need not be connected. Outside a transaction (autocommit), the job is
        committed at once.
        """
        return self.enqueue_many_sync([job], connection=connection)[0]

    def enqueue_many_sync(
        self, jobs: Sequence[Job], *, connection: psycopg.Connection[Any]
    ) -> list[str]:
        """:meth:`enqueue_many` on a blocking ``psycopg.Connection``, in its transaction."""
        runner = sync_runner(connection)
        if not jobs:
            return []
        return self._insert_sync(runner, [(job, self.encode_job(job)) for job in jobs])

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

    async def _enqueue_many_encoded(self, encoded: Sequence[Encoded]) -> list[str]:
        return await self._store(encoded)

    async def push_raw(self, payload: bytes, *, priority: int = 0) -> None:
        """Store ``payload`` as a job row byte for byte, as a foreign producer would."""

        async def insert(connection: asyncpg.Connection) -> None:
            await connection.execute(
                self._sql.insert_one, self.queue_name, None, priority, None, 0, None, payload, None
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
