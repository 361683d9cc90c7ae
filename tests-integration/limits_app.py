"""A worker process with concurrency-limited tasks, for the limit tests (not a test module).

    python limits_app.py BACKEND URL QUEUE SCHEMA LOG WORKER_COUNT LEASE_SECONDS

``BACKEND`` is ``redis`` or ``postgres`` (``SCHEMA`` is ignored for Redis). Task
names carry the queue's name, so tests running at once share no semaphore.
The tasks append ``start``/``end`` lines to the event log ``LOG``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.testing import EventLog


def register(provider: TaskProvider, prefix: str, log: EventLog) -> None:
    """The limited tasks, named ``<prefix>.tenant`` and ``<prefix>.hang``."""

    @provider.task(
        name=f"{prefix}.tenant",
        concurrency_key=lambda tenant, **_: tenant,
        max_concurrency_per_key=2,
    )
    async def tenant(tenant: str, n: int, seconds: float) -> None:
        log.write("start", f"{tenant}:{n}")
        await asyncio.sleep(seconds)
        log.write("end", f"{tenant}:{n}")

    @provider.task(name=f"{prefix}.hang", max_concurrency=1)
    async def hang(key: str, seconds: float) -> None:
        """Sleeps ``seconds`` on its first run only (the test kills that worker)."""
        log.write("start", key)
        if log.count("start")[key] == 1:
            await asyncio.sleep(seconds)
        log.write("end", key)


def build_queue(backend: str, url: str, queue: str, schema: str) -> Any:
    if backend == "redis":
        from lexigram.tasks.redis import RedisTaskQueue

        return RedisTaskQueue(url, queue)
    from lexigram.tasks.postgres import PostgresTaskQueue

    return PostgresTaskQueue(url, queue, schema=schema)


async def main(argv: list[str]) -> None:
    backend, url, queue_name, schema, log_path, count, lease = argv
    log = EventLog(log_path)
    provider = TaskProvider(
        queue=build_queue(backend, url, queue_name, schema),
        worker_count=int(count),
        lease_seconds=float(lease),
        poll_interval=0.2,
    )
    register(provider, queue_name, log)
    async with provider:
        log.write("ready", "worker")
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
