"""Concurrent consumers: every job is delivered exactly once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from lexigram.tasks.protocol import TaskQueueProtocol
from lexigram.tasks.testing._base import ContractBase
from lexigram.tasks.testing._helpers import make_job

JOB_COUNT = 2000
CONSUMER_COUNT = 4
_DRAIN_TIMEOUT = 90.0


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
