"""A job that cannot be written back for its retry, on classic and quorum queues. Poison
messages and a job that kills its worker are in the worker contract (test_contract.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from lexigram.tasks import TaskProvider, WorkerPool
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.testing import eventually


@pytest_asyncio.fixture(params=["classic", "quorum"])
async def typed_queue(
    request: pytest.FixtureRequest, amqp_url: str, queue_name: str
) -> AsyncIterator[RabbitMQTaskQueue]:
    q = RabbitMQTaskQueue(amqp_url=amqp_url, queue_name=queue_name, queue_type=request.param)
    async with q:
        try:
            yield q
        finally:
            await q.delete_topology()


async def test_a_job_that_cannot_be_written_back_runs_once_and_is_dead_lettered(
    typed_queue: RabbitMQTaskQueue, amqp_url: str
) -> None:
    """Its retry cannot be published (NaN in its arguments): it must not run again at
    every lease; its message as received goes to the dead letters with the reason."""
    queue = typed_queue
    provider = TaskProvider(queue=queue, strict=False)
    runs: list[str] = []

    @provider.task(name="spoils_its_args", max_retries=3, retry_backoff=0.1)
    async def spoils_its_args(key: str, seen: list[float]) -> None:
        """Puts NaN into its own arguments, then fails."""
        runs.append(key)
        seen.append(float("nan"))
        raise RuntimeError(f"failed after spoiling {key}")

    job = Job(task="spoils_its_args", args=["spoiled", []], queue=queue.queue_name, max_retries=3)
    await queue.enqueue(job)
    worker_queue = RabbitMQTaskQueue(
        amqp_url=amqp_url, queue_name=queue.queue_name, queue_type=queue.queue_type
    )
    async with worker_queue:
        pool = WorkerPool(worker_queue, provider.tasks, lease_seconds=1.0)
        await pool.start()
        try:
            await eventually(lambda: _failed(queue, 1), timeout=30)
        finally:
            await pool.stop()

    assert runs == ["spoiled"]
    [dead] = await queue.dead_letters()
    assert dead.job_id == job.id
    assert dead.payload == job.to_bytes()
    assert "JobSerializationError: the job could not be written back" in dead.reason
    assert "RuntimeError: failed after spoiling spoiled" in dead.reason


async def _failed(queue: RabbitMQTaskQueue, expected: int) -> bool:
    return await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=expected)
