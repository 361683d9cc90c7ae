"""RedisRateLimiter: GCRA on the server's clock, shared by every client of a namespace."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from lexigram.tasks.ratelimit import Rate, RateLimiter
from lexigram.tasks.redis import RedisRateLimiter


@pytest_asyncio.fixture
async def limiter(redis_url: str, ns: str) -> AsyncIterator[RedisRateLimiter]:
    made = RedisRateLimiter(redis_url=redis_url, namespace=ns)
    try:
        yield made
    finally:
        await made.disconnect()


async def test_it_is_a_rate_limiter(limiter: RedisRateLimiter) -> None:
    assert isinstance(limiter, RateLimiter)
    assert "namespace" in repr(limiter)


@pytest.mark.parametrize("text", ["5/s", "200/s", "1000/s"])
async def test_grants_at_the_rate_at_high_and_low_rates(
    limiter: RedisRateLimiter, text: str
) -> None:
    rate = Rate.parse(text)
    assert await limiter.acquire("paced", rate) == 0
    assert 0 <= await limiter.acquire("paced", rate) <= rate.interval
    # Ask in a loop for a while, sleeping whatever the limiter says: it grants
    # about one slot per interval, never more, and never refuses for ever
    # (no rounding leftovers at today's epoch).
    window = max(1.0, 5 * rate.interval)
    granted = 0
    started = time.monotonic()
    while time.monotonic() - started < window:
        wait = await limiter.acquire("paced", rate)
        if wait == 0:
            granted += 1
        else:
            await asyncio.sleep(wait)
    assert 3 <= granted <= window / rate.interval + 2


async def test_burst_allows_that_many_back_to_back(redis_url: str, ns: str) -> None:
    bursty = RedisRateLimiter(redis_url=redis_url, namespace=ns, burst=3)
    try:
        rate = Rate.parse("1/m")
        assert [await bursty.acquire("b", rate) for _ in range(3)] == [0, 0, 0]
        assert await bursty.acquire("b", rate) > 50
    finally:
        await bursty.disconnect()


async def test_clients_of_one_namespace_share_the_budget_and_others_do_not(
    limiter: RedisRateLimiter, redis_url: str, ns: str
) -> None:
    rate = Rate.parse("1/m")
    same = RedisRateLimiter(redis_url=redis_url, namespace=ns)
    other = RedisRateLimiter(redis_url=redis_url, namespace=f"{ns}-other")
    try:
        assert await limiter.acquire("shared", rate) == 0
        assert await same.acquire("shared", rate) > 0
        assert await other.acquire("shared", rate) == 0
    finally:
        await same.disconnect()
        await other.disconnect()


async def test_state_expires_once_the_budget_is_back(
    limiter: RedisRateLimiter, client: aioredis.Redis
) -> None:
    await limiter.acquire("short", Rate.parse("10/s"))
    ttl_ms = await client.pttl(limiter.key("short"))
    assert 0 < ttl_ms <= 1100
