"""Retention: finished jobs deleted or kept for a while; failed ones kept; batched cleanup."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from lexigram.tasks.job import Job
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres.migrate import quote_ident
from lexigram.tasks.testing import collect, eventually


def _queue(dsn: str, schema: str, **options: object) -> PostgresTaskQueue:
    name = f"ret_{uuid.uuid4().hex[:8]}"
    return PostgresTaskQueue(postgres_dsn=dsn, queue_name=name, schema=schema, **options)  # type: ignore[arg-type]


async def _statuses(admin: asyncpg.Connection, schema: str, queue: PostgresTaskQueue) -> list[str]:
    rows = await admin.fetch(
        f"SELECT status FROM {quote_ident(schema)}.jobs WHERE queue_name = $1 ORDER BY id",
        queue.queue_name,
    )
    return [row["status"] for row in rows]


async def _finish_one(queue: PostgresTaskQueue, *, fail: bool = False) -> None:
    await queue.enqueue(Job(task="t", queue=queue.queue_name))
    [delivery] = await collect(queue, 1, lease_seconds=10)
    if fail:
        await queue.nack(delivery, requeue=False, reason="boom")
    else:
        await queue.ack(delivery)


async def test_by_default_an_acked_job_is_deleted_and_a_failed_one_kept(
    postgres_dsn: str, pg_schema: str, admin: asyncpg.Connection
) -> None:
    async with _queue(postgres_dsn, pg_schema) as queue:
        await _finish_one(queue)
        await _finish_one(queue, fail=True)
        assert await _statuses(admin, pg_schema, queue) == ["failed"]
        assert await queue.delete_expired() == 0
        assert await _statuses(admin, pg_schema, queue) == ["failed"]


async def test_finished_jobs_are_kept_for_keep_finished_then_cleaned_up(
    postgres_dsn: str, pg_schema: str, admin: asyncpg.Connection
) -> None:
    queue = _queue(postgres_dsn, pg_schema, keep_finished=0.5, cleanup_interval=0.1)
    async with queue:
        await _finish_one(queue)
        assert await _statuses(admin, pg_schema, queue) == ["done"]
        assert (await queue.counts()).pending == 0

        async def cleaned() -> bool:
            return await _statuses(admin, pg_schema, queue) == []

        await eventually(cleaned, timeout=10, message="the cleanup task never ran")


async def test_failed_jobs_are_deleted_after_keep_failed(
    postgres_dsn: str, pg_schema: str, admin: asyncpg.Connection
) -> None:
    async with _queue(postgres_dsn, pg_schema, keep_failed=3600.0) as queue:
        await _finish_one(queue, fail=True)
        assert await queue.delete_expired() == 0, "deleted a dead letter younger than keep_failed"
        await admin.execute(
            f"UPDATE {quote_ident(pg_schema)}.jobs SET finished_at = now() - interval '2 hours'"
            " WHERE queue_name = $1",
            queue.queue_name,
        )
        assert await queue.delete_expired() == 1
        assert await queue.dead_letters() == []


async def test_delete_expired_works_in_batches_and_only_on_its_own_queue(
    postgres_dsn: str, pg_schema: str, admin: asyncpg.Connection
) -> None:
    jobs = f"{quote_ident(pg_schema)}.jobs"
    mine = _queue(postgres_dsn, pg_schema, keep_finished=60.0, cleanup_batch_size=1000)
    other = _queue(postgres_dsn, pg_schema, keep_finished=60.0)
    async with mine, other:
        for queue in (mine, other):
            await admin.execute(
                f"INSERT INTO {jobs} (queue_name, status, payload, finished_at)"
                " SELECT $1, 'done', '{}', now() - interval '1 hour'"
                " FROM generate_series(1, 2500)",
                queue.queue_name,
            )
        assert await mine.delete_expired() == 2500
        remaining = await admin.fetchval(
            f"SELECT count(*) FROM {jobs} WHERE queue_name = $1", other.queue_name
        )
        assert remaining == 2500


async def test_purge_is_a_deprecated_alias_of_delete_expired(
    postgres_dsn: str, pg_schema: str, admin: asyncpg.Connection
) -> None:
    async with _queue(postgres_dsn, pg_schema, keep_failed=0.0) as queue:
        await _finish_one(queue, fail=True)
        with pytest.warns(DeprecationWarning, match=r"call delete_expired\(\)"):
            assert await queue.purge() == 1
        assert await _statuses(admin, pg_schema, queue) == []
