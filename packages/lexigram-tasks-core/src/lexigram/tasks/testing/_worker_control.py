"""Job control through the worker: cancellation of running jobs, progress, lost workers,
the live-worker list. In the test process, then in ``worker_app`` processes."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from lexigram.tasks.control import CancelOutcome, JobInfo, JobState
from lexigram.tasks.current import current_job
from lexigram.tasks.errors import JobCancelledError
from lexigram.tasks.events import TaskDeadLetteredEvent, TaskRetryingEvent, TaskStartedEvent
from lexigram.tasks.handle import JobHandle
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Capability, TaskQueueProtocol
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.results import MemoryResultStore
from lexigram.tasks.testing._base import requires
from lexigram.tasks.testing._cancel import HEAR_WITHIN
from lexigram.tasks.testing._control import control, info_when, job_info, state_becomes
from lexigram.tasks.testing._helpers import eventually
from lexigram.tasks.testing._processes import WorkerProcesses
from lexigram.tasks.testing._worker import EMPTY, WorkerHost, settled


def _cancellable(queue: TaskQueueProtocol, key: str, seconds: float = 3600.0) -> Job:
    """A job of ``worker_app``'s ``cancellable`` task (3 retries: a cancel must not use them)."""
    return Job(task="cancellable", args=[key, seconds], queue=queue.queue_name, max_retries=3)


class WorkerControlContract(WorkerHost):
    """Cancellation, progress and the worker list, end to end through the worker."""

    @pytest.mark.asyncio
    @requires(Capability.CANCEL)
    async def test_a_cancelled_async_job_is_stopped_within_a_second(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        """``CancelledError`` inside the task within 1 s; the job ends cancelled, is
        not retried nor dead-lettered, and its result waiter gets JobCancelledError."""
        started = asyncio.Event()
        interrupted: list[float] = []
        starts: list[int] = []
        retried: list[object] = []
        async with self.worker(queue_name, result_store=MemoryResultStore()) as provider:

            @provider.task(name="long", max_retries=3)
            async def long() -> None:
                started.set()
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    interrupted.append(time.monotonic())
                    raise

            provider.events.subscribe(TaskStartedEvent, lambda e: starts.append(e.job.attempt))
            provider.events.subscribe(TaskRetryingEvent, retried.append)
            provider.events.subscribe(TaskDeadLetteredEvent, retried.append)
            await provider.start()
            handle = await long.enqueue()
            await asyncio.wait_for(started.wait(), 15)
            sent = time.monotonic()
            assert await provider.cancel(handle.id) is CancelOutcome.REQUESTED
            await eventually(lambda: interrupted, 10, message="the task was never cancelled")
            took = interrupted[0] - sent
            assert took < HEAR_WITHIN, f"CancelledError came {took:.3f} s after the cancel"
            with pytest.raises(JobCancelledError):
                await handle.result(timeout=10)
            await settled(queue, EMPTY)
            if Capability.INSPECT in queue.capabilities and self.keeps_finished_jobs:
                info = await info_when(
                    queue, handle.id, lambda i: i.state is JobState.CANCELLED, message="state"
                )
                assert info.attempt == 1
                assert await handle.cancel() is CancelOutcome.FINISHED
        assert starts == [1], "the cancelled job ran again"
        assert retried == []
        assert await queue.dead_letters() == []

    @pytest.mark.asyncio
    @requires(Capability.CANCEL)
    async def test_a_def_task_sees_cancel_requested_and_stops_itself(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        noticed: list[bool] = []
        async with self.worker(queue_name, result_store=MemoryResultStore()) as provider:

            @provider.task(name="polling", max_retries=2)
            def polling() -> None:
                job = current_job()
                deadline = time.monotonic() + 60
                while not job.cancel_requested and time.monotonic() < deadline:
                    time.sleep(0.01)
                noticed.append(job.cancel_requested)
                job.raise_if_cancelled()

            await provider.start()
            handle = await polling.enqueue()
            await _status_when(handle, lambda i: i.state is JobState.RUNNING)
            assert await handle.cancel() is CancelOutcome.REQUESTED
            with pytest.raises(JobCancelledError):
                await handle.result(timeout=30)
            await settled(queue, EMPTY)
        assert noticed == [True]
        assert await queue.dead_letters() == []

    @pytest.mark.asyncio
    @requires(Capability.INSPECT)
    async def test_progress_and_meta_show_in_status(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        release = asyncio.Event()
        async with self.worker(queue_name, progress_interval=0.05) as provider:

            @provider.task(name="reporting")
            async def reporting() -> None:
                job = current_job()
                for n in range(1, 1001):  # many reports: coalesced, the last one wins
                    await job.progress(n / 2000, f"row {n}")
                await job.set_meta({"file": "a.csv"})
                await release.wait()

            await provider.start()
            handle = await reporting.enqueue()
            info = await _status_when(handle, lambda i: i.progress == 0.5)
            assert info.state is JobState.RUNNING
            assert info.progress_message == "row 1000"
            info = await _status_when(handle, lambda i: "file" in i.meta)
            assert dict(info.meta) == {"file": "a.csv"}
            release.set()
            await settled(queue, EMPTY)
            if self.keeps_finished_jobs:
                info = await state_becomes(queue, handle.id, JobState.SUCCEEDED)
                assert info.progress == 0.5

    # -- worker processes ------------------------------------------------------------

    @pytest.mark.asyncio
    @requires(Capability.CANCEL)
    async def test_a_job_in_a_worker_process_is_cancelled_within_a_second(
        self, queue: TaskQueueProtocol, processes: WorkerProcesses
    ) -> None:
        worker = processes.start(worker_count=4)
        job = _cancellable(queue, "doomed")
        await queue.enqueue(job)
        await eventually(lambda: processes.log.count("start")["doomed"], 30, message="start")
        provider = TaskProvider(queue=queue, strict=False)
        sent = time.time()
        assert await provider.cancel(job.id) is CancelOutcome.REQUESTED
        await eventually(lambda: processes.log.count("cancelled")["doomed"], 10, message="never")
        [line] = [li for li in processes.log.lines() if li.event == "cancelled"]
        took = line.at - sent
        assert took < HEAR_WITHIN, f"CancelledError came {took:.3f} s after the cancel"
        await settled(queue, EMPTY)
        await processes.stop(worker)
        assert processes.log.count("start") == {"doomed": 1}
        assert await queue.dead_letters() == []

    @pytest.mark.asyncio
    @requires(Capability.INSPECT)
    async def test_a_killed_workers_job_is_running_until_its_lease_lapses_then_not_lost(
        self, queue: TaskQueueProtocol, processes: WorkerProcesses
    ) -> None:
        """Nobody can tell a dead worker from a slow one before its lease lapses: its
        job shows ``running``; then it is queued again and run by another worker."""
        lease = 3.0
        job = Job(task="hang_once", args=["lost"], queue=queue.queue_name, max_retries=0)
        await queue.enqueue(job)
        first = processes.start(worker_count=2, lease_seconds=lease)
        await eventually(lambda: processes.log.count("start")["lost"], 30, message="start")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        info = await job_info(queue, job.id)
        assert info.state is JobState.RUNNING, "a killed worker's job must show running"
        seen: set[JobState] = set()
        second = processes.start(worker_count=2, lease_seconds=lease)

        async def finished() -> bool:
            info = await control(queue).get_job(job.id)
            if info is None:  # forgotten once finished, where finished jobs are not kept
                assert not self.keeps_finished_jobs, "the job was lost"
                return processes.log.count("done")["lost"] == 1
            seen.add(info.state)
            return processes.log.count("done")["lost"] == 1 and info.state.finished

        await eventually(finished, lease + 30, interval=0.05, message="the job was lost")
        await processes.stop(second)
        if self.keeps_finished_jobs:
            assert (await job_info(queue, job.id)).state is JobState.SUCCEEDED
        assert seen <= {JobState.RUNNING, JobState.QUEUED, JobState.SUCCEEDED}, seen
        assert processes.log.count("start")["lost"] == 2

    @pytest.mark.asyncio
    @requires(Capability.CANCEL)
    async def test_cancelling_the_job_of_a_just_killed_worker_still_cancels_it(
        self, queue: TaskQueueProtocol, processes: WorkerProcesses
    ) -> None:
        lease = 2.0
        job = _cancellable(queue, "orphan")
        await queue.enqueue(job)
        first = processes.start(worker_count=2, lease_seconds=lease)
        await eventually(lambda: processes.log.count("start")["orphan"], 30, message="start")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        provider = TaskProvider(queue=queue, strict=False)
        assert await provider.cancel(job.id) in (CancelOutcome.REQUESTED, CancelOutcome.CANCELLED)
        second = processes.start(worker_count=2, lease_seconds=lease)
        await queue.enqueue(Job(task="record", args=["marker"], queue=queue.queue_name))
        await eventually(lambda: processes.log.count("done")["marker"], 30, message="marker")
        await settled(queue, EMPTY, timeout=lease + 30)
        if Capability.INSPECT in queue.capabilities and self.keeps_finished_jobs:
            await state_becomes(queue, job.id, JobState.CANCELLED, timeout=lease + 30)
        await processes.stop(second)
        assert processes.log.count("start")["orphan"] == 1, "the cancelled job ran again"
        assert await queue.dead_letters() == []

    @pytest.mark.asyncio
    @requires(Capability.WORKERS)
    async def test_workers_lists_a_live_process_and_forgets_a_killed_one(
        self, queue: TaskQueueProtocol, processes: WorkerProcesses
    ) -> None:
        interval = 0.5
        live = processes.start(worker_count=3, registry_interval=interval)
        doomed = processes.start(worker_count=2, registry_interval=interval)
        provider = TaskProvider(queue=queue, strict=False)

        async def pids() -> set[int]:
            return {w.pid for w in await provider.workers()}

        async def both_listed() -> bool:
            return {live.pid, doomed.pid} <= await pids()

        await eventually(both_listed, 30, message="the worker processes were not listed")
        [entry] = [w for w in await provider.workers() if w.pid == live.pid]
        assert entry.concurrency == 3
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)

        async def forgotten() -> bool:
            return doomed.pid not in await pids()

        await eventually(forgotten, interval * 3 + 15, message="a killed worker stayed listed")
        assert live.pid in await pids()
        await processes.stop(live)

        async def deregistered() -> bool:
            return live.pid not in await pids()

        await eventually(deregistered, 10, message="a stopped worker stayed listed")


async def _status_when(handle: JobHandle[Any], check: Callable[[JobInfo], bool]) -> JobInfo:
    """Wait until ``handle.status()`` passes ``check``; return that status."""
    found: list[JobInfo] = []

    async def passes() -> bool:
        info = await handle.status()
        if info is not None and check(info):
            found.append(info)
        return bool(found)

    await eventually(passes, 15, message="status() never showed it")
    return found[0]
