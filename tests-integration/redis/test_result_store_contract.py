"""CacheBackendResultStore passes the result-store contract suite against a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
import redis.asyncio as aioredis

from lexigram.tasks.redis import CacheBackendResultStore
from lexigram.tasks.results import ResultStore
from lexigram.tasks.testing import ResultStoreContract


class TestCacheBackendResultStoreContract(ResultStoreContract):
    short_ttl = 1.0

    @pytest_asyncio.fixture(autouse=True)
    async def _prefix(self, redis_url: str) -> AsyncIterator[None]:
        """A key prefix of this test alone; its keys are deleted afterwards."""
        self.redis_url = redis_url
        self.prefix = f"lxtest-rsc-{uuid.uuid4().hex[:10]}:result:"
        yield
        client = aioredis.Redis.from_url(redis_url)
        try:
            keys = [key async for key in client.scan_iter(match=f"{self.prefix}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    async def create_store(self) -> ResultStore:
        # A recheck far longer than the suite's wake timeout: only pub/sub wakes waiters.
        return CacheBackendResultStore(
            redis_url=self.redis_url, key_prefix=self.prefix, recheck_interval=600
        )
