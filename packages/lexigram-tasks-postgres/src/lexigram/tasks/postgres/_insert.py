"""The insert path of :class:`PostgresTaskQueue`: one or many rows, and dedup-key holders.

The steps are written once, as a plan (:meth:`Inserting._plan`) that yields
each statement and receives its rows; :func:`_drive` runs a plan on an
async connection (asyncpg or psycopg) and :func:`_drive_sync` on a blocking
psycopg one, so every driver sends the same statements in the same order.

A single job without a dedup key (the common enqueue) skips the plan: one
INSERT on the queue's producer connection, a connection of its pool that it
keeps checked out while connected, so an enqueue costs the statement's round
trip and not also the pool's checkout and return (a task and an event-loop
cycle more each time in asyncpg). Only one enqueue at a time uses it; one
that finds it busy takes a connection from the pool as before, and so does
everything after a lost connection (with the pool's retries). That INSERT
sends its own wake-up NOTIFY, and the table's trigger skips it: cheaper on
the server than the trigger's function.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import asyncpg

from lexigram.tasks.job import Job
from lexigram.tasks.postgres._connect import RETRY_ERRORS
from lexigram.tasks.postgres._drivers import AsyncpgRunner, AsyncRunner, Request, Rows, SyncRunner
from lexigram.tasks.postgres._pools import Pooled, _discard, _release

#: A job with its encoded payload, checked by ``encode_job`` before any write.
Encoded = tuple[Job, bytes]

#: The statements of one insert, each answered with its rows; returns the job ids.
Plan = Generator[Request, Rows, list[str]]

#: Runners bound with :meth:`PostgresTaskQueue.using`, by queue instance id.
BOUND: ContextVar[Mapping[int, AsyncRunner] | None] = ContextVar(
    "lexigram_tasks_postgres_bound", default=None
)

#: Payload bytes per INSERT of a bulk enqueue. PostgreSQL takes at most 1 GB
#: in one value (the statement's bytea[] of payloads) and one protocol
#: message: a bigger batch is split into several INSERTs in one transaction.
_STATEMENT_BYTES = 64 * 1024 * 1024


class Inserting(Pooled):
    """Stores encoded jobs, on a bound connection, a pooled one or a caller's blocking one."""

    #: The producer connection and the pool it came from (see the module's docstring).
    _producer: tuple[asyncpg.Pool, asyncpg.Connection] | None = None
    _producer_busy = False
    #: Set when a statement lost its server: the producer connection is replaced.
    _producer_stale = False

    async def _store(self, encoded: Sequence[Encoded]) -> list[str]:
        runner = (BOUND.get() or {}).get(id(self))
        if runner is not None:
            return await self._insert(runner, encoded)
        if len(encoded) == 1 and encoded[0][0].dedup_key is None and not self._producer_busy:
            job, payload = encoded[0]
            await self._produce(job, payload)
            return [job.id]
        return await self._run(lambda c: self._insert(AsyncpgRunner(c), encoded))

    async def _produce(self, job: Job, payload: bytes) -> None:
        """Insert one job without a dedup key, on the producer connection if there can be one.

        Both connections it may use are outside any transaction, so the statement
        can send its own NOTIFY and skip the trigger's (see ``Statements``).
        """
        statement: str
        args: tuple[Any, ...]
        if job.priority == 0 and job.run_at is None and job.attempt == 0:
            statement = self._sql.insert_announced_now  # the columns' defaults: fewer parameters
            args = (self.queue_name, job.id, payload, job.task)
        else:
            statement, args = self._sql.insert_announced, self._row(job, payload)
        self._producer_busy = True
        held = None
        try:
            held = self._producer
            if held is None or self._producer_stale or held[0] is not self._pool:
                old, held = held, None
                held = await self._new_producer(old)
            if held is not None:
                await held[1].execute(statement, *args)
                return
        except RETRY_ERRORS:
            if held is not None:  # lost, or a read-only server: as a pooled statement's would be
                if self._producer is held:
                    self._producer = None
                _discard(held[1])
                await held[0].expire_connections()
                self._server_lost()
        except BaseException:
            if held is not None and self._producer is held:
                self._producer = None  # cancelled or refused: back to the pool (below)
            raise
        finally:
            self._producer_busy = False
            if held is not None and self._producer is not held:
                # Let go (above, or by disconnect while this statement ran): the
                # pool's release waits out a cancellation and closes a lost one.
                await _release(*held)
        await self._run(lambda c: c.execute(statement, *args))

    async def _new_producer(
        self, old: tuple[asyncpg.Pool, asyncpg.Connection] | None
    ) -> tuple[asyncpg.Pool, asyncpg.Connection] | None:
        """A fresh producer connection from the pool, ``old`` returned to its own; None
        when the pool is too small to keep one aside."""
        self._producer = None
        if old is not None:
            await _release(*old)
        if self.max_pool_size < 2:
            return None
        pool = self._main()
        held = (pool, await pool.acquire())
        self._producer, self._producer_stale = held, False
        return held

    async def _let_producer_go(self) -> None:
        """Return the producer connection to its pool (before the pool closes)."""
        held, self._producer = self._producer, None
        if held is not None and not self._producer_busy:
            await _release(*held)

    def _server_lost(self) -> None:
        super()._server_lost()
        self._producer_stale = True

    async def _insert(self, runner: AsyncRunner, encoded: Sequence[Encoded]) -> list[str]:
        chunks = _chunks(encoded)
        if len(chunks) == 1:
            return await _drive(runner, self._plan(encoded))
        ids: list[str] = []
        async with runner.atomic():  # a savepoint inside the caller's transaction
            for chunk in chunks:
                ids += await _drive(runner, self._plan(chunk))
        return ids

    def _insert_sync(self, runner: SyncRunner, encoded: Sequence[Encoded]) -> list[str]:
        chunks = _chunks(encoded)
        if len(chunks) == 1:
            return _drive_sync(runner, self._plan(encoded))
        ids: list[str] = []
        with runner.atomic():
            for chunk in chunks:
                ids += _drive_sync(runner, self._plan(chunk))
        return ids

    def _row(self, job: Job, payload: bytes) -> tuple[Any, ...]:
        """The parameters of a one-row INSERT without a dedup key, in statement order."""
        return (self.queue_name, job.id, job.priority, job.run_at, job.attempt, payload, job.task)

    def _plan(self, encoded: Sequence[Encoded]) -> Plan:
        """The statements storing ``encoded`` (one INSERT, more only when dedup keys were taken)."""
        if len(encoded) == 1:
            job, payload = encoded[0]
            if job.dedup_key is None:
                yield Request(self._sql.insert_one_plain, self._row(job, payload), rows=False)
                return [job.id]
            stored = yield Request(
                self._sql.insert_one,
                (
                    self.queue_name,
                    job.id,
                    job.priority,
                    job.run_at,
                    job.attempt,
                    job.dedup_key,
                    payload,
                    job.task,
                ),
            )
            if stored or job.dedup_key is None:
                return [job.id]
            return (yield from self._resolve_duplicates(encoded))
        columns = _columns(encoded)
        if not any(columns[4]):  # no dedup keys
            yield Request(self._sql.insert_many_plain, (self.queue_name, *columns), rows=False)
            return [job.id for job, _ in encoded]
        rows = yield Request(self._sql.insert_many, (self.queue_name, *columns))
        if rows is not None and len(rows) == len(encoded):
            return [job.id for job, _ in encoded]
        return (yield from self._resolve_duplicates(encoded))

    def _resolve_duplicates(self, encoded: Sequence[Encoded]) -> Plan:
        """Ids for a batch where some dedup keys were taken: the holders' ids.

        A holder can finish between the INSERT and this lookup, releasing
        its key; such jobs are inserted again.
        """
        for _ in range(5):
            keys = list({j.dedup_key for j, _ in encoded if j.dedup_key is not None})
            rows = yield Request(self._sql.dedup_holders, (self.queue_name, keys))
            holders: dict[str, str] = {row[0]: row[1] for row in rows or ()}
            orphans = [
                (j, p) for j, p in encoded if j.dedup_key is not None and j.dedup_key not in holders
            ]
            if not orphans:
                return [
                    holders[j.dedup_key] if j.dedup_key is not None else j.id for j, _ in encoded
                ]
            yield Request(self._sql.insert_many, (self.queue_name, *_columns(orphans)))
        raise RuntimeError("dedup keys kept changing hands; enqueue not confirmed")


async def _drive(runner: AsyncRunner, plan: Plan) -> list[str]:
    request = next(plan)
    while True:
        rows = await runner.run(request)
        try:
            request = plan.send(rows)
        except StopIteration as done:
            ids: list[str] = done.value
            return ids


def _drive_sync(runner: SyncRunner, plan: Plan) -> list[str]:
    request = next(plan)
    while True:
        rows = runner.run(request)
        try:
            request = plan.send(rows)
        except StopIteration as done:
            ids: list[str] = done.value
            return ids


def _columns(encoded: Sequence[Encoded]) -> tuple[list[Any], ...]:
    """The column arrays of a multi-row INSERT, in the order of the statement's parameters."""
    ids: list[str] = []
    priorities: list[int] = []
    run_ats: list[float | None] = []
    attempts: list[int] = []
    dedup_keys: list[str | None] = []
    payloads: list[bytes] = []
    tasks: list[str] = []
    for job, payload in encoded:
        ids.append(job.id)
        priorities.append(job.priority)
        run_ats.append(job.run_at)
        attempts.append(job.attempt)
        dedup_keys.append(job.dedup_key)
        payloads.append(payload)
        tasks.append(job.task)
    return ids, priorities, run_ats, attempts, dedup_keys, payloads, tasks


def _chunks(encoded: Sequence[Encoded]) -> list[list[Encoded]]:
    """``encoded`` in runs of at most ``_STATEMENT_BYTES`` of payload (at least one job each)."""
    chunks: list[list[Encoded]] = [[]]
    size = 0
    for item in encoded:
        if chunks[-1] and size + len(item[1]) > _STATEMENT_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += len(item[1])
    return chunks
