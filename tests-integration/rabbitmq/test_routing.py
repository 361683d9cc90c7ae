"""Routing on RabbitMQ: a task to its own queue, one worker on several queues, named exchanges."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
import pytest_asyncio

from lexigram.tasks import TaskProvider
from lexigram.tasks.job import Job
from lexigram.tasks.rabbitmq import PublishRefusedError, RabbitMQTaskQueue
from lexigram.tasks.testing import eventually


def _name(kind: str) -> str:
    return f"lxtest-{kind}-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture
async def opened(amqp_url: str) -> AsyncIterator[list[RabbitMQTaskQueue]]:
    """Queues a test connects by appending them; their topology is deleted afterwards."""
    queues: list[RabbitMQTaskQueue] = []
    yield queues
    for queue in queues:
        if queue._connection is None:
            await queue.connect()
        await queue.delete_topology()
        await queue.disconnect()


async def _open(opened: list[RabbitMQTaskQueue], **options: object) -> RabbitMQTaskQueue:
    queue = RabbitMQTaskQueue(**options)  # type: ignore[arg-type]
    await queue.connect()
    opened.append(queue)
    return queue


async def test_a_task_routed_to_its_own_queue(
    amqp_url: str, opened: list[RabbitMQTaskQueue]
) -> None:
    main, emails = _name("main"), _name("emails")
    producer = await _open(opened, amqp_url=amqp_url, queue_name=main, routes={"mail.send": emails})
    await producer.enqueue(Job(task="mail.send", queue=main))
    await producer.enqueue(Job(task="report.build", queue=main))

    mail_worker = await _open(opened, amqp_url=amqp_url, queue_name=emails)
    [mail] = await mail_worker.dequeue(wait=2.0)
    assert mail.job is not None
    assert mail.job.task == "mail.send"
    assert mail.job.queue == emails
    await mail_worker.ack(mail)
    [report] = await producer.dequeue(wait=2.0)
    assert report.job is not None
    assert report.job.task == "report.build"
    await producer.ack(report)


async def test_one_worker_consumes_several_queues(
    amqp_url: str, opened: list[RabbitMQTaskQueue]
) -> None:
    default, urgent = _name("default"), _name("urgent")
    to_default = await _open(opened, amqp_url=amqp_url, queue_name=default)
    to_urgent = await _open(opened, amqp_url=amqp_url, queue_name=urgent)
    both = RabbitMQTaskQueue(amqp_url=amqp_url, queue_name=default, queues=[urgent])
    provider = TaskProvider(queue=both, worker_count=4, poll_interval=0.1)
    seen: list[str] = []

    @provider.task(name="work.note")
    async def note(text: str) -> None:
        seen.append(text)

    async with provider:
        await to_default.enqueue(note.job("from default"))
        await to_urgent.enqueue(note.job("from urgent"))
        await eventually(lambda: len(seen) == 2, timeout=10)
        counts = await both.counts()
    assert sorted(seen) == ["from default", "from urgent"]
    assert counts.pending == 0


async def test_named_exchange_routing_key_and_a_foreign_subscriber(
    amqp_url: str, opened: list[RabbitMQTaskQueue]
) -> None:
    exchange, orders = _name("exchange"), _name("orders")
    producer = await _open(
        opened,
        amqp_url=amqp_url,
        queue_name=_name("web"),
        exchange=exchange,
        routes={"orders.created": orders},
    )
    worker = await _open(opened, amqp_url=amqp_url, queue_name=orders, exchange=exchange)

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        audit = await channel.declare_queue(exclusive=True)
        await audit.bind(exchange, routing_key=orders)  # another team listens too

        now = Job(task="orders.created", args=[1], queue=orders)
        later = Job(task="orders.created", args=[2], queue=orders, run_at=time.time() + 0.3)
        await producer.enqueue_many([now, later])

        [first] = await worker.dequeue(wait=2.0)
        assert first.job_id == now.id
        [second] = await worker.dequeue(wait=5.0)
        assert second.job_id == later.id
        assert second.job is not None
        assert second.job.run_at is not None
        assert time.time() >= second.job.run_at
        await worker.ack_many([first, second])
        copies = [await audit.get(timeout=5), await audit.get(timeout=5)]
        assert sorted(m.message_id for m in copies) == sorted([now.id, later.id])
        await channel.exchange_delete(exchange)


async def test_unroutable_job_is_refused_not_dropped(
    amqp_url: str, opened: list[RabbitMQTaskQueue]
) -> None:
    exchange = _name("exchange")
    producer = await _open(
        opened,
        amqp_url=amqp_url,
        queue_name=_name("web"),
        exchange=exchange,
        routes={"nobody.listens": "no-such-binding"},
    )
    try:
        with pytest.raises(PublishRefusedError, match="no-such-binding"):
            await producer.enqueue(Job(task="nobody.listens"))
    finally:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.exchange_delete(exchange)
