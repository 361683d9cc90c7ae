"""WorkerPool's slots and deadline sweeper, on the memory backend: jobs run on
long-lived worker coroutines, and one timer enforces every job's timeout."""

from __future__ import annotations

import asyncio

import pytest

from lexigram.tasks import MemoryResultStore, MemoryTaskQueue, TaskFailedError, TaskProvider
from lexigram.tasks.testing import eventually


async def test_jobs_run_on_as_many_coroutines_as_there_are_slots() -> None:
    provider = TaskProvider(
        queue=MemoryTaskQueue(), result_store=MemoryResultStore(), worker_count=2
    )
    runners: set[asyncio.Task[object]] = set()

    @provider.task(name="note")
    async def note() -> None:
        task = asyncio.current_task()
        assert task is not None
        runners.add(task)
        await asyncio.sleep(0)

    async with provider:
        handles = [await note.enqueue() for _ in range(20)]
        for handle in handles:
            await handle.result(timeout=10)
    assert 1 <= len(runners) <= 2


async def test_each_job_times_out_at_its_own_deadline() -> None:
    # The sweeper is set for the first job's far deadline; the second job's nearer
    # one must move it, and the sweep must leave the first job alone.
    provider = TaskProvider(
        queue=MemoryTaskQueue(), result_store=MemoryResultStore(), worker_count=2
    )
    release, started = asyncio.Event(), asyncio.Event()
    cancelled: list[str] = []

    @provider.task(name="patient", timeout=60)
    async def patient() -> str:
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.append("patient")
            raise
        return "done"

    @provider.task(name="hasty", timeout=0.2)
    async def hasty() -> None:
        await asyncio.sleep(60)

    async with provider:
        long_job = await patient.enqueue()
        await asyncio.wait_for(started.wait(), 5)
        short_job = await hasty.enqueue()
        with pytest.raises(TaskFailedError) as info:
            await short_job.result(timeout=5)  # long before the first job's 60 s
        assert info.value.error_type == "TaskTimeoutError"
        assert "timeout of 0.2s" in info.value.error_message
        assert cancelled == []
        release.set()
        assert await long_job.result(timeout=5) == "done"


async def test_a_handler_that_swallows_its_timeout_keeps_its_result_and_the_slot_is_clean() -> None:
    # As with asyncio.timeout: a handler that catches the cancellation and returns
    # has its result kept. The slot's task must not carry the cancellation on.
    provider = TaskProvider(
        queue=MemoryTaskQueue(), result_store=MemoryResultStore(), worker_count=1
    )
    cancelling: list[int] = []

    @provider.task(name="stubborn", timeout=0.2)
    async def stubborn() -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            return "late"
        return "on time"

    @provider.task(name="next_one", timeout=0.2)
    async def next_one() -> None:
        task = asyncio.current_task()
        assert task is not None
        cancelling.append(task.cancelling())
        await asyncio.sleep(60)

    async with provider:
        assert await (await stubborn.enqueue()).result(timeout=5) == "late"
        with pytest.raises(TaskFailedError) as info:
            await (await next_one.enqueue()).result(timeout=5)
    assert info.value.error_type == "TaskTimeoutError"
    assert cancelling == [0]


async def test_timeouts_of_many_jobs_in_a_row_all_fire() -> None:
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue, worker_count=3)
    timed_out: list[int] = []

    @provider.task(name="hangs", timeout=0.1)
    async def hangs(number: int) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            timed_out.append(number)
            raise

    async with provider:
        for number in range(9):
            await hangs.enqueue(number)
        await eventually(lambda: len(timed_out) == 9, timeout=10)

        async def all_dead_lettered() -> bool:
            return len(await queue.dead_letters()) == 9

        await eventually(all_dead_lettered, timeout=5)
    assert sorted(timed_out) == list(range(9))
