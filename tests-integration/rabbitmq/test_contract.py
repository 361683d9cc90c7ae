"""The backend contract suite against the real RabbitMQ: classic queues, with and without
priorities, and quorum queues; the worker suite on classic and quorum queues."""

from __future__ import annotations

import aio_pika
import pytest

from lexigram.tasks.protocol import Capability, QueueCounts, TaskQueueProtocol
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.testing import (
    BackendSpec,
    ContractBase,
    TaskQueueContract,
    WorkerContract,
    collect,
    eventually,
    make_job,
)


class RabbitMQHooks(ContractBase):
    """How the suites reach the real RabbitMQ, with a queue of ``queue_type``."""

    queue_type = "classic"
    priorities = False

    @pytest.fixture(autouse=True)
    def _url(self, amqp_url: str) -> None:
        self.url = amqp_url

    async def create_queue(self, queue_name: str) -> TaskQueueProtocol:
        return self._queue(queue_name)

    def _queue(self, queue_name: str) -> RabbitMQTaskQueue:
        return RabbitMQTaskQueue(
            amqp_url=self.url,
            queue_name=queue_name,
            queue_type=self.queue_type,
            priorities=self.priorities,
        )

    def queue_spec(self, queue_name: str) -> BackendSpec:
        options = {
            "amqp_url": self.url,
            "queue_name": queue_name,
            "queue_type": self.queue_type,
            "priorities": self.priorities,
        }
        return BackendSpec("lexigram.tasks.rabbitmq:RabbitMQTaskQueue", options)

    async def push_raw(self, queue: TaskQueueProtocol, payload: bytes) -> None:
        # A foreign producer: plain aio-pika, no lexigram code on this path.
        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            message = aio_pika.Message(payload, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, routing_key=queue.queue_name)

    async def drop_queue(self, queue_name: str) -> None:
        queue = self._queue(queue_name)
        await queue.connect()
        try:
            await queue.delete_topology()
        finally:
            await queue.disconnect()


class _RabbitMQContract(RabbitMQHooks, TaskQueueContract):
    @pytest.mark.asyncio
    async def test_settling_a_lapsed_lease_does_not_touch_the_new_lease(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        """The suite's test, with ``running`` read from the holder of the lease.

        The suite asks the *stale* instance for ``running == 1`` while another
        connection holds the job. AMQP 0-9-1 does not report another
        connection's unacked messages (only the management HTTP API does), so
        ``counts().running`` is what this instance holds. Everything else is
        asserted as in the suite.
        """
        lease = self.lease_seconds
        job = make_job(queue)
        await queue.enqueue(job)
        [stale] = await collect(queue, 1, lease_seconds=lease)
        async with self.connected(queue_name) as other:
            [fresh] = await eventually(
                lambda: other.dequeue(lease_seconds=lease * 10, wait=0.05), timeout=lease + 10
            )
            assert fresh.job_id == job.id

            await queue.ack(stale)
            await queue.nack(stale, requeue=False, reason="contract: stale holder")
            await queue.nack(stale, requeue=True)
            assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=0)
            assert await other.counts() == QueueCounts(ready=0, delayed=0, running=1, failed=0)
            assert await queue.dead_letters() == []

            await other.nack(fresh, requeue=True)
            [last] = await collect(other, 1, lease_seconds=lease * 10)
            assert last.job_id == job.id
            assert last.job is not None
            assert last.job.attempt == 3
            await other.ack(last)
        assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=0)


class TestRabbitMQClassicContract(_RabbitMQContract):
    expected_capabilities = frozenset({Capability.DELAY})


class TestRabbitMQClassicPriorityContract(_RabbitMQContract):
    priorities = True
    expected_capabilities = frozenset({Capability.DELAY, Capability.PRIORITY})


class TestRabbitMQQuorumContract(_RabbitMQContract):
    queue_type = "quorum"
    expected_capabilities = frozenset({Capability.DELAY})


class _RabbitMQWorkerContract(RabbitMQHooks, WorkerContract):
    # The broker hands a closed connection's unacked messages back at once.
    returns_jobs_of_a_closed_connection = True


class TestRabbitMQClassicWorkerContract(_RabbitMQWorkerContract):
    pass


class TestRabbitMQQuorumWorkerContract(_RabbitMQWorkerContract):
    queue_type = "quorum"
