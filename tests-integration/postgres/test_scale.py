"""Dequeue reads only the ready-jobs index, however many finished rows the table holds."""

from __future__ import annotations

import re
import uuid

import asyncpg

from lexigram.tasks.job import Job
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres.migrate import quote_ident
from lexigram.tasks.testing import collect

FINISHED_ROWS = 200_000


async def test_dequeue_plan_ignores_finished_rows(postgres_dsn: str, pg_schema: str) -> None:
    queue = PostgresTaskQueue(
        postgres_dsn=postgres_dsn,
        queue_name=f"scale_{uuid.uuid4().hex[:8]}",
        schema=pg_schema,
        keep_finished=86400.0,
    )
    async with queue:
        connection = await asyncpg.connect(postgres_dsn)
        try:
            # Finished and dead-lettered rows of this very queue, as months of
            # retention would leave them (no ANALYZE: autovacuum may be off).
            await connection.execute(
                f"INSERT INTO {quote_ident(pg_schema)}.jobs"
                " (queue_name, status, payload, finished_at)"
                " SELECT $1, CASE WHEN n % 10 = 0 THEN 'failed' ELSE 'done' END, '{}', now()"
                " FROM generate_series(1, $2) AS n",
                queue.queue_name,
                FINISHED_ROWS,
            )
        finally:
            await connection.close()
        await queue.enqueue_many([Job(task="t", queue=queue.queue_name) for _ in range(50)])

        plan = await queue.explain_dequeue(max_jobs=10, analyze=True)
        assert "Index Scan using jobs_ready_idx" in plan, plan
        assert "Seq Scan" not in plan, plan
        top_buffers = int(re.search(r"Buffers: shared hit=(\d+)", plan)[1])  # type: ignore[index]
        assert top_buffers < 200, f"dequeue of 10 jobs touched {top_buffers} pages:\n{plan}"

        deliveries = await collect(queue, 10, lease_seconds=10, batch=10)
        assert len(deliveries) == 10
        assert (await queue.counts()).failed == FINISHED_ROWS // 10
