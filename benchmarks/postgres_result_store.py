"""Figures of PostgresResultStore on one server (not a test, not part of the harness).

    DATABASE_URL=postgresql://localhost/test python benchmarks/postgres_result_store.py

Works in a schema of its own, dropped at the end. Prints: set and get one
at a time; from ``set`` in one store to ``wait`` returning in another (two
pools and LISTEN connections, as two processes would have); 1,000 waiters
of one store woken by 1,000 sets; ``delete_expired`` of 100,000 expired rows.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid

import asyncpg

from lexigram.tasks import JobResult
from lexigram.tasks.postgres.results import PostgresResultStore

DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def main() -> None:
    schema = f"bench_results_{uuid.uuid4().hex[:8]}"
    storing = PostgresResultStore(DSN, schema=schema, cleanup_interval=None)
    waiting = PostgresResultStore(DSN, schema=schema, cleanup_interval=None, recheck_interval=600)
    await storing.connect()
    await waiting.connect()
    try:
        ids = [uuid.uuid4().hex for _ in range(2000)]
        started = time.perf_counter()
        for job_id in ids:
            await storing.set(job_id, JobResult.success(job_id, {"v": 1}))
        set_us = (time.perf_counter() - started) / len(ids) * 1e6
        started = time.perf_counter()
        for job_id in ids:
            await waiting.get(job_id)
        get_us = (time.perf_counter() - started) / len(ids) * 1e6
        print(f"set {set_us:.0f} us, get {get_us:.0f} us per call (2000, one at a time)")

        latencies = []
        for _ in range(300):
            job_id = uuid.uuid4().hex
            waiter = asyncio.create_task(waiting.wait(job_id, timeout=30))
            await asyncio.sleep(0.002)  # let it register and read once
            started = time.perf_counter()
            await storing.set(job_id, JobResult.success(job_id, 1))
            await waiter
            latencies.append((time.perf_counter() - started) * 1e3)
        print(
            f"set -> wait returns in the other store: p50 {statistics.median(latencies):.2f} ms,"
            f" p99 {_p99(latencies):.2f} ms (300)"
        )

        ids = [uuid.uuid4().hex for _ in range(1000)]
        waiters = [asyncio.create_task(waiting.wait(j, timeout=120)) for j in ids]
        await asyncio.sleep(1.0)  # let them all register
        started = time.perf_counter()
        for job_id in ids:
            await storing.set(job_id, JobResult.success(job_id, 1))
        await asyncio.gather(*waiters)
        print(f"1000 waiters, 1000 sets: all returned {time.perf_counter() - started:.2f} s after")

        connection = await asyncpg.connect(DSN)
        try:
            await connection.execute(
                f"INSERT INTO {schema}.results (job_id, status, result, expires_at)"
                " SELECT g::text, 'succeeded', '{}', now() - interval '1 s'"
                " FROM generate_series(1, 100000) g"
            )
        finally:
            await connection.close()
        started = time.perf_counter()
        deleted = await storing.delete_expired()
        print(f"delete_expired: {deleted} rows in {time.perf_counter() - started:.2f} s")
    finally:
        await storing.disconnect()
        await waiting.disconnect()
        connection = await asyncpg.connect(DSN)
        try:
            await connection.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await connection.close()


if __name__ == "__main__":
    asyncio.run(main())
