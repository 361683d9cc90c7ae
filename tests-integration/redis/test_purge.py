"""RedisTaskQueue.purge(): deletes the queue and every job in it, and says how many."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from lexigram.tasks.job import Job
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.redis.keys import job_key
from lexigram.tasks.testing import collect


async def test_purge_deletes_every_job_and_returns_how_many(
    queue: RedisTaskQueue, redis_url: str
) -> None:
    name = queue.queue_name
    ready = [Job(task="t", queue=name) for _ in range(3)]
    await queue.enqueue_many(ready)
    await queue.enqueue(Job(task="t", queue=name, run_at=time.time() + 3600))
    [running] = await collect(queue, 1, lease_seconds=30, batch=1)
    await queue.enqueue(Job(task="t", queue=name))
    [failed] = await collect(queue, 1, lease_seconds=30, batch=1)
    await queue.nack(failed, requeue=False, reason="boom")

    assert await queue.purge() == 5  # 2 ready, 1 delayed, 1 running, 1 failed
    assert (await queue.counts()).pending == 0 and await queue.dead_letters() == []
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert not await client.exists(job_key(running.job_id))
    finally:
        await client.aclose()
    assert await queue.purge() == 0
