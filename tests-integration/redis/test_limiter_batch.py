"""One call of the Redis limiter's batch script holding acquires of different leases and limits.

The script formats each lease's score and expiry, and reads each limit, once per
call; the acquires that share a call must each keep their own.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from lexigram.tasks.redis.concurrency import RedisConcurrencyLimiter


async def _server_time(client: aioredis.Redis) -> float:
    seconds, micros = await client.time()
    return seconds + micros / 1e6


async def test_acquires_sharing_a_call_keep_their_own_lease_and_limit(
    redis_url: str, ns: str, client: aioredis.Redis
) -> None:
    limiter = RedisConcurrencyLimiter(redis_url, namespace=ns)
    await limiter.connect()
    try:
        assert await limiter.acquire([("full", 1)], "first", 60.0)
        assert await limiter.acquire([("roomy", 2)], "first", 60.0)
        before = await _server_time(client)
        # Asked within one turn of the event loop: one script call.
        taken = await asyncio.gather(
            limiter.acquire([("short", 1)], "a", 5.0),
            limiter.acquire([("long", 3)], "b", 120.0),
            limiter.acquire([("full", 1)], "c", 5.0),
            limiter.acquire([("roomy", 2)], "d", 5.0),
            limiter.acquire([("long", 3), ("short2", 1)], "e", 120.0),
        )
        after = await _server_time(client)
        assert taken == [True, True, False, True, True]
        for name, holder, lease in [
            ("short", "a", 5.0),
            ("long", "b", 120.0),
            ("roomy", "d", 5.0),
            ("long", "e", 120.0),
            ("short2", "e", 120.0),
        ]:
            score = await client.zscore(limiter.key(name), holder)
            assert score is not None and before + lease <= score <= after + lease, (name, holder)
        # A fresh set lives a second longer than its lease; a longer lease never shortens one.
        assert 5000 < await client.pttl(limiter.key("short")) <= 6000
        assert 120_000 < await client.pttl(limiter.key("long")) <= 121_000
        assert 60_000 < await client.pttl(limiter.key("roomy")) <= 61_000
        assert await client.zcard(limiter.key("full")) == 1
        # A call that only gives slots back.
        await limiter.release(["long"], "b")
        await limiter.release(["long", "short2"], "e")
        await limiter.flush()
        assert await client.exists(limiter.key("long"), limiter.key("short2")) == 0
    finally:
        await limiter.disconnect()
