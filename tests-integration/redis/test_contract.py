"""RedisTaskQueue passes the backend and worker contract suites against a real Redis."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from lexigram.tasks.protocol import Capability, TaskQueueProtocol
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.testing import BackendSpec, ContractBase, TaskQueueContract, WorkerContract


class RedisHooks(ContractBase):
    """How the suites reach a real Redis."""

    lease_seconds = 1.0

    @pytest.fixture(autouse=True)
    def _url(self, redis_url: str) -> None:
        self.url = redis_url

    async def create_queue(self, queue_name: str) -> TaskQueueProtocol:
        return RedisTaskQueue(redis_url=self.url, queue_name=queue_name)

    def queue_spec(self, queue_name: str) -> BackendSpec:
        options = {"redis_url": self.url, "queue_name": queue_name}
        return BackendSpec("lexigram.tasks.redis:RedisTaskQueue", options)

    async def push_raw(self, queue: TaskQueueProtocol, payload: bytes) -> None:
        # What a producer in another language does (docs/backends/redis.md,
        # "Producing from other languages"): write the job hash, push its id.
        job_id = uuid.uuid4().hex
        client = aioredis.Redis.from_url(self.url)
        try:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hset(f"rq:job:{job_id}", mapping={"data": payload, "status": "queued"})
                pipe.rpush(f"rq:queue:{queue.queue_name}", job_id)
                await pipe.execute()
        finally:
            await client.aclose()

    async def drop_queue(self, queue_name: str) -> None:
        queue = RedisTaskQueue(redis_url=self.url, queue_name=queue_name)
        async with queue:
            await queue.purge()


class TestRedisContract(RedisHooks, TaskQueueContract):
    expected_capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.PRIORITY,
            Capability.UNIQUE,
            Capability.INSPECT,
            Capability.CANCEL,
            Capability.WORKERS,
            Capability.ATTEMPTS,
        }
    )


class TestRedisWorkerContract(RedisHooks, WorkerContract):
    pass
