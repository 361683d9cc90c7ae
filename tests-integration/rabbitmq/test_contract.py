"""The backend contract suite against the real RabbitMQ: classic queues, with and without
priorities, and quorum queues; the worker suite on classic and quorum queues."""

from __future__ import annotations

import aio_pika
import pytest

from lexigram.tasks.protocol import Capability, TaskQueueProtocol
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.testing import (
    BackendSpec,
    ContractBase,
    TaskQueueContract,
    WorkerContract,
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
    # AMQP 0-9-1 reports only this connection's unacked messages as running.
    counts_leases_of_other_connections = False


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
