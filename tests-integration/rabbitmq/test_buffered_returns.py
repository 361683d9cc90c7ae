"""Messages a consumer buffered but never handed out go back without using an attempt.

A message that RabbitMQ takes back from a consumer (``basic.nack``, a closing
channel, a quorum queue's cancelled consumer) comes back marked as
redelivered, which any worker reads as a run lost with its worker. The
contract suite covers the hand-back followed by a disconnect; these cover the
idle consumer (the connection stays open) and jobs that only sat in a
prefetch buffer, on both queue types.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aio_pika
import pytest

from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.rabbitmq.topology import QueueType
from lexigram.tasks.testing import collect, eventually, make_job

EMPTY = QueueCounts(ready=0, delayed=0, running=0, failed=0)

Connect = Callable[..., AbstractAsyncContextManager[RabbitMQTaskQueue]]


@pytest.fixture(params=["classic", "quorum"])
def queue_type(request: pytest.FixtureRequest) -> QueueType:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def connect(amqp_url: str, queue_name: str, queue_type: QueueType) -> AsyncIterator[Connect]:
    """Connected instances of the test's queue (``options``: further keywords); the
    queue's topology is deleted at the end."""

    @asynccontextmanager
    async def connected(**options: Any) -> AsyncIterator[RabbitMQTaskQueue]:
        queue = RabbitMQTaskQueue(amqp_url, queue_name, queue_type=queue_type, **options)
        async with queue:
            yield queue

    yield connected
    async with connected() as queue:
        await queue.delete_topology()


async def broker_view(amqp_url: str, queue_name: str) -> tuple[int, int]:
    """(ready messages, consumers) of ``queue_name``, as the broker reports them."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue_name, passive=True)
        result = declared.declaration_result
        return result.message_count or 0, result.consumer_count or 0


async def test_a_hand_back_returned_by_an_idle_consumer_keeps_its_attempt(
    connect: Connect, amqp_url: str, queue_name: str
) -> None:
    """The handed-back job lands in the nacking worker's buffer; its consumer goes idle
    and returns it while the connection stays open. Another worker gets attempt 1."""

    async def returned_by_the_idle_consumer() -> bool:
        return await broker_view(amqp_url, queue_name) == (1, 0)

    async with connect() as holder:
        await holder.enqueue(job := make_job(holder, max_retries=0))
        for _ in range(3):
            [delivery] = await collect(holder, 1, lease_seconds=30)
            assert delivery.job is not None
            assert delivery.job.attempt == 1, "a handed-back job came back with a used attempt"
            delivery.job.attempt -= 1
            await holder.nack(delivery, requeue=True, reason="handed back")
            # The idle consumer is cancelled and its buffer is back in the queue.
            await eventually(
                returned_by_the_idle_consumer,
                timeout=10,
                message="the idle consumer did not return the job",
            )
            async with connect() as other:
                [delivery] = await collect(other, 1, lease_seconds=30)
                assert delivery.job_id == job.id
                assert delivery.job is not None
                assert delivery.job.attempt == 1, "another worker read the hand-back as a lost run"
                delivery.job.attempt -= 1
                await other.nack(delivery, requeue=True, reason="handed back")
        [last] = await collect(holder, 1, lease_seconds=30)
        assert last.job is not None
        assert last.job.attempt == 1
        await holder.ack(last)
        assert await holder.counts() == EMPTY


async def test_jobs_that_only_sat_in_a_buffer_use_no_attempt(connect: Connect) -> None:
    """A worker with a prefetch of 5 takes one job and buffers four, then disconnects:
    the four run elsewhere as attempt 1, and nothing is duplicated."""
    async with connect() as producer:
        jobs = [make_job(producer) for _ in range(5)]
        await producer.enqueue_many(jobs)
        async with connect(prefetch=5) as worker:
            [first] = await collect(worker, 1, lease_seconds=30)
            await worker.ack(first)
        async with connect() as other:
            rest = await collect(other, 4, lease_seconds=30)
            assert sorted(d.job_id or "" for d in rest) == sorted(
                j.id for j in jobs if j.id != first.job_id
            )
            assert [d.job.attempt if d.job else None for d in rest] == [1, 1, 1, 1]
            await other.ack_many(rest)
            assert await other.counts() == EMPTY
