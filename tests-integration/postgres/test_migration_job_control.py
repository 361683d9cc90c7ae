"""Migration 0002 (job control) upgrades a 0001 schema that already holds jobs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio

from lexigram.tasks.control import JobState
from lexigram.tasks.job import Job
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres.migrate import available_migrations, quote_ident
from lexigram.tasks.postgres.schema import run_migrations
from lexigram.tasks.testing import collect


@pytest_asyncio.fixture
async def old_schema(postgres_dsn: str) -> AsyncIterator[str]:
    """A schema at version 0001 only; dropped afterwards."""
    schema = f"lexigram_mig2_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await run_migrations(
            connection,
            schema,
            available_migrations()[:1],
            table="schema_migrations",
            lock_namespace="lexigram.tasks.postgres",
        )
        yield schema
    finally:
        await connection.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
        await connection.close()


async def test_0002_applies_on_a_0001_schema_with_jobs_in_every_status(
    postgres_dsn: str, old_schema: str, admin: asyncpg.Connection
) -> None:
    table = f"{quote_ident(old_schema)}.jobs"
    jobs = {
        status: Job(task="t.old", queue="q") for status in ("ready", "running", "done", "failed")
    }
    for status, job in jobs.items():
        # Rows as a 0.1 queue left them (a lapsed lease for the running one).
        await admin.execute(
            f"INSERT INTO {table} (queue_name, job_id, status, payload, lease_expires_at,"
            " finished_at, attempt) VALUES ('q', $1, $2, $3,"
            " CASE WHEN $2 = 'running' THEN now() - interval '1 minute' END,"
            " CASE WHEN $2 IN ('done', 'failed') THEN now() END,"
            " CASE WHEN $2 = 'ready' THEN 0 ELSE 1 END)",
            job.id,
            status,
            job.to_bytes(),
        )

    async with PostgresTaskQueue(postgres_dsn, "q", schema=old_schema) as queue:
        versions = await admin.fetch(
            f"SELECT version FROM {quote_ident(old_schema)}.schema_migrations ORDER BY 1"
        )
        assert [r["version"] for r in versions][:2] == [1, 2]
        expected = {
            "ready": JobState.QUEUED,
            "running": JobState.QUEUED,  # its lease lapsed: it runs again
            "done": JobState.SUCCEEDED,
            "failed": JobState.FAILED,
        }
        for status, job in jobs.items():
            info = await queue.get_job(job.id)
            assert info is not None and info.state is expected[status], status
            assert info.task == "t.old"
        succeeded = await queue.list_jobs(state=JobState.SUCCEEDED)
        assert [j.id for j in succeeded.jobs] == [jobs["done"].id]

        # The old rows are leased and settled by the new statements.
        deliveries = await collect(queue, 2, lease_seconds=30)
        assert {d.job_id for d in deliveries} == {jobs["ready"].id, jobs["running"].id}
        await queue.ack_many(deliveries)
        assert (await queue.counts()).pending == 0
