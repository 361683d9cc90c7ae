"""RabbitMQ's dead-letter exchange feeds the DLQ through RabbitMQDeadLetterFeeder."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
import pytest_asyncio

from lexigram.tasks import DeadLetterQueue, MemoryResultStore, TaskProvider
from lexigram.tasks.dlq import RabbitMQDeadLetterFeeder
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.testing import eventually


@pytest_asyncio.fixture
async def rabbit(amqp_url: str) -> AsyncIterator[RabbitMQTaskQueue]:
    queue = RabbitMQTaskQueue(amqp_url=amqp_url, queue_name=f"dlq-dlx-{uuid.uuid4().hex[:8]}")
    await queue.connect()
    try:
        yield queue
    finally:
        await queue.connect()
        await queue.delete_topology()
        await queue.disconnect()


def worker_without_sink(queue: RabbitMQTaskQueue) -> tuple[TaskProvider, dict[str, Any]]:
    """A provider with no dead_letter=: failures go to RabbitMQ's DLX, not to the DLQ."""
    provider = TaskProvider(
        queue=queue, result_store=MemoryResultStore(), poll_interval=0.05, lease_seconds=5
    )
    state: dict[str, Any] = {"fixed": False}

    @provider.task(name="crm.sync_contact", max_retries=1, retry_backoff=0.01)
    async def sync_contact(contact_id: int) -> str:
        if not state["fixed"]:
            raise PermissionError(f"token expired for contact {contact_id}")
        return f"synced {contact_id}"

    return provider, state


async def test_jobs_dead_lettered_by_the_worker_reach_the_dlq_and_replay(
    rabbit: RabbitMQTaskQueue,
) -> None:
    dlq = DeadLetterQueue()
    feeder = RabbitMQDeadLetterFeeder.for_queue(dlq, rabbit)
    provider, state = worker_without_sink(rabbit)
    async with provider:
        handle = await provider.enqueue("crm.sync_contact", 7)
        await eventually(lambda: _failed(rabbit, 1), timeout=15, message="nothing in the DLX")
        assert await feeder.drain() == 1
        assert (await rabbit.counts()).failed == 0  # moved, not copied
        record = await dlq.get(handle.id)
        assert record is not None
        assert record.source == "rabbitmq"
        assert record.error_type == "PermissionError"
        assert record.error_message == "token expired for contact 7"
        assert record.attempts == 2
        assert record.queue == rabbit.queue_name
        assert record.details["dead_letter_queue"] == f"{rabbit.queue_name}.dlq"
        assert record.job is not None
        assert record.job.args == [7]

        state["fixed"] = True
        replayed = await dlq.replay(record.id, provider)
        assert replayed is not None
        assert await replayed.result(timeout=15) == "synced 7"
    assert await dlq.count() == 0


async def test_messages_the_broker_expires_are_fed_continuously(amqp_url: str) -> None:
    queue = RabbitMQTaskQueue(
        amqp_url=amqp_url, queue_name=f"dlq-ttl-{uuid.uuid4().hex[:8]}", message_ttl=0.2
    )
    await queue.connect()
    dlq = DeadLetterQueue()
    feeder = RabbitMQDeadLetterFeeder.for_queue(dlq, queue)
    provider = TaskProvider(queue=queue, strict=False)
    try:
        await feeder.start()
        handle = await provider.enqueue("reports.nightly", "2024-05-01")  # no worker runs it
        record = await eventually(lambda: dlq.get(handle.id), timeout=15)
        assert record.error_type == "MessageExpired"
        assert "expired" in record.reason
        assert record.job is not None
        assert record.job.args == ["2024-05-01"]
        assert record.details["x_death"][0]["reason"] == "expired"
        # The feeder counts a batch once it is stored: the record can be seen first.
        await eventually(lambda: feeder.moved == 1, timeout=15)
    finally:
        await feeder.stop()
        await queue.delete_topology()
        await queue.disconnect()


async def test_a_malformed_message_keeps_its_bytes_and_a_redelivery_updates_one_record(
    rabbit: RabbitMQTaskQueue, amqp_url: str
) -> None:
    dlq = DeadLetterQueue()
    feeder = RabbitMQDeadLetterFeeder.for_queue(dlq, rabbit)
    provider, _ = worker_without_sink(rabbit)
    raw = b"<xml>not a job</xml>"
    async with provider:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.default_exchange.publish(
                aio_pika.Message(raw), routing_key=rabbit.queue_name
            )
        await eventually(lambda: _failed(rabbit, 1), timeout=15)
        # Read it without acking first (as if the feeder died before its ack)...
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            dead = await channel.get_queue(f"{rabbit.queue_name}.dlq")
            message = await dead.get(no_ack=False)
            assert message is not None
            from lexigram.tasks.dlq.rabbitmq import to_record

            await dlq.add_record(to_record(message, rabbit.queue_name))
        # ...the connection closed, so RabbitMQ hands it to the next reader.
        assert await feeder.drain() == 1
    [record] = await dlq.list()
    assert record.payload == raw
    assert record.job is None
    assert record.error_type == "MalformedJobError"
    assert record.id.startswith("malformed-")


async def _failed(queue: RabbitMQTaskQueue, n: int) -> bool:
    return (await queue.counts()).failed == n


async def test_a_missing_dead_letter_queue_is_explained(amqp_url: str) -> None:
    from lexigram.tasks import ConfigurationError

    feeder = RabbitMQDeadLetterFeeder(DeadLetterQueue(), amqp_url, ["never-declared-queue"])
    with pytest.raises(ConfigurationError, match=r"connect a RabbitMQTaskQueue"):
        await feeder.drain()


async def test_a_configured_feeder_runs_as_a_provider_service(rabbit: RabbitMQTaskQueue) -> None:
    dlq = DeadLetterQueue.from_config(
        {"rabbitmq": {"amqp_url": rabbit.amqp_url, "queue_names": [rabbit.queue_name]}}
    )
    provider = TaskProvider(queue=rabbit, poll_interval=0.05, strict=False)

    # A job for a task no worker has now waits for other workers, so the job that
    # fails for good is one whose task raises (no retries).
    @provider.task(name="dlq_test.lookup")
    async def lookup(record_id: int) -> None:
        raise LookupError(f"no record {record_id}")

    provider.add_service(dlq)  # starts and stops its feeder with the workers
    async with provider:
        handle = await provider.enqueue("dlq_test.lookup", 1)
        record = await eventually(lambda: dlq.get(handle.id), timeout=15)
    assert record.error_type == "LookupError"
    assert record.source == "rabbitmq"
    assert (await _counts_after(rabbit)).failed == 0


async def _counts_after(queue: RabbitMQTaskQueue) -> Any:
    await queue.connect()
    return await queue.counts()
