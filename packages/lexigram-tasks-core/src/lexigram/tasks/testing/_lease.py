"""Leases: one holder at a time, redelivery when a lease lapses, extension, waiting."""

from __future__ import annotations

import asyncio
import time

import pytest

from lexigram.tasks.protocol import QueueCounts, TaskQueueProtocol
from lexigram.tasks.testing._base import ContractBase
from lexigram.tasks.testing._helpers import collect, eventually, make_job


class LeaseContract(ContractBase):
    """At-least-once delivery: leases, their lapse and extension, and ``dequeue(wait=...)``."""

    @pytest.mark.asyncio
    async def test_dequeue_hands_out_at_most_max_jobs(self, queue: TaskQueueProtocol) -> None:
        await queue.enqueue_many([make_job(queue) for _ in range(5)])
        got = await queue.dequeue(max_jobs=2, lease_seconds=self.lease_seconds * 10, wait=2.0)
        assert 1 <= len(got) <= 2
        assert (await queue.counts()).running == len(got)

    @pytest.mark.asyncio
    async def test_leased_job_goes_to_one_consumer_only(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        first, second = make_job(queue), make_job(queue)
        await queue.enqueue_many([first, second])
        [mine] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        async with self.connected(queue_name) as other:
            [theirs] = await collect(other, 1, lease_seconds=self.lease_seconds * 10)
            assert {mine.job_id, theirs.job_id} == {first.id, second.id}
            assert await other.dequeue(max_jobs=5, lease_seconds=self.lease_seconds) == []

    @pytest.mark.asyncio
    async def test_lease_expiry_redelivers_an_unacked_job(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        lease = self.lease_seconds
        job = make_job(queue)
        await queue.enqueue(job)
        leased_at = time.monotonic()
        [lost] = await collect(queue, 1, lease_seconds=lease)
        assert lost.job is not None
        assert lost.job.attempt == 1
        async with self.connected(queue_name) as other:
            assert await other.dequeue(lease_seconds=lease) == [], "lease is still live"
            [again] = await eventually(
                lambda: other.dequeue(lease_seconds=lease * 10, wait=0.05),
                timeout=lease + 10,
                message="a job whose lease lapsed was not delivered again",
            )
        waited = time.monotonic() - leased_at
        assert again.job_id == job.id
        assert again.job is not None
        assert again.job.attempt == 2
        assert waited >= lease - self.clock_tolerance, "redelivered before the lease lapsed"

    @pytest.mark.asyncio
    async def test_settling_a_lapsed_lease_does_not_touch_the_new_lease(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
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
            held_elsewhere = QueueCounts(ready=0, delayed=0, running=1, failed=0)
            if self.counts_leases_of_other_connections:
                assert await queue.counts() == held_elsewhere
            else:
                assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=0)
                assert await other.counts() == held_elsewhere
            assert await queue.dead_letters() == []

            await other.nack(fresh, requeue=True)
            [last] = await collect(other, 1, lease_seconds=lease * 10)
            assert last.job_id == job.id
            assert last.job is not None
            assert last.job.attempt == 3
            await other.ack(last)
        assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=0)

    @pytest.mark.asyncio
    async def test_extend_lease_keeps_the_job_from_redelivery(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        lease = self.lease_seconds
        job = make_job(queue)
        await queue.enqueue(job)
        [held] = await collect(queue, 1, lease_seconds=lease)
        hold_until = time.monotonic() + 2.5 * lease
        async with self.connected(queue_name) as other:
            while time.monotonic() < hold_until:
                await queue.extend_lease([held], lease)
                stolen = await other.dequeue(lease_seconds=lease, wait=lease / 4)
                assert stolen == [], "a job whose lease was extended was delivered again"
        assert (await queue.counts()).running == 1
        await queue.ack(held)
        assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=0)

    @pytest.mark.asyncio
    async def test_dequeue_wait_returns_as_soon_as_a_job_arrives(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        job = make_job(queue)
        async with self.connected(queue_name) as producer:
            started = time.monotonic()
            waiter = asyncio.create_task(
                queue.dequeue(lease_seconds=self.lease_seconds * 10, wait=10.0)
            )
            try:
                await asyncio.sleep(0.2)  # let the consumer start waiting
                assert not waiter.done(), "dequeue(wait=10) returned before any job existed"
                await producer.enqueue(job)
                deliveries = await asyncio.wait_for(waiter, 15.0)
            finally:
                waiter.cancel()
            elapsed = time.monotonic() - started
        assert [d.job_id for d in deliveries] == [job.id]
        assert elapsed < 5.0, f"dequeue waited {elapsed:.2f} s although a job arrived at 0.2 s"

    @pytest.mark.asyncio
    async def test_dequeue_wait_gives_up_when_nothing_arrives(
        self, queue: TaskQueueProtocol
    ) -> None:
        started = time.monotonic()
        assert await queue.dequeue(lease_seconds=self.lease_seconds, wait=0.3) == []
        elapsed = time.monotonic() - started
        assert 0.3 - self.clock_tolerance <= elapsed < 5.0
