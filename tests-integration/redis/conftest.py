"""Fixtures of the Redis tests: unique queues and key namespaces, worker processes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.testing import BackendSpec, WorkerProcesses


@pytest.fixture
def ns() -> str:
    """A key namespace (and Redis client name) no other test uses."""
    return f"lxtest-{uuid.uuid4().hex[:10]}"


@pytest_asyncio.fixture
async def client(redis_url: str, ns: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client for checks; deletes the test's ``ns:*`` keys afterwards."""
    connection = aioredis.Redis.from_url(redis_url)
    try:
        yield connection
    finally:
        keys = [key async for key in connection.scan_iter(match=f"{ns}:*", count=1000)]
        if keys:
            await connection.delete(*keys)
        await connection.aclose()


@pytest_asyncio.fixture
async def queue(redis_url: str) -> AsyncIterator[RedisTaskQueue]:
    """A connected queue with a unique name; purged afterwards."""
    q = RedisTaskQueue(redis_url=redis_url, queue_name=f"lxtest-{uuid.uuid4().hex[:10]}")
    async with q:
        try:
            yield q
        finally:
            await q.purge()


@pytest.fixture
def workers(
    redis_url: str, ns: str, queue: RedisTaskQueue, tmp_path: Path
) -> Iterator[WorkerProcesses]:
    """Worker processes (``lexigram.tasks.testing.worker_app``) on ``queue``, with a Redis
    result store and rate limiter; their connections carry the client name ``ns``
    (so a test can CLIENT KILL exactly them). Any still running at the end is killed."""
    named = f"{redis_url}{'&' if '?' in redis_url else '?'}client_name={ns}"
    started = WorkerProcesses(
        BackendSpec(
            "lexigram.tasks.redis:RedisTaskQueue",
            {"redis_url": named, "queue_name": queue.queue_name},
        ),
        tmp_path,
        worker_count=20,
        poll_interval=0.5,
        result_store=BackendSpec(
            "lexigram.tasks.redis:CacheBackendResultStore", {"redis_url": named, "ttl": 60}
        ),
        rate_limiter=BackendSpec(
            "lexigram.tasks.redis:RedisRateLimiter", {"redis_url": named, "namespace": ns}
        ),
    )
    try:
        yield started
    finally:
        started.close()
