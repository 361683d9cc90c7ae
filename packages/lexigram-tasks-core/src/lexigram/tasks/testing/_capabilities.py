"""Optional capabilities: tests run for what a backend declares, refusal for what it does not."""

from __future__ import annotations

import time
import uuid

import pytest

from lexigram.tasks.errors import CapabilityNotSupportedError
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Capability, QueueCounts, TaskQueueProtocol
from lexigram.tasks.testing._base import ContractBase, requires
from lexigram.tasks.testing._helpers import collect, eventually, job_ids, make_job


def _job_needing(capability: Capability, queue: TaskQueueProtocol) -> Job:
    if capability is Capability.DELAY:
        return make_job(queue, run_at=time.time() + 60)
    if capability is Capability.PRIORITY:
        return make_job(queue, priority=5)
    return make_job(queue, dedup_key=f"contract-{uuid.uuid4().hex}")


class CapabilityContract(ContractBase):
    """The declared capability set, and refusal of what is not declared."""

    @pytest.mark.asyncio
    async def test_declares_the_expected_capabilities(self, queue: TaskQueueProtocol) -> None:
        if self.expected_capabilities is None:
            pytest.skip("expected_capabilities is not set: the declared set is not pinned")
        assert queue.capabilities == self.expected_capabilities

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "capability", [Capability.DELAY, Capability.PRIORITY, Capability.UNIQUE]
    )
    async def test_undeclared_capability_is_refused(
        self, queue: TaskQueueProtocol, capability: Capability
    ) -> None:
        if capability in queue.capabilities:
            pytest.skip(f"capability {capability.value} is declared; its own tests run instead")
        with pytest.raises(CapabilityNotSupportedError):
            await queue.enqueue(_job_needing(capability, queue))
        assert (await queue.counts()).pending == 0


class DelayContract(ContractBase):
    """Capability.DELAY: ``run_at`` in the future and ``nack(delay=...)`` are honoured."""

    @pytest.mark.asyncio
    @requires(Capability.DELAY)
    async def test_delayed_job_is_not_delivered_early(self, queue: TaskQueueProtocol) -> None:
        run_at = time.time() + self.lease_seconds
        job = make_job(queue, run_at=run_at)
        await queue.enqueue(job)
        assert await queue.dequeue(lease_seconds=self.lease_seconds * 10) == []
        [delivery] = await eventually(
            lambda: queue.dequeue(lease_seconds=self.lease_seconds * 10, wait=0.05),
            timeout=self.lease_seconds + 10,
            message="a delayed job was never delivered",
        )
        assert time.time() >= run_at - self.clock_tolerance, "delivered before its run_at"
        assert delivery.job_id == job.id
        assert delivery.job is not None
        assert delivery.job.run_at == pytest.approx(run_at, abs=1e-3)

    @pytest.mark.asyncio
    @requires(Capability.DELAY)
    async def test_delayed_jobs_are_counted_as_delayed(self, queue: TaskQueueProtocol) -> None:
        later = time.time() + 300
        await queue.enqueue_many([make_job(queue, run_at=later) for _ in range(2)])
        await queue.enqueue(make_job(queue))
        assert await queue.counts() == QueueCounts(ready=1, delayed=2, running=0, failed=0)

    @pytest.mark.asyncio
    @requires(Capability.DELAY)
    async def test_delayed_job_does_not_hold_up_ready_jobs(self, queue: TaskQueueProtocol) -> None:
        delayed = make_job(queue, run_at=time.time() + 300)
        ready = make_job(queue)
        await queue.enqueue(delayed)
        await queue.enqueue(ready)
        deliveries = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        assert job_ids(deliveries) == [ready.id]
        assert await queue.dequeue(max_jobs=5, lease_seconds=self.lease_seconds) == []

    @pytest.mark.asyncio
    @requires(Capability.DELAY)
    async def test_run_at_in_the_past_is_ready_now(self, queue: TaskQueueProtocol) -> None:
        job = make_job(queue, run_at=time.time() - 3600)
        await queue.enqueue(job)
        assert (await queue.counts()).ready == 1
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10, timeout=5)
        assert delivery.job_id == job.id

    @pytest.mark.asyncio
    @requires(Capability.DELAY)
    async def test_nack_with_delay_is_honoured(self, queue: TaskQueueProtocol) -> None:
        delay = self.lease_seconds
        job = make_job(queue)
        await queue.enqueue(job)
        [first] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        nacked_at = time.time()
        await queue.nack(first, requeue=True, delay=delay, reason="contract: backoff")
        assert await queue.counts() == QueueCounts(ready=0, delayed=1, running=0, failed=0)
        assert await queue.dequeue(lease_seconds=self.lease_seconds * 10) == []
        [again] = await eventually(
            lambda: queue.dequeue(lease_seconds=self.lease_seconds * 10, wait=0.05),
            timeout=delay + 10,
            message="a job nacked with a delay was never delivered again",
        )
        assert time.time() - nacked_at >= delay - self.clock_tolerance, "retried too early"
        assert again.job_id == job.id
        assert again.job is not None
        assert again.job.attempt == 2


class PriorityContract(ContractBase):
    """Capability.PRIORITY: higher priority first (0-9), FIFO among equals."""

    @pytest.mark.asyncio
    @requires(Capability.PRIORITY)
    async def test_higher_priority_is_delivered_first(self, queue: TaskQueueProtocol) -> None:
        priorities = [0, 5, 9, 1, 9, 3, 0, 5, 7, 2]
        jobs = [make_job(queue, priority=p, args=[n]) for n, p in enumerate(priorities)]
        for job in jobs:
            await queue.enqueue(job)
        deliveries = await collect(queue, len(jobs), lease_seconds=self.lease_seconds * 10)
        expected = sorted(jobs, key=lambda j: -j.priority)  # stable: FIFO among equals
        assert job_ids(deliveries) == [job.id for job in expected]

    @pytest.mark.asyncio
    @requires(Capability.PRIORITY)
    async def test_priority_applies_to_bulk_enqueue(self, queue: TaskQueueProtocol) -> None:
        jobs = [make_job(queue, priority=p) for p in (1, 9, 0, 9, 4)]
        await queue.enqueue_many(jobs)
        deliveries = await collect(queue, len(jobs), lease_seconds=self.lease_seconds * 10)
        assert [d.job.priority for d in deliveries if d.job] == [9, 9, 4, 1, 0]
        assert job_ids(deliveries)[:2] == [jobs[1].id, jobs[3].id]


class UniqueContract(ContractBase):
    """Capability.UNIQUE: a dedup key is held by one pending or running job."""

    @pytest.mark.asyncio
    @requires(Capability.UNIQUE)
    async def test_duplicate_enqueue_returns_the_first_id(self, queue: TaskQueueProtocol) -> None:
        key = f"contract-{uuid.uuid4().hex}"
        first, duplicate = make_job(queue, dedup_key=key), make_job(queue, dedup_key=key)
        assert await queue.enqueue(first) == first.id
        assert await queue.enqueue(duplicate) == first.id
        assert (await queue.counts()).ready == 1

    @pytest.mark.asyncio
    @requires(Capability.UNIQUE)
    async def test_key_is_held_while_running_and_released_by_ack(
        self, queue: TaskQueueProtocol
    ) -> None:
        key = f"contract-{uuid.uuid4().hex}"
        first = make_job(queue, dedup_key=key)
        await queue.enqueue(first)
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        assert await queue.enqueue(make_job(queue, dedup_key=key)) == first.id
        assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=1, failed=0)

        await queue.ack(delivery)
        later = make_job(queue, dedup_key=key)
        assert await queue.enqueue(later) == later.id
        [again] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        assert again.job_id == later.id

    @pytest.mark.asyncio
    @requires(Capability.UNIQUE)
    async def test_key_is_released_by_dead_lettering(self, queue: TaskQueueProtocol) -> None:
        key = f"contract-{uuid.uuid4().hex}"
        await queue.enqueue(make_job(queue, dedup_key=key))
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        await queue.nack(delivery, requeue=False, reason="contract: unique")
        later = make_job(queue, dedup_key=key)
        assert await queue.enqueue(later) == later.id

    @pytest.mark.asyncio
    @requires(Capability.UNIQUE)
    async def test_key_is_kept_by_a_requeued_job(self, queue: TaskQueueProtocol) -> None:
        key = f"contract-{uuid.uuid4().hex}"
        first = make_job(queue, dedup_key=key)
        await queue.enqueue(first)
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        await queue.nack(delivery, requeue=True)
        assert await queue.enqueue(make_job(queue, dedup_key=key)) == first.id
        assert (await queue.counts()).ready == 1

    @pytest.mark.asyncio
    @requires(Capability.UNIQUE)
    async def test_bulk_enqueue_deduplicates(self, queue: TaskQueueProtocol) -> None:
        key = f"contract-{uuid.uuid4().hex}"
        first, plain, duplicate = (
            make_job(queue, dedup_key=key),
            make_job(queue),
            make_job(queue, dedup_key=key),
        )
        assert await queue.enqueue_many([first, plain, duplicate]) == [
            first.id,
            plain.id,
            first.id,
        ]
        assert (await queue.counts()).ready == 2
