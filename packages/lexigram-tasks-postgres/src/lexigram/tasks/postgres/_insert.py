"""The insert path of :class:`PostgresTaskQueue`: one or many rows, and dedup-key holders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import asyncpg

from lexigram.tasks.job import Job
from lexigram.tasks.postgres._pools import Pooled

#: A job with its encoded payload, checked by ``encode_job`` before any write.
Encoded = tuple[Job, bytes]

#: Connections bound with :meth:`PostgresTaskQueue.using`, by queue instance id.
BOUND: ContextVar[Mapping[int, Any] | None] = ContextVar(
    "lexigram_tasks_postgres_bound", default=None
)

#: Payload bytes per INSERT of a bulk enqueue. PostgreSQL takes at most 1 GB
#: in one value (the statement's bytea[] of payloads) and one protocol
#: message: a bigger batch is split into several INSERTs in one transaction.
_STATEMENT_BYTES = 64 * 1024 * 1024


class Inserting(Pooled):
    """Stores encoded jobs, on a bound connection or a pooled one."""

    async def _store(self, encoded: Sequence[Encoded]) -> list[str]:
        connection = (BOUND.get() or {}).get(id(self))
        if connection is not None:
            return await self._insert(connection, encoded)
        return await self._run(lambda c: self._insert(c, encoded))

    async def _insert(
        self, connection: asyncpg.Connection, encoded: Sequence[Encoded]
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
        self, connection: asyncpg.Connection, encoded: Sequence[Encoded]
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
                job.task,
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
        self, connection: asyncpg.Connection, encoded: Sequence[Encoded]
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
