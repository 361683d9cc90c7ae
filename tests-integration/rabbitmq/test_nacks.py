"""A publish the broker nacks (it did not store the message) is sent again for a while.

A quorum queue nacks while it has no leader (see the cluster failover test);
here a full queue with ``x-overflow: reject-publish`` nacks on the test broker.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from lexigram.tasks.job import Job
from lexigram.tasks.rabbitmq import PublishRefusedError, RabbitMQTaskQueue

FULL_AT_ONE = {"x-max-length": 1, "x-overflow": "reject-publish"}


async def test_a_nacked_job_goes_in_once_there_is_room(amqp_url: str, queue_name: str) -> None:
    queue = RabbitMQTaskQueue(amqp_url, queue_name, queue_arguments=FULL_AT_ONE, connect_timeout=10)
    async with queue:
        try:
            await queue.enqueue(Job(task="t", queue=queue_name, args=[1]))
            second = asyncio.ensure_future(queue.enqueue(Job(task="t", queue=queue_name, args=[2])))
            [first] = await queue.dequeue(wait=5)
            assert not second.done()  # nacked while the queue is full, and sent again
            await queue.ack(first)
            await asyncio.wait_for(second, 5)
            [then] = await queue.dequeue(wait=5)
            assert then.job is not None and then.job.args == [2]
            await queue.ack(then)
        finally:
            await queue.delete_topology()


async def test_a_job_nacked_for_connect_timeout_is_refused(amqp_url: str, queue_name: str) -> None:
    queue = RabbitMQTaskQueue(
        amqp_url, queue_name, queue_arguments=FULL_AT_ONE, connect_timeout=0.5
    )
    async with queue:
        try:
            await queue.enqueue(Job(task="t", queue=queue_name))
            began = time.monotonic()
            with pytest.raises(PublishRefusedError, match=r"did not store job \S+ \(basic.nack"):
                await queue.enqueue(Job(task="t", queue=queue_name))
            assert 0.3 < time.monotonic() - began < 3
        finally:
            await queue.delete_topology()
