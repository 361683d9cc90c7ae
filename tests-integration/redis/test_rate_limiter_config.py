"""``tasks.rate_limiter: {type: redis}``: one limit for every process built from the same file.

Without the key (before it existed), ``global_rate_limit`` was counted by each
worker process on its own; with it, every provider made from the
configuration draws from one budget in Redis.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import redis.asyncio as aioredis

from lexigram.tasks.config import load_config
from lexigram.tasks.ratelimit import Rate
from lexigram.tasks.redis import RedisRateLimiter
from lexigram.tasks.worker import GLOBAL_RATE_KEY

CONFIG = """
tasks:
  backend:
    type: redis
    redis_url: ${REDIS_URL}
    queue_name: ${NS}
  global_rate_limit: 1/m
  rate_limiter:
    type: redis
    redis_url: ${REDIS_URL}
    namespace: ${NS}
"""


async def test_two_providers_from_one_file_share_the_global_rate_limit(
    tmp_path: Path, redis_url: str, ns: str, client: aioredis.Redis
) -> None:
    path = tmp_path / "lexigram.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    config = load_config(path, env={"REDIS_URL": redis_url, "NS": ns})
    first, second = config.create_provider(), config.create_provider()
    assert isinstance(first.rate_limiter, RedisRateLimiter)
    assert isinstance(second.rate_limiter, RedisRateLimiter)
    assert first.rate_limiter is not second.rate_limiter

    ran = asyncio.Event()

    @first.task(name="work")
    async def work() -> None:
        ran.set()

    async with first:
        await first.enqueue("work")
        await asyncio.wait_for(ran.wait(), timeout=30)
    try:
        # The first provider's worker took the one slot of this minute; the
        # second provider, another limiter object on the same file, sees it taken.
        wait = await second.rate_limiter.acquire(GLOBAL_RATE_KEY, Rate.parse("1/m"))
    finally:
        await second.rate_limiter.disconnect()
    assert 30 < wait <= 60
    assert await client.exists(f"{ns}:rate:{GLOBAL_RATE_KEY}") == 1
