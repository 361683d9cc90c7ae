"""The storage contract on the in-memory storage."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from lexigram.tasks.dlq import DeadLetterStorage, MemoryDeadLetterStorage
from lexigram.tasks.dlq.testing import DeadLetterStorageContract


class TestMemoryStorage(DeadLetterStorageContract):
    @pytest_asyncio.fixture
    async def storage(self) -> AsyncIterator[DeadLetterStorage]:
        yield MemoryDeadLetterStorage()
