"""How long PostgresTaskQueue.list_jobs takes per page on a queue of 1,000,000 jobs.

Fills a schema of its own with INSERT ... SELECT generate_series (jobs in
every state, priorities 0-9), then pages through each state to the end and
prints the time of the first page and of the slowest, deepest pages, and
of get_job for 200 random ids. The schema is dropped afterwards.

    python benchmarks/postgres_list_jobs.py [--dsn DSN] [--jobs 1000000] [--limit 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import asyncpg

from lexigram.tasks.control import JobState
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres.migrate import quote_ident

#: Share of the jobs in each state (status, state, when), in per mille.
_MIX = [
    ("ready", None, "due", 600),  # queued
    ("ready", None, "later", 100),  # scheduled
    ("ready", "retrying", "later", 50),
    ("running", None, "leased", 1),
    ("done", "succeeded", "past", 200),
    ("done", "cancelled", "past", 9),
    ("failed", "failed", "past", 30),
    ("failed", "dead", "past", 10),
]


async def fill(connection: asyncpg.Connection, schema: str, queue: str, total: int) -> None:
    table = f"{quote_ident(schema)}.jobs"
    start = 0
    for status, state, when, share in _MIX:
        count = total * share // 1000
        run_at = {"due": "now() - interval '1 hour'", "later": "now() + interval '1 day'"}.get(
            when, "now() - interval '2 hours'"
        )
        await connection.execute(
            f"INSERT INTO {table} (queue_name, job_id, status, state, task, priority, run_at,"
            " attempt, payload, lease_token, lease_expires_at, started_at, finished_at)"
            " SELECT $1, md5(i::text), $2, $3, 'bench.task_' || (i % 20), (i % 10)::int2,"
            f" {run_at} + i * interval '1 millisecond', CASE WHEN $2 = 'ready' THEN 0 ELSE 1 END,"
            " convert_to(json_build_object('id', md5(i::text), 'task', 'bench.task_' || (i % 20),"
            " 'args', json_build_array(i), 'kwargs', json_build_object())::text, 'UTF8'),"
            " CASE WHEN $2 = 'running' THEN 1 END,"
            " CASE WHEN $2 = 'running' THEN now() + interval '1 hour' END,"
            " CASE WHEN $2 <> 'ready' THEN now() - interval '1 hour' END,"
            " CASE WHEN $2 IN ('done', 'failed') THEN now() - interval '20 minutes'"
            " + i * interval '1 millisecond' END"
            " FROM generate_series($4::int, $5::int) AS i",
            queue,
            status,
            state,
            start,
            start + count - 1,
        )
        start += count
    await connection.execute(f"ANALYZE {table}")


async def walk(queue: PostgresTaskQueue, state: JobState | None, limit: int) -> list[float]:
    """Milliseconds per page, from the first page to the last."""
    times: list[float] = []
    cursor: str | None = None
    while True:
        began = time.perf_counter()
        page = await queue.list_jobs(state=state, limit=limit, cursor=cursor)
        times.append((time.perf_counter() - began) * 1000)
        cursor = page.cursor
        if cursor is None:
            return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default=os.environ.get("LEXIGRAM_TEST_POSTGRES_DSN", ""))
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    dsn = args.dsn or "postgresql://postgres@127.0.0.1:5432/test"
    schema = f"lexigram_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    try:
        async with PostgresTaskQueue(dsn, "bench", schema=schema) as queue:
            began = time.perf_counter()
            await fill(admin, schema, "bench", args.jobs)
            print(f"filled {args.jobs:,} jobs in {time.perf_counter() - began:.1f} s")
            print(f"limit={args.limit}; ms per page: first, median, p99, slowest, last (pages)")
            ids = [
                row[0]
                for row in await admin.fetch(
                    f"SELECT job_id FROM {quote_ident(schema)}.jobs ORDER BY random() LIMIT 200"
                )
            ]
            times = []
            for job_id in ids:
                began = time.perf_counter()
                assert await queue.get_job(job_id) is not None
                times.append((time.perf_counter() - began) * 1000)
            print(f"get_job: median {statistics.median(times):.2f} ms, slowest {max(times):.2f} ms")
            states: list[JobState | None] = [*JobState, None]
            for state in states:
                times = await walk(queue, state, args.limit)
                p99 = sorted(times)[int(len(times) * 0.99) - 1] if len(times) > 1 else times[0]
                name = "all" if state is None else state.value
                print(
                    f"{name:>10}: {times[0]:6.1f} {statistics.median(times):6.1f}"
                    f" {p99:6.1f} {max(times):6.1f} {times[-1]:6.1f}  ({len(times):,} pages)"
                )
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
