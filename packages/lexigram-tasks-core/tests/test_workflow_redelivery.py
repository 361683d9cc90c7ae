"""Workflow steps whose worker died after recording their results and before their
acks are delivered again: they are acked without running again, and the callback
their recording claimed is sent once."""

from __future__ import annotations

import asyncio
from collections import Counter

from lexigram.tasks import JobState, MemoryTaskQueue, TaskProvider, chord, group
from lexigram.tasks.workflows import StepOutcome, store_for

runs: Counter[str] = Counter()
queue = MemoryTaskQueue(queue_name="wf-redelivery")
provider = TaskProvider(queue=queue, worker_count=2, poll_interval=0.01)


@provider.task(name="redelivery.double")
async def double(n: int) -> int:
    runs[f"double({n})"] += 1
    return 2 * n


@provider.task(name="redelivery.total")
async def total(values: list[int]) -> int:
    runs[f"total({values})"] += 1
    return sum(values)


async def test_recorded_steps_delivered_again_do_not_run_again() -> None:
    await provider.connect()
    try:
        handle = await chord(group(double.s(1), double.s(2)), total.s()).enqueue()
        # A worker takes both steps, runs them and records their results, which
        # claims the callback; it dies before sending the callback and before its acks.
        taken = await queue.dequeue(max_jobs=2, lease_seconds=0.05)
        assert sorted(d.job.id for d in taken if d.job) == handle.job_ids[:2]
        outcomes = [StepOutcome(handle.id, i, str(2 * (i + 1)), (2,), "") for i in (0, 1)]
        claims = await store_for(queue).complete(outcomes)
        assert [(c.step, c.fresh) for c in claims] == [(2, True)]
        await asyncio.sleep(0.1)  # the dead worker's leases lapse
        await provider.start()
        assert await handle.result(timeout=10) == 6
        assert runs == Counter({"total([2, 4])": 1})  # neither step ran a second time
        for job_id in handle.job_ids[:2]:
            info = await provider.get_job(job_id)
            assert info is not None
            assert (info.state, info.attempt) == (JobState.SUCCEEDED, 2)
    finally:
        await provider.stop()
