"""The storage contract on a real Redis server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from lexigram.tasks.dlq import DeadLetterStorage, FailureFilter, RedisDeadLetterStorage
from lexigram.tasks.dlq.testing import DeadLetterStorageContract


class TestRedisStorage(DeadLetterStorageContract):
    @pytest.fixture(autouse=True)
    def _url(self, redis_url: str) -> None:
        self.url = redis_url

    @pytest_asyncio.fixture
    async def storage(self) -> AsyncIterator[DeadLetterStorage]:
        storage = RedisDeadLetterStorage(redis_url=self.url, prefix=f"test-dlq:{uuid.uuid4().hex}")
        await storage.connect()
        try:
            yield storage
        finally:
            await storage.purge(FailureFilter())
            leftovers = await storage.client.keys(f"{storage.prefix}:*")
            await storage.disconnect()
        assert leftovers == [], "the storage left keys behind after removing every record"
