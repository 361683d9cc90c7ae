"""CacheBackendResultStore: TTLs, waiting without polling, size limits, results across processes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from lexigram.tasks import (
    JobResult,
    JobSerializationError,
    ResultTimeoutError,
    TaskFailedError,
    TaskProvider,
)
from lexigram.tasks.redis import CacheBackendResultStore, RedisTaskQueue
from lexigram.tasks.testing import WorkerProcesses, eventually


@pytest_asyncio.fixture
async def store(redis_url: str, ns: str) -> AsyncIterator[CacheBackendResultStore]:
    s = CacheBackendResultStore(redis_url=redis_url, key_prefix=f"{ns}:result:")
    await s.connect()
    try:
        yield s
    finally:
        await s.disconnect()


def _job_id() -> str:
    return uuid.uuid4().hex


async def test_result_round_trips_and_expires_after_its_ttl(
    store: CacheBackendResultStore,
) -> None:
    job_id = _job_id()
    assert await store.get(job_id) is None
    await store.set(job_id, JobResult.success(job_id, {"rows": [1, 2]}), ttl=0.3)
    stored = await store.get(job_id)
    assert stored is not None
    assert stored.value == {"rows": [1, 2]}
    assert stored.status == "succeeded"
    await eventually(lambda: _is_none(store.get(job_id)), timeout=5)


async def test_wait_wakes_on_the_notification_not_by_polling(
    store: CacheBackendResultStore, redis_url: str, ns: str, client: aioredis.Redis
) -> None:
    # recheck_interval is far longer than the test: only pub/sub can wake it.
    waiting = CacheBackendResultStore(
        redis_url=redis_url, key_prefix=f"{ns}:result:", recheck_interval=60
    )
    await waiting.connect()
    try:
        job_ids = [_job_id() for _ in range(3)]
        waiters = [asyncio.create_task(waiting.wait(j, timeout=20)) for j in job_ids]
        waiters.append(asyncio.create_task(waiting.wait(job_ids[0], timeout=20)))
        await eventually(lambda: _subscribers(client, waiting.key(job_ids[0])), timeout=5)
        started = time.monotonic()
        for job_id in job_ids:
            await store.set(job_id, JobResult.success(job_id, job_id))
        results = await asyncio.wait_for(asyncio.gather(*waiters), 10)
        assert time.monotonic() - started < 2
        assert [r.value for r in results] == [*job_ids, job_ids[0]]
        # Every subscription is dropped once its waiters have their result.
        keys = [waiting.key(j) for j in job_ids]
        await eventually(lambda: _no_subscribers(client, *keys), timeout=5)
    finally:
        await waiting.disconnect()


async def test_wait_times_out_with_a_clear_error(store: CacheBackendResultStore) -> None:
    job_id = _job_id()
    started = time.monotonic()
    with pytest.raises(ResultTimeoutError, match=job_id):
        await store.wait(job_id, timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 3


async def test_wait_survives_a_killed_notification_connection(
    redis_url: str, ns: str, client: aioredis.Redis
) -> None:
    url = f"{redis_url}{'&' if '?' in redis_url else '?'}client_name={ns}"
    waiting = CacheBackendResultStore(
        redis_url=url, key_prefix=f"{ns}:result:", recheck_interval=1.0
    )
    await waiting.connect()
    try:
        job_id = _job_id()
        waiter = asyncio.create_task(waiting.wait(job_id, timeout=20))
        await eventually(lambda: _subscribers(client, waiting.key(job_id)), timeout=5)
        for info in await client.client_list():
            if info["name"] == ns and info["sub"] != "0":
                await client.client_kill_filter(_id=info["id"])
        await client.set(waiting.key(job_id), JobResult.success(job_id, 7).to_json())
        result = await asyncio.wait_for(waiter, 10)
        assert result.value == 7
    finally:
        await waiting.disconnect()


async def test_large_and_unserialisable_results_are_refused_clearly(
    redis_url: str, ns: str
) -> None:
    small = CacheBackendResultStore(
        redis_url=redis_url, key_prefix=f"{ns}:result:", max_result_bytes=1000
    )
    await small.connect()
    try:
        job_id = _job_id()
        with pytest.raises(JobSerializationError, match="max_result_bytes=1000"):
            await small.set(job_id, JobResult.success(job_id, "x" * 5000))
        with pytest.raises(JobSerializationError, match="not JSON-serialisable"):
            await small.set(job_id, JobResult.success(job_id, object()))
        assert await small.get(job_id) is None
    finally:
        await small.disconnect()


async def test_handle_result_across_processes(
    queue: RedisTaskQueue, redis_url: str, workers: WorkerProcesses
) -> None:
    # The worker process (worker_app) stores results in the default key space.
    store = CacheBackendResultStore(redis_url=redis_url)
    producer = TaskProvider(
        queue=RedisTaskQueue(redis_url=redis_url, queue_name=queue.queue_name),
        result_store=store,
        strict=False,
    )
    await producer.connect()
    worker = workers.start()
    try:
        handle = await producer.enqueue("square", 7)
        assert await handle.result(timeout=30) == 49
    finally:
        await producer.disconnect()
        await workers.stop(worker)


async def test_unserialisable_return_value_fails_the_handle_with_the_reason(
    queue: RedisTaskQueue, redis_url: str, ns: str
) -> None:
    provider = TaskProvider(
        queue=RedisTaskQueue(redis_url=redis_url, queue_name=queue.queue_name),
        result_store=CacheBackendResultStore(redis_url=redis_url, key_prefix=f"{ns}:result:"),
        poll_interval=0.1,
    )

    @provider.task(name="returns_a_set")
    async def returns_a_set() -> set[int]:
        return {1, 2}

    async with provider:
        handle = await returns_a_set.enqueue()
        with pytest.raises(TaskFailedError) as caught:
            await handle.result(timeout=10)
    assert caught.value.error_type == "JobSerializationError"
    assert "set" in caught.value.error_message


async def _is_none(awaitable: Any) -> bool:
    return await awaitable is None


async def _no_subscribers(client: aioredis.Redis, *channels: str) -> bool:
    return await _subscribers(client, *channels) == 0


async def _subscribers(client: aioredis.Redis, *channels: str) -> int:
    counts = await client.pubsub_numsub(*channels)
    return sum(int(n) for _, n in counts)
