"""Concurrency limits on PostgreSQL: the slot table, fairness between tenants, limits across
worker processes, slots of killed workers."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres.concurrency import PostgresConcurrencyLimiter

sys.path.insert(0, str(Path(__file__).parents[1]))
import limits_cases


@pytest_asyncio.fixture
async def queue(postgres_dsn: str, pg_schema: str) -> AsyncIterator[PostgresTaskQueue]:
    q = PostgresTaskQueue(postgres_dsn, f"limits-{uuid.uuid4().hex[:10]}", schema=pg_schema)
    async with q:
        yield q  # the module's schema is dropped afterwards


@pytest.fixture
def workers(
    postgres_dsn: str, pg_schema: str, queue: PostgresTaskQueue, tmp_path: Path
) -> Iterator[limits_cases.Workers]:
    started = limits_cases.Workers("postgres", postgres_dsn, queue.queue_name, pg_schema, tmp_path)
    try:
        yield started
    finally:
        started.close()


async def test_limiter_takes_all_or_none_across_pools(postgres_dsn: str, pg_schema: str) -> None:
    one = PostgresConcurrencyLimiter(postgres_dsn, schema=pg_schema)
    two = PostgresConcurrencyLimiter(postgres_dsn, schema=pg_schema)
    a, b = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    try:
        assert await one.acquire([(a, 1), (b, 2)], "h1", 60)
        assert not await two.acquire([(b, 2), (a, 1)], "h2", 60)  # a is full: b not taken
        assert await two.acquire([(b, 2)], "h3", 60)
        assert not await one.acquire([(b, 2)], "h4", 60)
        await one.release([a, b], "h1")
        assert await two.acquire([(b, 2)], "h4", 0.2)
        assert await two.acquire([(a, 1)], "h5", 0.2)
        await two.extend([(a, "h5")], 60)
        await asyncio.sleep(0.4)  # h4's lease (not extended) lapses; h5's was extended
        assert await one.acquire([(b, 2)], "h6", 60)
        assert not await one.acquire([(a, 1)], "h6", 60)
        # Many at once on one name: never more than the limit.
        c = f"c-{uuid.uuid4().hex}"
        taken = await asyncio.gather(
            *(
                limiter.acquire([(c, 3)], f"x{i}-{n}", 60)
                for i in range(20)
                for n, limiter in enumerate((one, two))
            )
        )
        assert sum(taken) == 3
    finally:
        await one.disconnect()
        await two.disconnect()


async def test_tenant_b_is_not_starved_by_tenant_a_backlog(queue: PostgresTaskQueue) -> None:
    await limits_cases.fairness(queue, workers=20)


async def test_per_key_limit_holds_across_two_worker_processes(
    queue: PostgresTaskQueue, workers: limits_cases.Workers
) -> None:
    await limits_cases.limit_across_processes(queue, workers)


async def test_a_killed_workers_slot_frees_when_its_lease_lapses(
    queue: PostgresTaskQueue, workers: limits_cases.Workers
) -> None:
    await limits_cases.killed_worker_frees_its_slot(queue, workers)
