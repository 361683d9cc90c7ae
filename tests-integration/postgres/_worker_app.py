"""A worker process for the multi-process tests (not a test module).

    python _worker_app.py DSN SCHEMA QUEUE LEASE_SECONDS

Runs ``provider.run()`` until SIGTERM. Tasks write what they do to
``<SCHEMA>.test_log`` so the test can check every job ran exactly once.
"""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg

from lexigram.tasks import TaskProvider
from lexigram.tasks.postgres import PostgresTaskQueue

DSN, SCHEMA, QUEUE, LEASE = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
LOG = f'"{SCHEMA}".test_log'

queue = PostgresTaskQueue(postgres_dsn=DSN, queue_name=QUEUE, schema=SCHEMA)
provider = TaskProvider(queue=queue, worker_count=20, lease_seconds=LEASE, poll_interval=0.5)
_pool: asyncpg.Pool | None = None


async def _log(event: str, key: str) -> int:
    """Record ``event`` for ``key``; return how many times it was recorded so far."""
    global _pool
    if _pool is None:
        _pool = await asyncpg.create_pool(DSN, min_size=1, max_size=5)
    return int(
        await _pool.fetchval(
            f"WITH i AS (INSERT INTO {LOG} (event, key, pid) VALUES ($1, $2, $3))"
            f" SELECT count(*) + 1 FROM {LOG} WHERE event = $1 AND key = $2",
            event,
            key,
            os.getpid(),
        )
    )


@provider.task(name="record")
async def record(key: str) -> None:
    await _log("done", key)


@provider.task(name="slow")
async def slow(key: str, seconds: float) -> None:
    await _log("started", key)
    await asyncio.sleep(seconds)
    await _log("done", key)


@provider.task(name="hang_once")
async def hang_once(key: str) -> None:
    """Hangs on its first run (the test SIGKILLs that process); completes on the next."""
    if await _log("started", key) == 1:
        await asyncio.sleep(3600)
    await _log("done", key)


if __name__ == "__main__":
    provider.run()
