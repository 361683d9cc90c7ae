"""PostgresDeadLetterStorage: failure records in a PostgreSQL table (extra ``[postgres]``).

The table ``failure_records`` lives in ``schema`` (default
``lexigram_tasks``, beside ``PostgresTaskQueue``'s ``jobs``); its SQL is in
``lexigram/tasks/dlq/migrations/``. When the replay target is a
``PostgresTaskQueue`` on the same DSN, a replay enqueues the job and deletes
the record in one transaction: exactly once, even across crashes.
"""

from __future__ import annotations

import builtins
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from lexigram.tasks.dlq.filters import FailureFilter
from lexigram.tasks.dlq.record import FailureRecord
from lexigram.tasks.job import Job
from lexigram.tasks.postgres.connection import open_connection, open_pool, redacted, validate_url
from lexigram.tasks.postgres.schema import (
    Migration,
    check_schema_name,
    load_migrations,
    quote_ident,
    run_migrations,
)
from lexigram.tasks.protocol import Capability, TaskQueueProtocol

_COLUMNS = (
    "id, revision, task, queue_name, error_type, error_message, reason, traceback, attempts,"
    " worker_id, failed_at, job, payload, trace_context, source, details"
)

#: Where applied versions are recorded (beside the queue's ``schema_migrations``).
_VERSIONS_TABLE = "dlq_schema_migrations"
#: What the connection is for, in connection error messages.
_PURPOSE = "the dead letter queue"


def migrations() -> list[Migration]:
    """The shipped migrations, oldest first."""
    return load_migrations("lexigram.tasks.dlq")


class PostgresDeadLetterStorage:
    """Failure records in ``<schema>.failure_records`` on an asyncpg pool.

    ``postgres_dsn`` and ``schema`` are also the config keys
    (``tasks.dead_letter: {storage: postgres, postgres_dsn: ...}``). With
    ``auto_migrate`` the table is created (or upgraded) at connect; otherwise
    call :meth:`migrate` or run the SQL files yourself.
    """

    def __init__(
        self,
        postgres_dsn: str,
        *,
        schema: str = "lexigram_tasks",
        auto_migrate: bool = True,
        min_pool_size: int = 1,
        max_pool_size: int = 4,
        connect_timeout: float = 10.0,
    ) -> None:
        validate_url(postgres_dsn)
        self.postgres_dsn = postgres_dsn
        self.schema = check_schema_name(schema)
        self.auto_migrate = auto_migrate
        self.min_pool_size = min_pool_size
        self.max_pool_size = max_pool_size
        self.connect_timeout = connect_timeout
        self.table = f"{quote_ident(self.schema)}.failure_records"
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return (
            f"PostgresDeadLetterStorage(postgres_dsn={redacted(self.postgres_dsn)!r}, "
            f"schema={self.schema!r})"
        )

    # -- lifecycle -------------------------------------------------------------

    async def connect(self) -> None:
        if self._pool is not None:
            return
        pool = await open_pool(
            self.postgres_dsn,
            min_size=self.min_pool_size,
            max_size=self.max_pool_size,
            timeout=self.connect_timeout,
            purpose=_PURPOSE,
        )
        try:
            if self.auto_migrate:
                async with pool.acquire() as connection:
                    await self._migrate(connection)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def disconnect(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def migrate(self) -> list[int]:
        """Create or upgrade the table; return the versions applied now. Safe to run
        from many processes at once."""
        connection = await self._connect_one()
        try:
            return await self._migrate(connection)
        finally:
            await connection.close()

    async def drop(self) -> None:
        """Drop the table and its migration record, and the schema if nothing else is
        in it. Every record is lost: meant for tests and decommissioning."""
        connection = await self._connect_one()
        try:
            await connection.execute(f"DROP TABLE IF EXISTS {self.table}")
            quoted = quote_ident(self.schema)
            await connection.execute(f"DROP TABLE IF EXISTS {quoted}.{_VERSIONS_TABLE}")
            with contextlib.suppress(asyncpg.DependentObjectsStillExistError):
                await connection.execute(f"DROP SCHEMA IF EXISTS {quoted} RESTRICT")
        finally:
            await connection.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")
        return self._pool

    # -- records ---------------------------------------------------------------

    async def put(self, record: FailureRecord) -> None:
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS.split(", ")[1:])
        await self.pool.execute(
            f"INSERT INTO {self.table} ({_COLUMNS}) VALUES "
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) "
            f"ON CONFLICT (id) DO UPDATE SET {updates}",
            *_row(record),
        )

    async def get(self, record_id: str) -> FailureRecord | None:
        row = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM {self.table} WHERE id = $1", record_id
        )
        return _record(row) if row is not None else None

    async def list(
        self,
        where: FailureFilter,
        *,
        limit: int | None = 50,
        offset: int = 0,
        newest_first: bool = False,
    ) -> builtins.list[FailureRecord]:
        condition, args = _where(where)
        order = "DESC" if newest_first else "ASC"
        sql = (
            f"SELECT {_COLUMNS} FROM {self.table}{condition} ORDER BY failed_at {order}, id {order}"
        )
        args.append(offset)
        sql += f" OFFSET ${len(args)}"
        if limit is not None:
            args.append(limit)
            sql += f" LIMIT ${len(args)}"
        return [_record(row) for row in await self.pool.fetch(sql, *args)]

    async def count(self, where: FailureFilter) -> int:
        condition, args = _where(where)
        return int(await self.pool.fetchval(f"SELECT count(*) FROM {self.table}{condition}", *args))

    async def delete(self, record_id: str, revision: str | None = None) -> bool:
        status: str = await self.pool.execute(
            f"DELETE FROM {self.table} WHERE id = $1 AND ($2::text IS NULL OR revision = $2)",
            record_id,
            revision,
        )
        return status != "DELETE 0"

    async def purge(self, where: FailureFilter) -> int:
        condition, args = _where(where)
        status: str = await self.pool.execute(f"DELETE FROM {self.table}{condition}", *args)
        return int(status.rsplit(" ", 1)[1])

    # -- replay in one transaction ---------------------------------------------

    def can_replay_atomically(self, queue: TaskQueueProtocol) -> bool:
        """True when ``queue`` stores jobs in this storage's database and can join a
        transaction (a ``PostgresTaskQueue`` with the same DSN)."""
        return (
            Capability.TRANSACTIONAL in queue.capabilities
            and getattr(queue, "postgres_dsn", None) == self.postgres_dsn
            and callable(getattr(queue, "using", None))
        )

    async def replay_atomically(
        self,
        queue: TaskQueueProtocol,
        records: Sequence[FailureRecord],
        send: Callable[[builtins.list[FailureRecord]], Awaitable[builtins.list[str]]],
    ) -> dict[str, str]:
        """Lock the records still at their revision, ``send`` their jobs on the same
        connection (so the enqueue joins the transaction), delete them, commit.

        Returns record id -> job id for the records replayed; a record that
        changed or vanished meanwhile is left out. Concurrent replays of one
        record wait on its row lock, then find it gone.
        """
        using: Callable[[asyncpg.Connection], Any] = getattr(queue, "using")  # noqa: B009
        async with self.pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(
                f"SELECT id, revision FROM {self.table} WHERE id = ANY($1::text[]) FOR UPDATE",
                [r.id for r in records],
            )
            current = {row["id"]: row["revision"] for row in rows}
            live = [r for r in records if current.get(r.id) == r.revision]
            if not live:
                return {}
            with using(connection):
                job_ids = await send(live)
            await connection.execute(
                f"DELETE FROM {self.table} WHERE id = ANY($1::text[])", [r.id for r in live]
            )
        return {r.id: job_id for r, job_id in zip(live, job_ids, strict=True)}

    # -- helpers ---------------------------------------------------------------

    async def _connect_one(self) -> asyncpg.Connection:
        return await open_connection(
            self.postgres_dsn, timeout=self.connect_timeout, purpose=_PURPOSE
        )

    async def _migrate(self, connection: asyncpg.Connection) -> builtins.list[int]:
        return await run_migrations(
            connection,
            self.schema,
            migrations(),
            table=_VERSIONS_TABLE,
            lock_namespace="lexigram.tasks.dlq",
        )


def _where(where: FailureFilter) -> tuple[str, builtins.list[Any]]:
    clauses: builtins.list[str] = []
    args: builtins.list[Any] = []
    for column, value, op in (
        ("task", where.task, "="),
        ("queue_name", where.queue, "="),
        ("error_type", where.error_type, "="),
        ("failed_at", where.since, ">="),
        ("failed_at", where.until, "<"),
    ):
        if value is not None:
            args.append(value)
            clauses.append(f"{column} {op} ${len(args)}")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _row(record: FailureRecord) -> tuple[Any, ...]:
    return (
        record.id,
        record.revision,
        record.task,
        record.queue,
        record.error_type,
        record.error_message,
        record.reason,
        record.traceback,
        record.attempts,
        record.worker_id,
        record.failed_at,
        record.job.to_json() if record.job is not None else None,
        record.payload,
        json.dumps(record.trace_context),
        record.source,
        json.dumps(record.details),
    )


def _record(row: Any) -> FailureRecord:
    job = row["job"]
    return FailureRecord(
        id=row["id"],
        revision=row["revision"],
        job=Job.from_json(job) if job is not None else None,
        queue=row["queue_name"],
        error_type=row["error_type"],
        error_message=row["error_message"],
        reason=row["reason"],
        traceback=row["traceback"],
        attempts=row["attempts"],
        worker_id=row["worker_id"],
        failed_at=row["failed_at"],
        payload=row["payload"],
        trace_context=json.loads(row["trace_context"]),
        source=row["source"],
        details=json.loads(row["details"]),
    )
