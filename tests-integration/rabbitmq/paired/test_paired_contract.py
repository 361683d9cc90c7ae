"""RabbitMQ paired with a job state store against the real servers: the job-control
contract (inspect, cancel, workers) and the worker's job control on classic and quorum
queues with a Redis store, the queue-level contract with a PostgreSQL store, and the
whole queue contract on a paired classic queue (the pairing must break nothing)."""

from __future__ import annotations

from typing import Any, ClassVar

import aio_pika
import pytest

from lexigram.tasks.protocol import Capability, TaskQueueProtocol
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.testing import (
    AttemptsContract,
    BackendSpec,
    ContractBase,
    JobControlContract,
    TaskQueueContract,
    WorkerControlContract,
)

PAIRED = frozenset(
    {
        Capability.DELAY,
        Capability.INSPECT,
        Capability.CANCEL,
        Capability.WORKERS,
        Capability.ATTEMPTS,
    }
)


class PairedHooks(ContractBase):
    """How the suites reach RabbitMQ paired with a state store of ``store_kind``."""

    queue_type: ClassVar[str] = "classic"
    store_kind: ClassVar[str] = "redis"
    expected_capabilities = PAIRED

    @pytest.fixture(autouse=True)
    def _servers(self, amqp_url: str, store_specs: Any) -> None:
        self.url = amqp_url
        self.store = store_specs(self.store_kind)

    async def create_queue(self, queue_name: str) -> TaskQueueProtocol:
        return RabbitMQTaskQueue(**self._options(queue_name))

    def _options(self, queue_name: str) -> dict[str, Any]:
        return {
            "amqp_url": self.url,
            "queue_name": queue_name,
            "queue_type": self.queue_type,
            "state_store": dict(self.store),
        }

    def queue_spec(self, queue_name: str) -> BackendSpec:
        return BackendSpec("lexigram.tasks.rabbitmq:RabbitMQTaskQueue", self._options(queue_name))

    async def push_raw(self, queue: TaskQueueProtocol, payload: bytes) -> None:
        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            message = aio_pika.Message(payload, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, routing_key=queue.queue_name)

    async def drop_queue(self, queue_name: str) -> None:
        queue = RabbitMQTaskQueue(**self._options(queue_name))
        await queue.connect()
        try:
            await queue.delete_topology()
        finally:
            await queue.disconnect()


class _Control(PairedHooks, JobControlContract, WorkerControlContract, AttemptsContract):
    # The broker hands a closed connection's unacked messages back at once.
    returns_jobs_of_a_closed_connection = True


class TestClassicWithRedisStore(_Control):
    pass


class TestQuorumWithRedisStore(_Control):
    queue_type = "quorum"


class TestClassicWithPostgresStore(PairedHooks, JobControlContract, AttemptsContract):
    store_kind = "postgres"


class TestWholeContractOnAPairedClassicQueue(PairedHooks, TaskQueueContract):
    # AMQP 0-9-1 reports only this connection's unacked messages as running.
    counts_leases_of_other_connections = False
