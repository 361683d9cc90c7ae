"""RabbitMQDeadLetterFeeder with several node URLs: it reads through the node that is up."""

from __future__ import annotations

import uuid

from lexigram.tasks import DeadLetterQueue, TaskProvider
from lexigram.tasks.dlq import RabbitMQDeadLetterFeeder
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.testing import eventually

DOWN = "amqp://guest:guest@127.0.0.1:1/"  # a node that is down: nothing listens on port 1


async def test_drain_and_start_skip_a_node_that_is_down(amqp_url: str) -> None:
    queue = RabbitMQTaskQueue(
        [DOWN, amqp_url], queue_name=f"dlq-nodes-{uuid.uuid4().hex[:8]}", message_ttl=0.1
    )
    await queue.connect()
    dlq = DeadLetterQueue()
    feeder = RabbitMQDeadLetterFeeder.for_queue(dlq, queue)
    assert feeder.endpoints == queue.endpoints
    assert "guest:***@127.0.0.1:1/" in repr(feeder)
    provider = TaskProvider(queue=queue, strict=False)
    try:
        first = await provider.enqueue("reports.nightly", 1)  # expires: dead-lettered
        await eventually(lambda: _failed(queue), timeout=15, message="nothing dead-lettered")
        assert await feeder.drain() == 1
        assert await dlq.get(first.id) is not None
        await feeder.start()
        second = await provider.enqueue("reports.nightly", 2)
        record = await eventually(lambda: dlq.get(second.id), timeout=15)
        assert record.error_type == "MessageExpired"
    finally:
        await feeder.stop()
        await queue.delete_topology()
        await queue.disconnect()


async def _failed(queue: RabbitMQTaskQueue) -> bool:
    return (await queue.counts()).failed == 1
