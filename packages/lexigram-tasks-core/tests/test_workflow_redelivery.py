"""Workflow steps whose worker died after recording their results and before their
acks are delivered again: they are acked without running again, and the callback
their recording claimed is sent once. The error handler too."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from lexigram.tasks import JobState, MemoryTaskQueue, TaskProvider, chain, chord, group
from lexigram.tasks.testing._helpers import eventually
from lexigram.tasks.workflows import StepOutcome, WorkflowFailedError, store_for
from lexigram.tasks.workflows._plan import Plan, build_step_job

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


@provider.task(name="redelivery.explode", max_retries=0)
async def explode(n: int) -> int:
    raise ValueError(f"no {n}")


@provider.task(name="redelivery.report")
async def report(failure: dict[str, object]) -> None:
    runs[f"report({failure['step']})"] += 1


async def test_an_error_handler_that_finished_is_not_run_again() -> None:
    runs.clear()
    async with provider:
        handle = await chain(double.s(1), explode.s()).on_error(report.s()).enqueue()
        with pytest.raises(WorkflowFailedError):
            await handle.result(timeout=10)
        handler_id = f"{handle.id}-2"
        await eventually(lambda: runs["report(1)"] == 1, 10, message="the error handler ran")

        async def settled() -> bool:
            info = await provider.get_job(handler_id)
            return info is not None and info.state is JobState.SUCCEEDED

        # Settled first: enqueueing an id still pending (ran, not yet acked) changes nothing.
        await eventually(settled, 10, message="the handler's job was settled")
        # Its job delivered again, as if its worker had died after recording it.
        store = store_for(queue)
        plan = Plan.from_json(await store.plan(handle.id) or "")
        again = build_step_job(plan, handle.id, plan.handler_index, {"step": 1}, [])
        again.attempt = 1
        await queue.enqueue(again)

        async def delivered_again() -> bool:
            info = await provider.get_job(handler_id)
            return info is not None and info.attempt == 2 and info.state is JobState.SUCCEEDED

        await eventually(delivered_again, 10, message="the handler's job was settled again")
        assert runs == Counter({"double(1)": 1, "report(1)": 1})
