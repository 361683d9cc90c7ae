"""Fixtures of the Redis tests: unique queues and key namespaces, worker processes."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from lexigram.tasks.redis import RedisTaskQueue

WORKER_APP = Path(__file__).with_name("_worker_app.py")


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


Spawn = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def spawn(redis_url: str, ns: str) -> Iterator[Spawn]:
    """Start worker processes (``_worker_app.py``); any still running at the end is killed.

    ``log=path`` sends the worker's stderr (its log) to a file.
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(
        queue: RedisTaskQueue, lease_seconds: float = 30.0, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        args = [redis_url, queue.queue_name, ns, str(lease_seconds)]
        stderr = log.open("wb") if log is not None else None
        process = subprocess.Popen([sys.executable, str(WORKER_APP), *args], stderr=stderr)
        if stderr is not None:
            stderr.close()  # the child keeps its own descriptor
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
