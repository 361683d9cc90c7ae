"""The single-enqueue path: one plain INSERT on the queue's producer connection.

A queue keeps one connection of its pool aside for enqueues (see
``lexigram.tasks.postgres._insert``). These tests check what a user relies
on around it: concurrent enqueues all land, a killed producer connection
costs no enqueue, a cancelled enqueue leaves nothing behind, a pool of one
still works, disconnect does not wait on it, and a dedup key still finds its
holder. A job due now, of priority 0 and attempt 0, goes by a statement of
its own that leaves those columns to their defaults; the others are stored
as given.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest

from lexigram.tasks.job import Job
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres.migrate import quote_ident


def _queue(dsn: str, schema: str, **options: object) -> PostgresTaskQueue:
    name = f"producer_{uuid.uuid4().hex[:8]}"
    return PostgresTaskQueue(postgres_dsn=dsn, queue_name=name, schema=schema, **options)  # type: ignore[arg-type]


async def _connections(admin: asyncpg.Connection, queue: PostgresTaskQueue) -> int:
    count: int = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
        f"lexigram-tasks:{queue.queue_name}",
    )
    return count


async def test_concurrent_enqueues_all_land_while_one_holds_the_producer(
    postgres_dsn: str, pg_schema: str
) -> None:
    queue = _queue(postgres_dsn, pg_schema)
    await queue.connect()
    try:
        jobs = [Job(task="t", queue=queue.queue_name, args=[i]) for i in range(50)]
        ids = await asyncio.gather(*(queue.enqueue(job) for job in jobs))
        assert ids == [job.id for job in jobs]
        assert (await queue.counts()).ready == 50
        leased = await queue.dequeue(max_jobs=50)
        assert sorted(d.job.args[0] for d in leased if d.job) == list(range(50))
    finally:
        await queue.disconnect()


async def test_a_single_enqueue_stores_priority_delay_and_attempt_as_given(
    postgres_dsn: str, pg_schema: str, admin: asyncpg.Connection
) -> None:
    async with _queue(postgres_dsn, pg_schema) as queue:
        name = queue.queue_name
        plain = Job(task="t.plain", queue=name)
        jobs = [
            plain,
            Job(task="t.urgent", queue=name, priority=7),
            Job(task="t.later", queue=name, run_at=time.time() + 3600),
            Job(task="t.again", queue=name, attempt=2),
        ]
        for job in jobs:
            assert await queue.enqueue(job) == job.id
        rows = await admin.fetch(
            "SELECT job_id, task, priority, attempt, run_at > now() + interval '59 minutes'"
            f" AS later FROM {quote_ident(pg_schema)}.jobs WHERE queue_name = $1",
            name,
        )
        stored = {row["job_id"]: tuple(row)[1:] for row in rows}
        assert stored == {
            jobs[0].id: ("t.plain", 0, 0, False),
            jobs[1].id: ("t.urgent", 7, 0, False),
            jobs[2].id: ("t.later", 0, 0, True),
            jobs[3].id: ("t.again", 0, 2, False),
        }
        leased = await queue.dequeue(max_jobs=10)
        assert [d.job_id for d in leased] == [jobs[1].id, plain.id, jobs[3].id]


async def test_an_enqueue_after_its_connection_was_killed_is_stored(
    postgres_dsn: str, pg_schema: str, admin: asyncpg.Connection
) -> None:
    queue = _queue(postgres_dsn, pg_schema)
    await queue.connect()
    try:
        await queue.enqueue(Job(task="t", queue=queue.queue_name))
        killed = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            f"lexigram-tasks:{queue.queue_name}",
        )
        assert killed  # the producer connection among them
        second = Job(task="t", queue=queue.queue_name)
        assert await queue.enqueue(second) == second.id
        third = Job(task="t", queue=queue.queue_name)
        assert await queue.enqueue(third) == third.id
        assert (await queue.counts()).ready == 3
    finally:
        await queue.disconnect()


async def test_an_enqueue_cancelled_while_its_insert_waits_stores_nothing(
    postgres_dsn: str, pg_schema: str, admin: asyncpg.Connection
) -> None:
    queue = _queue(postgres_dsn, pg_schema)
    await queue.connect()
    try:
        await queue.enqueue(Job(task="t", queue=queue.queue_name))  # takes the producer
        table = f'"{pg_schema}".jobs'
        async with admin.transaction():
            await admin.execute(f"LOCK TABLE {table} IN SHARE MODE")  # INSERTs wait
            cancelled = Job(task="t", queue=queue.queue_name)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(queue.enqueue(cancelled), 0.5)
        after = Job(task="t", queue=queue.queue_name)
        assert await asyncio.wait_for(queue.enqueue(after), 10) == after.id
        stored = await admin.fetch(
            f"SELECT job_id FROM {table} WHERE queue_name = $1", queue.queue_name
        )
        assert cancelled.id not in {row["job_id"] for row in stored}
        assert len(stored) == 2
    finally:
        await queue.disconnect()


async def test_a_pool_of_one_enqueues_and_leases_on_its_only_connection(
    postgres_dsn: str, pg_schema: str
) -> None:
    queue = _queue(postgres_dsn, pg_schema, max_pool_size=1, async_commit=False)
    await queue.connect()
    try:
        for _ in range(3):
            await queue.enqueue(Job(task="t", queue=queue.queue_name))
        leased = await asyncio.wait_for(queue.dequeue(max_jobs=3), 10)
        assert len(leased) == 3
    finally:
        await asyncio.wait_for(queue.disconnect(), 10)


async def test_disconnect_returns_the_producer_connection_and_closes_everything(
    postgres_dsn: str, pg_schema: str, admin: asyncpg.Connection
) -> None:
    queue = _queue(postgres_dsn, pg_schema)
    await queue.connect()
    await queue.enqueue(Job(task="t", queue=queue.queue_name))
    assert await _connections(admin, queue) >= 1
    await asyncio.wait_for(queue.disconnect(), 10)  # a pool waits for every checked-out connection
    assert await _connections(admin, queue) == 0
    await queue.connect()  # and a reconnected queue takes a new one
    try:
        job = Job(task="t", queue=queue.queue_name)
        assert await queue.enqueue(job) == job.id
        assert (await queue.counts()).ready == 2
    finally:
        await queue.disconnect()


async def test_a_dedup_key_still_returns_the_pending_holder(
    postgres_dsn: str, pg_schema: str
) -> None:
    queue = _queue(postgres_dsn, pg_schema)
    await queue.connect()
    try:
        first = Job(task="t", queue=queue.queue_name, dedup_key="k")
        plain = Job(task="t", queue=queue.queue_name)
        second = Job(task="t", queue=queue.queue_name, dedup_key="k")
        assert await queue.enqueue(first) == first.id
        assert await queue.enqueue(plain) == plain.id
        assert await queue.enqueue(second) == first.id
        assert (await queue.counts()).ready == 2
    finally:
        await queue.disconnect()
