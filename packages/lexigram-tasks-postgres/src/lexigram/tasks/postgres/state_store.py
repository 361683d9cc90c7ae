"""PostgresJobStateStore: job states in PostgreSQL for a backend that cannot look inside its queue.

One row per job in ``<schema>.job_states`` (migration 0004), numbered in
enqueue order; listings are keyset pages on ``(queue, state, seq)``,
``(queue, task, seq)`` or ``(queue, seq)``. Every state move is one
statement (an UPSERT or an ``UPDATE ... FROM unnest(...)`` for a batch), so a
cancel cannot cross a lease. Finished rows are deleted ``finished_ttl``
seconds after they finished, in batches.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from lexigram.tasks.attempts import decode_attempts, encode_attempt
from lexigram.tasks.control import (
    MAX_ATTEMPTS_KEPT,
    CancelOutcome,
    JobError,
    JobInfo,
    JobPage,
    JobState,
    Progress,
    WorkerInfo,
    position_cursor,
)
from lexigram.tasks.job import Job
from lexigram.tasks.postgres._pools import failover_patience, run_retrying
from lexigram.tasks.postgres.connection import open_pool, redacted, validate_url
from lexigram.tasks.postgres.migrate import apply_migrations
from lexigram.tasks.postgres.schema import check_schema_name, quote_ident
from lexigram.tasks.state_store import DEFAULT_FINISHED_TTL, Leased, Settled

__all__ = ["PostgresJobStateStore"]

_PURPOSE = "the job state store"
_FINISHED = "('succeeded', 'failed', 'cancelled', 'dead')"
#: Seconds between two purges of finished rows (run on a settle).
PURGE_INTERVAL = 60.0

_COLUMNS = (
    "id, queue, task, state, args, kwargs, attempt, max_attempts, priority, enqueued_at, "
    "run_at, trace_id"
)
_UNNEST = (
    "unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::json[], $6::json[], "
    "$7::int[], $8::int[], $9::int[], $10::float8[], $11::float8[], $12::text[])"
)


class _Statements:
    def __init__(self, schema: str) -> None:
        t = f"{quote_ident(schema)}.job_states"
        w = f"{quote_ident(schema)}.state_workers"
        seq = f"{quote_ident(schema)}.job_states_seq"
        self.enqueue = (
            f"INSERT INTO {t} ({_COLUMNS}) SELECT * FROM {_UNNEST} "
            f"ON CONFLICT (id) DO UPDATE SET seq = nextval('{seq}'), "
            "queue = EXCLUDED.queue, task = EXCLUDED.task, state = EXCLUDED.state, "
            "args = EXCLUDED.args, kwargs = EXCLUDED.kwargs, attempt = EXCLUDED.attempt, "
            "max_attempts = EXCLUDED.max_attempts, priority = EXCLUDED.priority, "
            "enqueued_at = EXCLUDED.enqueued_at, run_at = EXCLUDED.run_at, "
            "trace_id = EXCLUDED.trace_id, started_at = NULL, finished_at = NULL, "
            "lease_until = NULL, error_type = NULL, error_message = NULL, progress = NULL, "
            "progress_message = NULL, meta = '{}', cancel_requested = false"
        )
        # $13: lease_until per job; $14: now. A cancelled row, or one flagged while it
        # ran, ends (or stays) cancelled and is returned as dropped.
        self.lease = (
            f"INSERT INTO {t} AS j ({_COLUMNS}, lease_until, started_at) "
            f"SELECT *, $14::float8 FROM unnest($1::text[], $2::text[], $3::text[], "
            "$4::text[], $5::json[], $6::json[], $7::int[], $8::int[], $9::int[], "
            "$10::float8[], $11::float8[], $12::text[], $13::float8[]) "
            "ON CONFLICT (id) DO UPDATE SET "
            "state = CASE WHEN j.state = 'cancelled' OR j.cancel_requested THEN 'cancelled' "
            "ELSE 'running' END, "
            "finished_at = CASE WHEN j.state = 'cancelled' THEN j.finished_at "
            "WHEN j.cancel_requested THEN $14::float8 ELSE NULL END, "
            "attempt = CASE WHEN j.state = 'cancelled' OR j.cancel_requested THEN j.attempt "
            "ELSE EXCLUDED.attempt END, "
            "started_at = CASE WHEN j.state = 'cancelled' OR j.cancel_requested "
            "THEN j.started_at ELSE $14::float8 END, "
            "lease_until = EXCLUDED.lease_until "
            "RETURNING j.id, j.state = 'cancelled' AS dropped"
        )
        # Per delivery: id, state, error type, error message, run_at, attempt, worker,
        # attempt record (JSON); $7: now, $10: how many attempt records a job keeps.
        self.settle = (
            f"UPDATE {t} AS j SET "
            "state = CASE WHEN s.state = 'retrying' AND j.cancel_requested THEN 'cancelled' "
            "ELSE s.state END, "
            f"finished_at = CASE WHEN s.state IN {_FINISHED} "
            "OR (s.state = 'retrying' AND j.cancel_requested) THEN $7::float8 ELSE NULL END, "
            "error_type = COALESCE(s.etype, j.error_type), "
            "error_message = CASE WHEN s.etype IS NULL THEN j.error_message ELSE s.emsg END, "
            f"run_at = CASE WHEN s.state IN {_FINISHED} THEN j.run_at ELSE s.run_at END, "
            "attempt = COALESCE(s.attempt, j.attempt), lease_until = NULL, "
            "worker_id = COALESCE(s.worker, j.worker_id), "
            f"attempts = {quote_ident(schema)}.append_attempt(j.attempts, s.record::jsonb, $10) "
            "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], "
            "$6::int[], $8::text[], $9::text[]) "
            "AS s(id, state, etype, emsg, run_at, attempt, worker, record) WHERE j.id = s.id"
        )
        self.extend = f"UPDATE {t} SET lease_until = $2 WHERE id = ANY($1) AND state = 'running'"
        self.progress = (
            f"UPDATE {t} SET progress = COALESCE($2, progress), "
            "progress_message = COALESCE($3, progress_message), meta = meta || $4::jsonb "
            "WHERE id = $1 AND state = 'running'"
        )
        self.cancel = (
            f"WITH old AS (SELECT state FROM {t} WHERE id = $1 FOR UPDATE), "
            f"flagged AS (UPDATE {t} SET cancel_requested = true "
            "WHERE id = $1 AND state = 'running'), "
            f"tombstoned AS (UPDATE {t} SET state = 'cancelled', finished_at = $2::float8 "
            f"WHERE id = $1 AND state <> 'running' AND state NOT IN {_FINISHED}) "
            "SELECT state FROM old"
        )
        self.cancel_requested = f"SELECT id FROM {t} WHERE id = ANY($1) AND cancel_requested"
        self.forget = f"DELETE FROM {t} WHERE id = ANY($1)"
        self.get = f"SELECT * FROM {t} WHERE id = $1"
        self.page = (
            f"SELECT * FROM {t} WHERE queue = $1 AND seq > $2 AND ({{where}}) ORDER BY seq LIMIT $3"
        )
        self.purge = (
            f"DELETE FROM {t} WHERE id IN (SELECT id FROM {t} "
            f"WHERE finished_at < $1 ORDER BY finished_at LIMIT $2)"
        )
        self.register = (
            f"INSERT INTO {w} (queue, id, info, expires_at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (queue, id) DO UPDATE SET info = EXCLUDED.info, "
            "expires_at = EXCLUDED.expires_at"
        )
        self.deregister = f"DELETE FROM {w} WHERE queue = $1 AND id = $2"
        self.expire = f"DELETE FROM {w} WHERE queue = $1 AND expires_at <= $2"
        self.workers = f"SELECT info FROM {w} WHERE queue = $1 AND expires_at > $2 ORDER BY id"


#: SQL conditions of the states as read: a due scheduled job reads queued, and a
#: running one whose lease lapsed (its worker died) reads queued too.
_STATE_WHERE = {
    JobState.QUEUED: "state = 'queued' OR (state = 'scheduled' AND run_at <= $now) "
    "OR (state = 'running' AND lease_until < $now)",
    JobState.SCHEDULED: "state = 'scheduled' AND run_at > $now",
    JobState.RUNNING: "state = 'running' AND (lease_until IS NULL OR lease_until >= $now)",
}


class PostgresJobStateStore:
    """Job states, cancellations and the worker registry in PostgreSQL.

    ``schema`` holds the tables (created or upgraded on :meth:`connect` with
    the package's migrations when ``auto_migrate``); ``finished_ttl``:
    seconds a finished job stays visible.
    """

    def __init__(
        self,
        postgres_dsn: str,
        *,
        schema: str = "lexigram_tasks",
        finished_ttl: float = DEFAULT_FINISHED_TTL,
        auto_migrate: bool = True,
        max_pool_size: int = 5,
        connect_timeout: float = 10.0,
    ) -> None:
        validate_url(postgres_dsn)
        if finished_ttl <= 0:
            raise ValueError(f"finished_ttl must be > 0 seconds, got {finished_ttl}")
        self.postgres_dsn = postgres_dsn
        self.schema = check_schema_name(schema)
        self.finished_ttl = finished_ttl
        self.auto_migrate = auto_migrate
        self.max_pool_size = max_pool_size
        self.connect_timeout = connect_timeout
        self._sql = _Statements(schema)
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._last_purge = time.monotonic()

    def __repr__(self) -> str:
        return f"PostgresJobStateStore({redacted(self.postgres_dsn)!r}, schema={self.schema!r})"

    @property
    def pool(self) -> asyncpg.Pool | None:
        """The connection pool while connected, else None (the workflow store shares it)."""
        return self._pool

    async def connect(self) -> None:
        async with self._lock:
            if self._pool is not None:
                return
            pool = await open_pool(
                self.postgres_dsn,
                min_size=1,
                max_size=self.max_pool_size,
                timeout=self.connect_timeout,
                purpose=_PURPOSE,
                server_settings={"application_name": f"lexigram-tasks:state:{self.schema}"[:63]},
            )
            if self.auto_migrate:
                try:
                    async with pool.acquire() as connection:
                        await apply_migrations(connection, self.schema)
                except BaseException:
                    await pool.close()
                    raise
            self._pool = pool

    async def disconnect(self) -> None:
        async with self._lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                await pool.close()

    async def _execute(self, method: str, sql: str, *args: Any) -> Any:
        """``connection.<method>(sql, *args)``, again on a fresh connection if it drops."""
        if self._pool is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")
        return await run_retrying(
            self._current_pool,
            lambda connection: getattr(connection, method)(sql, *args),
            dsn=self.postgres_dsn,
            purpose=_PURPOSE,
            patience=failover_patience(self.postgres_dsn, self.connect_timeout),
        )

    async def _current_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")
        return self._pool

    # -- a job's life ----------------------------------------------------------

    async def record_enqueued(self, jobs: Sequence[Job]) -> None:
        if jobs:
            now = time.time()
            states = [
                JobState.SCHEDULED if job.run_at and job.run_at > now else JobState.QUEUED
                for job in jobs
            ]
            await self._execute("execute", self._sql.enqueue, *_columns(jobs, states))

    async def forget(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            await self._execute("execute", self._sql.forget, list(job_ids))

    async def record_leased(self, leased: Sequence[Leased]) -> set[str]:
        if not leased:
            return set()
        jobs = [item.job for item in leased]
        columns = _columns(jobs, [JobState.RUNNING] * len(jobs))
        columns[6] = [item.attempt for item in leased]
        rows = await self._execute(
            "fetch",
            self._sql.lease,
            *columns,
            [item.lease_until for item in leased],
            time.time(),
        )
        return {row["id"] for row in rows if row["dropped"]}

    async def record_settled(self, settled: Sequence[Settled]) -> None:
        if not settled:
            return
        await self._execute(
            "execute",
            self._sql.settle,
            [s.job_id for s in settled],
            [s.state.value for s in settled],
            [s.error.type if s.error else None for s in settled],
            [s.error.message if s.error else None for s in settled],
            [s.run_at for s in settled],
            [s.attempt for s in settled],
            time.time(),
            [s.worker_id for s in settled],
            [
                None if s.attempt_record is None else encode_attempt(s.attempt_record)
                for s in settled
            ],
            MAX_ATTEMPTS_KEPT,
        )
        if time.monotonic() - self._last_purge > PURGE_INTERVAL:
            self._last_purge = time.monotonic()
            await self.purge_finished()

    async def extend_leases(self, job_ids: Sequence[str], lease_until: float) -> None:
        if job_ids:
            await self._execute("execute", self._sql.extend, list(job_ids), lease_until)

    async def record_progress(self, job_id: str, progress: Progress) -> None:
        fraction = None if progress.fraction is None else float(progress.fraction)
        meta = json.dumps(dict(progress.meta))
        await self._execute("execute", self._sql.progress, job_id, fraction, progress.message, meta)

    async def purge_finished(self, limit: int = 1000) -> int:
        status = await self._execute(
            "execute", self._sql.purge, time.time() - self.finished_ttl, limit
        )
        return int(str(status).rsplit(" ", 1)[-1])

    # -- reading ---------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobInfo | None:
        row = await self._execute("fetchrow", self._sql.get, job_id)
        return None if row is None else _info(row, time.time())

    async def list_jobs(
        self,
        queue: str,
        *,
        state: JobState | None = None,
        task: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobPage:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        now = time.time()
        args: list[Any] = [queue, position_cursor(cursor), limit + 1]
        conditions = ["true"]
        if task is not None:
            args.append(task)
            conditions.append(f"task = ${len(args)}")
        if state in _STATE_WHERE:
            args.append(now)
            conditions.append(_STATE_WHERE[state].replace("$now", f"${len(args)}"))
        elif state is not None:
            args.append(state.value)
            conditions.append(f"state = ${len(args)}")
        where = " AND ".join(f"({c})" for c in conditions)
        rows = await self._execute("fetch", self._sql.page.format(where=where), *args)
        jobs = [_info(row, now, attempts=False) for row in rows[:limit]]
        more = len(rows) > limit
        return JobPage(jobs, str(rows[limit - 1]["seq"]) if more else None)

    # -- cancellation ----------------------------------------------------------

    async def cancel(self, job_id: str) -> CancelOutcome:
        old = await self._execute("fetchval", self._sql.cancel, job_id, time.time())
        if old is None:
            return CancelOutcome.NOT_FOUND
        if JobState(old).finished:
            return CancelOutcome.FINISHED
        if old == JobState.RUNNING.value:
            return CancelOutcome.REQUESTED
        return CancelOutcome.CANCELLED

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        if not job_ids:
            return set()
        rows = await self._execute("fetch", self._sql.cancel_requested, list(job_ids))
        return {row["id"] for row in rows}

    # -- workers ---------------------------------------------------------------

    async def register_worker(self, queue: str, info: WorkerInfo, ttl: float) -> None:
        document = json.dumps(info.to_dict())
        await self._execute(
            "execute", self._sql.register, queue, info.id, document, time.time() + ttl
        )

    async def deregister_worker(self, queue: str, worker_id: str) -> None:
        await self._execute("execute", self._sql.deregister, queue, worker_id)

    async def list_workers(self, queue: str) -> list[WorkerInfo]:
        now = time.time()
        await self._execute("execute", self._sql.expire, queue, now)
        rows = await self._execute("fetch", self._sql.workers, queue, now)
        return [WorkerInfo.from_dict(json.loads(row["info"])) for row in rows]


def _columns(jobs: Sequence[Job], states: Sequence[JobState]) -> list[list[Any]]:
    """The unnest arrays of new rows, in the order of ``_COLUMNS``."""
    return [
        [job.id for job in jobs],
        [job.queue for job in jobs],
        [job.task for job in jobs],
        [state.value for state in states],
        [json.dumps(job.args) for job in jobs],
        [json.dumps(job.kwargs) for job in jobs],
        [job.attempt for job in jobs],
        [job.max_retries + 1 for job in jobs],
        [job.priority for job in jobs],
        [job.enqueued_at for job in jobs],
        [job.run_at for job in jobs],
        [job.trace_id for job in jobs],
    ]


def _info(row: Any, now: float, *, attempts: bool = True) -> JobInfo:
    state = JobState(row["state"])
    if state is JobState.SCHEDULED and (row["run_at"] is None or row["run_at"] <= now):
        state = JobState.QUEUED
    lease_until = row["lease_until"]
    if state is JobState.RUNNING and lease_until is not None and lease_until < now:
        state = JobState.QUEUED  # its worker died: the broker has put it back
    error = None
    if row["error_type"] is not None:
        error = JobError(row["error_type"], row["error_message"] or "")
    meta = row["meta"]
    return JobInfo(
        id=row["id"],
        queue=row["queue"],
        task=row["task"],
        state=state,
        args=json.loads(row["args"]),
        kwargs=json.loads(row["kwargs"]),
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        priority=row["priority"],
        enqueued_at=row["enqueued_at"],
        run_at=row["run_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=error,
        progress=row["progress"],
        progress_message=row["progress_message"],
        meta=json.loads(meta) if isinstance(meta, str) else dict(meta or {}),
        cancel_requested=row["cancel_requested"] and not state.finished,
        trace_id=row["trace_id"],
        worker_id=None if state is JobState.RUNNING else row.get("worker_id"),
        attempts=tuple(decode_attempts(row.get("attempts"))) if attempts else (),
    )
