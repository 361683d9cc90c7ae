"""Fixtures of the scheduler tests: template stores on the real Redis and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
import pytest_asyncio

from lexigram.tasks.scheduler import MemoryTemplateStore, TemplateStore
from lexigram.tasks.scheduler.postgres_store import PostgresTemplateStore
from lexigram.tasks.scheduler.redis_store import RedisTemplateStore

#: Makes a new store object on the test's shared location (each with its own connections).
StoreFactory = Callable[[], TemplateStore]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def drop_schema(dsn: str, schema: str) -> None:
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        await pool.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def delete_prefix(redis_url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest_asyncio.fixture(params=["memory", "redis", "postgres"])
async def store_factory(
    request: pytest.FixtureRequest,
) -> AsyncIterator[StoreFactory]:
    """Every store kind, each on a location no other test uses, removed afterwards."""
    if request.param == "memory":
        shared = MemoryTemplateStore()
        yield lambda: shared
    elif request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        prefix = unique("lxtest-sched-")
        yield lambda: RedisTemplateStore(url, prefix=prefix)
        await delete_prefix(url, prefix)
    else:
        dsn: str = request.getfixturevalue("postgres_dsn")
        schema = unique("lxtest_sched_")
        yield lambda: PostgresTemplateStore(dsn, schema=schema)
        await drop_schema(dsn, schema)
