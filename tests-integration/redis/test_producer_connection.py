"""The producer's connection: a queue keeps one connection of its own pool for
calls made one after another, and never at the cost of another user of a pool."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from lexigram.tasks.job import Job
from lexigram.tasks.redis import RedisTaskQueue


async def test_concurrent_enqueues_each_get_their_own_reply(queue: RedisTaskQueue) -> None:
    name = queue.queue_name
    jobs = [Job(task="t", queue=name) for _ in range(50)]
    ids = await asyncio.gather(*(queue.enqueue(job) for job in jobs))
    assert ids == [job.id for job in jobs]
    assert (await queue.counts()).ready == 50


async def test_the_reply_names_the_job_holding_the_dedup_key(queue: RedisTaskQueue) -> None:
    name = queue.queue_name
    first = Job(task="t", queue=name, dedup_key="k")
    assert await queue.enqueue(first) == first.id
    assert await queue.enqueue(Job(task="t", queue=name, dedup_key="k")) == first.id
    alone = Job(task="t", queue=name)
    assert await queue.enqueue_many([alone]) == [alone.id]
    again = Job(task="t", queue=name, dedup_key="k")
    assert await queue.enqueue_many([again]) == [first.id]


async def test_an_enqueue_cancelled_before_its_reply_leaves_no_reply_for_the_next(
    queue: RedisTaskQueue, redis_url: str
) -> None:
    name = queue.queue_name
    holder = Job(task="t", queue=name, dedup_key="k")
    await queue.enqueue(holder)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        # Writes (scripts included) wait while the server is paused: the
        # enqueue below is sent, then cancelled before any reply arrives.
        await admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        duplicate = asyncio.ensure_future(queue.enqueue(Job(task="t", queue=name, dedup_key="k")))
        await asyncio.sleep(0.2)
        assert not duplicate.done()
        duplicate.cancel()
        with pytest.raises(asyncio.CancelledError):
            await duplicate
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
    # Had the cancelled call's reply (the holder's id) stayed on the connection,
    # this enqueue would read it as its own.
    fresh = Job(task="t", queue=name)
    assert await queue.enqueue(fresh) == fresh.id


async def test_a_queue_on_a_callers_capped_client_holds_no_connection(
    redis_url: str,
) -> None:
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=1, timeout=None)
    client = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
    queue = RedisTaskQueue(
        redis_url=redis_url, queue_name=f"lxtest-{uuid.uuid4().hex[:10]}", client=client
    )
    try:
        await queue.connect()
        job = Job(task="t", queue=queue.queue_name)
        assert await queue.enqueue(job) == job.id
        # The pool's only connection is back in it: the caller's own command runs.
        assert await asyncio.wait_for(client.ping(), timeout=10)
        assert await queue.purge() == 1
    finally:
        await queue.disconnect()
        await client.aclose()


@pytest.mark.parametrize("where", ["keyword", "url"])
async def test_a_queue_with_max_connections_holds_none_of_them(redis_url: str, where: str) -> None:
    name = f"lxtest-{uuid.uuid4().hex[:10]}"
    if where == "keyword":
        queue = RedisTaskQueue(redis_url=redis_url, queue_name=name, max_connections=1)
    else:
        joiner = "&" if "?" in redis_url else "?"
        queue = RedisTaskQueue(redis_url=f"{redis_url}{joiner}max_connections=1", queue_name=name)
    async with queue:
        job = Job(task="t", queue=name)
        assert await queue.enqueue(job) == job.id
        # purge pipelines plain commands on a connection of the pool: its only one.
        assert await queue.purge() == 1
