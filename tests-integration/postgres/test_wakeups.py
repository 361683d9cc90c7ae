"""Idle workers wake at once for every way a job row is written.

A single enqueue sends its own NOTIFY and tells the table's trigger to skip
the statement (migration 0010); everything else relies on the trigger. Each
test leaves a worker waiting with ``wait=60`` and nothing delayed, so a lost
NOTIFY shows as a dequeue still waiting after 10 seconds.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio

from lexigram.tasks.job import Job
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres.migrate import quote_ident
from lexigram.tasks.protocol import Delivery

#: Far beyond any wake-up; a dequeue still waiting after PICKED_UP seconds missed its NOTIFY.
WAIT = 60.0
PICKED_UP = 10.0


def _queue(dsn: str, schema: str, name: str, **options: object) -> PostgresTaskQueue:
    return PostgresTaskQueue(postgres_dsn=dsn, queue_name=name, schema=schema, **options)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def name() -> str:
    return f"wake_{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture
async def worker(postgres_dsn: str, pg_schema: str, name: str) -> AsyncIterator[PostgresTaskQueue]:
    queue = _queue(postgres_dsn, pg_schema, name)
    await queue.connect()
    try:
        yield queue
    finally:
        await queue.disconnect()


async def _idle(worker: PostgresTaskQueue) -> asyncio.Task[list[Delivery]]:
    """A dequeue that found nothing and now waits on the LISTEN connection."""
    waiting = asyncio.create_task(worker.dequeue(lease_seconds=30, wait=WAIT))
    while not (worker._listener and worker._listener._waiters):
        assert not waiting.done(), await waiting
        await asyncio.sleep(0.01)
    return waiting


async def _picked_up(waiting: asyncio.Task[list[Delivery]]) -> list[str]:
    try:
        deliveries = await asyncio.wait_for(waiting, PICKED_UP)
    finally:
        waiting.cancel()
    return [d.job_id for d in deliveries]


def _plain_insert(schema: str) -> str:
    """A foreign producer's row, as docs/backends/postgres.md shows it."""
    return (
        f"INSERT INTO {quote_ident(schema)}.jobs (queue_name, job_id, task, payload)"
        " VALUES ($1, $2, 't', convert_to('{\"id\": \"' || $2 || '\", \"task\": \"t\"}', 'UTF8'))"
    )


async def test_each_single_enqueue_wakes_an_idle_worker(
    postgres_dsn: str, pg_schema: str, name: str, worker: PostgresTaskQueue
) -> None:
    producer = _queue(postgres_dsn, pg_schema, name)
    await producer.connect()
    try:
        # The first enqueue takes the producer connection, the next ones reuse it.
        for _ in range(3):
            waiting = await _idle(worker)
            job = Job(task="t", queue=name)
            await producer.enqueue(job)
            assert await _picked_up(waiting) == [job.id]
    finally:
        await producer.disconnect()


async def test_a_plain_insert_on_a_connection_that_enqueued_wakes_an_idle_worker(
    postgres_dsn: str, pg_schema: str, name: str, worker: PostgresTaskQueue
) -> None:
    """The single enqueue's mark for the trigger ends with its own statement."""
    # A pool of one keeps no producer connection: the enqueue runs on the pool's only one.
    producer = _queue(postgres_dsn, pg_schema, name, min_pool_size=1, max_pool_size=1)
    await producer.connect()
    try:
        waiting = await _idle(worker)
        job = Job(task="t", queue=name)
        await producer.enqueue(job)
        assert await _picked_up(waiting) == [job.id]

        assert producer.pool is not None
        waiting = await _idle(worker)
        async with producer.pool.acquire() as connection:
            await connection.execute(_plain_insert(pg_schema), name, "foreign-1")
        assert await _picked_up(waiting) == ["foreign-1"]
    finally:
        await producer.disconnect()


async def test_a_plain_insert_wakes_an_idle_worker_while_a_producer_enqueues(
    postgres_dsn: str,
    pg_schema: str,
    name: str,
    worker: PostgresTaskQueue,
    admin: asyncpg.Connection,
) -> None:
    producer = _queue(postgres_dsn, pg_schema, name)
    await producer.connect()
    try:
        await producer.enqueue(Job(task="t", queue=name))
        assert len(await worker.dequeue(max_jobs=5, lease_seconds=30)) == 1
        waiting = await _idle(worker)
        await admin.execute(_plain_insert(pg_schema), name, "foreign-2")
        assert await _picked_up(waiting) == ["foreign-2"]
    finally:
        await producer.disconnect()


async def test_a_transaction_with_an_enqueue_and_a_plain_insert_wakes_both_queues(
    postgres_dsn: str,
    pg_schema: str,
    name: str,
    worker: PostgresTaskQueue,
    admin: asyncpg.Connection,
) -> None:
    other = _queue(postgres_dsn, pg_schema, f"{name}_b")
    await other.connect()
    try:
        waiting, waiting_other = await _idle(worker), await _idle(other)
        job = Job(task="t", queue=name)
        async with admin.transaction():
            await worker.enqueue(job, connection=admin)
            await admin.execute(_plain_insert(pg_schema), other.queue_name, "foreign-3")
        assert await _picked_up(waiting) == [job.id]
        assert await _picked_up(waiting_other) == ["foreign-3"]
    finally:
        await other.disconnect()
