"""The connection a queue's limiter sends its acquires on.

A worker leases a batch, then takes the slots of its limited jobs: the acquire
goes out on the connection the lease just used (the queue's own, when free),
so a worker with limits opens no connection more than one without.
"""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis

from lexigram.tasks.job import Job
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.redis.concurrency import RedisConcurrencyLimiter
from lexigram.tasks.testing import eventually


def _named(redis_url: str, name: str) -> str:
    return f"{redis_url}{'&' if '?' in redis_url else '?'}client_name={name}"


async def _connections(client: aioredis.Redis, name: str) -> int:
    return sum(1 for c in await client.client_list() if c["name"] == name)


async def test_a_batchs_acquires_go_on_the_connection_its_lease_used(
    redis_url: str, ns: str, client: aioredis.Redis
) -> None:
    queue = RedisTaskQueue(_named(redis_url, ns), queue_name=f"lxtest-{uuid.uuid4().hex[:10]}")
    async with queue:
        limiter = RedisConcurrencyLimiter.for_queue(queue)
        await limiter.connect()
        try:
            await queue.enqueue_many([Job(task="t", args=[i]) for i in range(20)])
            for round_ in range(10):
                leased = await queue.dequeue(max_jobs=2, lease_seconds=30.0)
                requests = [([(f"key:{d.job_id}", 1)], f"w/{d.job_id}") for d in leased]
                assert await limiter.acquire_many(requests, 30.0) == [True, True], round_
                await queue.ack_many(leased)
            assert await _connections(client, ns) == 1
            # Busy (a lease waiting for jobs on it), the acquire takes another connection.
            waiting = asyncio.create_task(queue.dequeue(max_jobs=1, wait=1.0))
            await asyncio.sleep(0.1)
            assert await limiter.acquire_many([([("busy", 1)], "w/busy")], 30.0) == [True]
            assert await waiting == []
            assert await _connections(client, ns) == 2
            # A connection the server dropped is replaced on the next call.
            for info in await client.client_list():
                if info["name"] == ns:
                    await client.client_kill_filter(_id=info["id"])
            assert await limiter.acquire_many([([("after", 1)], "w/after")], 30.0) == [True]
        finally:
            await limiter.disconnect()
            await queue.purge()


async def test_a_limiter_with_its_own_client_keeps_one_connection(
    redis_url: str, ns: str, client: aioredis.Redis
) -> None:
    limiter = RedisConcurrencyLimiter(_named(redis_url, ns), namespace=ns)
    await limiter.connect()
    try:
        for i in range(10):
            assert await limiter.acquire_many([([(f"k{i}", 1)], f"h{i}")], 30.0) == [True]
            await limiter.release([f"k{i}"], f"h{i}")
            await limiter.flush()
        assert await _connections(client, ns) == 1
        assert await client.exists(*(limiter.key(f"k{i}") for i in range(10))) == 0
    finally:
        await limiter.disconnect()
    # The server drops a closed connection from its list when it reads the close.
    await eventually(lambda: _none_named(client, ns), timeout=5)


async def _none_named(client: aioredis.Redis, name: str) -> bool:
    return await _connections(client, name) == 0


async def test_a_limiter_on_a_sized_pool_keeps_all_of_it(redis_url: str, ns: str) -> None:
    # One connection in all: none may be kept out of the pool for the acquires.
    sized = f"{redis_url}{'&' if '?' in redis_url else '?'}max_connections=1"
    limiter = RedisConcurrencyLimiter(sized, namespace=ns)
    await limiter.connect()
    try:
        assert await limiter.acquire_many([([("k", 1)], "h")], 30.0) == [True]
        await limiter.extend([("k", "h")], 30.0)
        await limiter.release(["k"], "h")
        await limiter.flush()
    finally:
        await limiter.disconnect()
