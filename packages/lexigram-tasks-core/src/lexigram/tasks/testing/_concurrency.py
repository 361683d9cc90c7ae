"""Concurrent consumers: every job is delivered exactly once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import pytest

from lexigram.tasks.protocol import TaskQueueProtocol
from lexigram.tasks.testing._base import ContractBase
from lexigram.tasks.testing._helpers import eventually, make_job
from lexigram.tasks.testing._processes import WorkerProcesses

JOB_COUNT = 2000
CONSUMER_COUNT = 4
_DRAIN_TIMEOUT = 90.0
PROCESS_JOB_COUNT = 200


class ConcurrencyContract(ContractBase):
    """Several queue instances draining one queue at once."""

    @pytest.mark.asyncio
    async def test_concurrent_consumers_get_every_job_exactly_once(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        jobs = [make_job(queue, args=[n]) for n in range(JOB_COUNT)]
        for start in range(0, JOB_COUNT, 500):
            await queue.enqueue_many(jobs[start : start + 500])

        seen: list[str | None] = []
        attempts: Counter[int] = Counter()
        deadline = time.monotonic() + _DRAIN_TIMEOUT

        async def consume() -> None:
            async with self.connected(queue_name) as consumer:
                while len(seen) < JOB_COUNT and time.monotonic() < deadline:
                    # Long leases: a redelivery here could only be a double delivery.
                    deliveries = await consumer.dequeue(max_jobs=50, lease_seconds=60, wait=0.2)
                    seen.extend(d.job_id for d in deliveries)
                    attempts.update(d.job.attempt for d in deliveries if d.job)
                    # Hold the leases across a switch, as a worker running the jobs would,
                    # so the consumers interleave even on an in-process backend.
                    await asyncio.sleep(0)
                    await consumer.ack_many(deliveries)

        await asyncio.gather(*(consume() for _ in range(CONSUMER_COUNT)))

        counted = Counter(seen)
        duplicates = [job_id for job_id, n in counted.items() if n > 1]
        assert not duplicates, f"{len(duplicates)} jobs were delivered more than once"
        assert len(seen) == JOB_COUNT, f"drained {len(seen)} of {JOB_COUNT} jobs in time"
        assert set(counted) == {job.id for job in jobs}
        assert attempts == Counter({1: JOB_COUNT})
        assert (await queue.counts()).pending == 0

    @pytest.mark.asyncio
    async def test_two_consumer_processes_get_every_job_exactly_once(
        self, queue: TaskQueueProtocol, processes: WorkerProcesses
    ) -> None:
        """Two processes drain one queue at once: a lock or a lease that holds only
        inside one process shows up here as a job delivered twice or lost."""
        jobs = [make_job(queue, args=[n]) for n in range(PROCESS_JOB_COUNT)]
        await queue.enqueue_many(jobs)
        consumers = [processes.start(mode="consumer", lease_seconds=60) for _ in range(2)]
        await processes.ready(2)
        for consumer in consumers:
            consumer.send_signal(signal.SIGUSR1)  # both start together
        try:
            await eventually(
                lambda: processes.log.count("delivered").total() >= PROCESS_JOB_COUNT,
                _DRAIN_TIMEOUT,
                message="two consumer processes did not drain the queue",
            )
        finally:
            for consumer in consumers:
                await processes.stop(consumer)
        delivered = processes.log.count("delivered")
        assert not processes.log.count("redelivered"), "a job came with attempt != 1"
        duplicates = [job_id for job_id, n in delivered.items() if n > 1]
        assert not duplicates, f"{len(duplicates)} jobs were delivered to both processes"
        assert set(delivered) == {job.id for job in jobs}
        assert len(processes.log.pids("delivered")) == 2, (
            "one process took every job: the other leased none while the first held its leases"
        )
        assert (await queue.counts()).pending == 0
