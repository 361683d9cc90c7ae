"""Connection lifecycle: connect and disconnect are idempotent, jobs outlive a connection."""

from __future__ import annotations

import pytest

from lexigram.tasks.testing._base import ContractBase
from lexigram.tasks.testing._helpers import collect, make_job


class LifecycleContract(ContractBase):
    """connect()/disconnect() twice each, disconnect before connect, reconnect."""

    @pytest.mark.asyncio
    async def test_connect_and_disconnect_are_idempotent(self, queue_name: str) -> None:
        queue = await self.create_queue(queue_name)
        await queue.disconnect()  # before connect: nothing to close
        await queue.connect()
        await queue.connect()
        job = make_job(queue)
        await queue.enqueue(job)
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        assert delivery.job_id == job.id
        await queue.ack(delivery)
        await queue.disconnect()
        await queue.disconnect()

    @pytest.mark.asyncio
    async def test_jobs_survive_a_reconnect(self, queue_name: str) -> None:
        queue = await self.create_queue(queue_name)
        await queue.connect()
        try:
            job = make_job(queue, args=["kept"])
            await queue.enqueue(job)
            await queue.disconnect()
            await queue.connect()
            [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
            assert delivery.job_id == job.id
            await queue.ack(delivery)
        finally:
            await queue.disconnect()

    @pytest.mark.asyncio
    async def test_another_instance_sees_the_same_jobs(self, queue_name: str) -> None:
        async with self.connected(queue_name) as producer:
            job = make_job(producer)
            await producer.enqueue(job)
            async with self.connected(queue_name) as consumer:
                assert (await consumer.counts()).ready == 1
                [delivery] = await collect(consumer, 1, lease_seconds=self.lease_seconds * 10)
                assert delivery.job_id == job.id
                await consumer.ack(delivery)
            assert (await producer.counts()).pending == 0
