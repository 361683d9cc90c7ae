"""Transactional enqueue: the job exists if and only if the caller's transaction commits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from lexigram.tasks import TaskProvider
from lexigram.tasks.errors import JobSerializationError, JobTooLargeError
from lexigram.tasks.job import Job
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres.migrate import quote_ident
from lexigram.tasks.testing import collect


@pytest_asyncio.fixture
async def queue(postgres_dsn: str, pg_schema: str) -> AsyncIterator[PostgresTaskQueue]:
    q = PostgresTaskQueue(
        postgres_dsn=postgres_dsn, queue_name=f"tx_{uuid.uuid4().hex[:8]}", schema=pg_schema
    )
    async with q:
        yield q


@pytest_asyncio.fixture
async def conn(postgres_dsn: str, pg_schema: str) -> AsyncIterator[asyncpg.Connection]:
    """The application's own connection, with an orders table in the test schema."""
    connection = await asyncpg.connect(postgres_dsn)
    orders = f"{quote_ident(pg_schema)}.orders"
    await connection.execute(f"CREATE TABLE IF NOT EXISTS {orders} (id text PRIMARY KEY)")
    try:
        yield connection
    finally:
        await connection.close()


def _job(queue: PostgresTaskQueue, **fields: object) -> Job:
    return Job(task="send_confirmation", queue=queue.queue_name, **fields)  # type: ignore[arg-type]


async def test_job_enqueued_in_a_committed_transaction_is_delivered(
    queue: PostgresTaskQueue, conn: asyncpg.Connection
) -> None:
    job = _job(queue)
    async with conn.transaction():
        assert await queue.enqueue(job, connection=conn) == job.id
        # Not visible to anyone else before the commit.
        assert (await queue.counts()).ready == 0
        assert await queue.dequeue(lease_seconds=5) == []
    [delivery] = await collect(queue, 1, lease_seconds=5)
    assert delivery.job_id == job.id


async def test_job_enqueued_in_a_rolled_back_transaction_never_exists(
    queue: PostgresTaskQueue, conn: asyncpg.Connection, pg_schema: str
) -> None:
    orders = f"{quote_ident(pg_schema)}.orders"
    transaction = conn.transaction()
    await transaction.start()
    await conn.execute(f"INSERT INTO {orders} (id) VALUES ('rolled-back')")
    await queue.enqueue_many([_job(queue), _job(queue)], connection=conn)
    await transaction.rollback()
    assert await conn.fetchval(f"SELECT count(*) FROM {orders} WHERE id = 'rolled-back'") == 0
    assert (await queue.counts()).pending == 0
    assert await queue.dequeue(max_jobs=5, lease_seconds=5, wait=0.3) == []


async def test_commit_wakes_a_waiting_worker(
    queue: PostgresTaskQueue, conn: asyncpg.Connection
) -> None:
    """The NOTIFY of a transactional enqueue is sent at commit, not before."""
    job = _job(queue)
    waiter = asyncio.create_task(queue.dequeue(lease_seconds=5, wait=10.0))
    try:
        async with conn.transaction():
            await queue.enqueue(job, connection=conn)
            await asyncio.sleep(0.3)
            assert not waiter.done(), "a job of an uncommitted transaction was delivered"
        deliveries = await asyncio.wait_for(waiter, 5.0)
    finally:
        waiter.cancel()
    assert [d.job_id for d in deliveries] == [job.id]


async def test_provider_enqueues_join_the_transaction_inside_using(
    queue: PostgresTaskQueue, conn: asyncpg.Connection, pg_schema: str
) -> None:
    provider = TaskProvider(queue=queue)

    @provider.task(name="send_confirmation")
    async def send_confirmation(order_id: str) -> None: ...

    orders = f"{quote_ident(pg_schema)}.orders"
    transaction = conn.transaction()
    await transaction.start()
    with queue.using(conn):
        await conn.execute(f"INSERT INTO {orders} (id) VALUES ('o-1')")
        await send_confirmation.enqueue("o-1")
    await transaction.rollback()
    assert (await queue.counts()).pending == 0

    async with conn.transaction():
        with queue.using(conn):
            await conn.execute(f"INSERT INTO {orders} (id) VALUES ('o-2')")
            handle = await send_confirmation.enqueue("o-2")
    [delivery] = await collect(queue, 1, lease_seconds=5)
    assert delivery.job_id == handle.id
    assert delivery.job is not None
    assert delivery.job.args == ["o-2"]
    # Outside the block, enqueues use the queue's own pool again: the
    # caller's rollback does not undo them.
    transaction = conn.transaction()
    await transaction.start()
    await send_confirmation.enqueue("o-3")
    await transaction.rollback()
    assert (await queue.counts()).ready == 1


async def test_dedup_key_inside_a_transaction(
    queue: PostgresTaskQueue, conn: asyncpg.Connection
) -> None:
    first = _job(queue, dedup_key="order-42")
    async with conn.transaction():
        assert await queue.enqueue(first, connection=conn) == first.id
        assert await queue.enqueue(_job(queue, dedup_key="order-42"), connection=conn) == first.id
    assert await queue.enqueue(_job(queue, dedup_key="order-42")) == first.id
    assert (await queue.counts()).ready == 1


async def test_a_job_the_queue_refuses_never_reaches_the_callers_transaction(
    queue: PostgresTaskQueue, conn: asyncpg.Connection, pg_schema: str
) -> None:
    """Size and encoding are checked before any statement, so the caller's
    transaction stays usable and commits only what was accepted."""
    queue.max_job_bytes = 4096
    small, big = _job(queue, args=["x" * 100]), _job(queue, args=["x" * 5000])
    orders = f"{quote_ident(pg_schema)}.orders"
    async with conn.transaction():
        await conn.execute(f"INSERT INTO {orders} (id) VALUES ('o-refused')")
        with pytest.raises(JobTooLargeError, match=r"5,\d{3} bytes, over the limit of 4,096"):
            await queue.enqueue(big, connection=conn)
        with pytest.raises(JobTooLargeError):
            await queue.enqueue_many([small, big], connection=conn)
        with queue.using(conn), pytest.raises(JobSerializationError, match="lone surrogate"):
            await queue.enqueue(_job(queue, args=["file-\udcff.txt"]))
        assert await queue.enqueue(small, connection=conn) == small.id
    assert await conn.fetchval(f"SELECT count(*) FROM {orders} WHERE id = 'o-refused'") == 1
    [delivery] = await collect(queue, 1, lease_seconds=5)
    assert delivery.job_id == small.id
