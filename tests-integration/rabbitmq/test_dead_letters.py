"""Dead-lettering on RabbitMQ: exhausted retries, bad messages and expired TTLs reach the DLQ."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest_asyncio

from lexigram.tasks import TaskProvider
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.testing import eventually


@pytest_asyncio.fixture
async def amqp(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain aio-pika channel, as any other AMQP client would use."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        yield await connection.channel()


async def _peek_dead_letters(
    channel: aio_pika.abc.AbstractChannel, queue_name: str
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message of the queue's DLQ, read and put back (nack with requeue)."""
    dlq = await channel.get_queue(f"{queue_name}.dlq", ensure=True)
    found = []
    while (message := await dlq.get(no_ack=False, fail=False)) is not None:
        found.append(message)
    for message in found:
        await message.nack(requeue=True)
    return found


async def _failed(queue: RabbitMQTaskQueue, count: int) -> bool:
    return (await queue.counts()).failed == count


def _provider(queue: RabbitMQTaskQueue, workers: int) -> TaskProvider:
    """A provider with its own connection to ``queue``'s queue (it disconnects on exit)."""
    own = RabbitMQTaskQueue(amqp_url=queue.amqp_url, queue_name=queue.queue_name)
    return TaskProvider(queue=own, worker_count=workers, poll_interval=0.1)


async def test_exhausted_retries_land_in_the_dlq_with_the_reason_in_headers(
    queue: RabbitMQTaskQueue, amqp: aio_pika.abc.AbstractChannel
) -> None:
    provider = _provider(queue, 2)
    runs: list[int] = []

    @provider.task(name="flaky.charge", max_retries=2, retry_backoff=0.05)
    async def charge(order: int) -> None:
        runs.append(order)
        raise RuntimeError(f"card declined for order {order}")

    async with provider:
        handle = await charge.enqueue(7)
        await eventually(lambda: _failed(queue, 1), timeout=20)
    assert runs == [7, 7, 7]

    [message] = await _peek_dead_letters(amqp, queue.queue_name)
    headers: dict[str, Any] = dict(message.headers)
    assert headers["x-lexigram-reason"] == "RuntimeError: card declined for order 7"
    assert headers["x-lexigram-source-queue"] == queue.queue_name
    assert headers["x-lexigram-attempt"] == 3
    assert headers["x-lexigram-job-id"] == handle.id
    assert message.content_type == "application/json"
    assert json.loads(message.body)["task"] == "flaky.charge"

    [dead] = await queue.dead_letters()
    assert dead.job_id == handle.id
    assert dead.reason == "RuntimeError: card declined for order 7"
    assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=1)


async def test_malformed_message_is_dead_lettered_and_the_worker_goes_on(
    queue: RabbitMQTaskQueue, amqp: aio_pika.abc.AbstractChannel
) -> None:
    provider = _provider(queue, 1)
    done: list[str] = []

    @provider.task(name="notes.add")
    async def add(text: str) -> None:
        done.append(text)

    garbage = b'{"task": "notes.add", "args": ["no id"]'
    await amqp.default_exchange.publish(aio_pika.Message(garbage), routing_key=queue.queue_name)
    async with provider:
        await add.enqueue("after the garbage")
        await eventually(lambda: done == ["after the garbage"], timeout=20)
        await eventually(lambda: _failed(queue, 1), timeout=10)

    [message] = await _peek_dead_letters(amqp, queue.queue_name)
    assert message.body == garbage
    assert "not valid JSON" in message.headers["x-lexigram-reason"]  # type: ignore[operator]
    [dead] = await queue.dead_letters()
    assert dead.payload == garbage
    assert dead.job_id is None


async def test_queue_message_ttl_dead_letters_jobs_nobody_ran(
    amqp_url: str, queue_name: str
) -> None:
    queue = RabbitMQTaskQueue(amqp_url=amqp_url, queue_name=queue_name, message_ttl=0.2)
    async with queue:
        try:
            job = Job(task="report.build", queue=queue_name)
            await queue.enqueue(job)
            await eventually(lambda: _failed(queue, 1), timeout=10)
            [dead] = await queue.dead_letters()
            assert dead.job_id == job.id
            assert dead.reason == f"expired (in queue {queue_name})"
            assert await queue.dequeue(wait=0.3) == []
        finally:
            await queue.delete_topology()


async def test_per_message_ttl_from_the_job_header(queue: RabbitMQTaskQueue) -> None:
    short = Job(task="sms.send", queue=queue.queue_name, headers={"x-message-ttl": "100"})
    plain = Job(task="sms.send", queue=queue.queue_name)
    await queue.enqueue_many([short, plain])
    await eventually(lambda: _failed(queue, 1), timeout=10)
    [dead] = await queue.dead_letters()
    assert dead.job_id == short.id
    assert dead.reason.startswith("expired")
    [delivery] = await queue.dequeue(wait=1.0)
    assert delivery.job_id == plain.id
    await queue.ack(delivery)
