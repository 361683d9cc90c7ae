"""Capability.ATTEMPTS: every attempt of a job is recorded, through the worker.

Run by :class:`~lexigram.tasks.testing.WorkerContract` where the backend
declares ``ATTEMPTS`` (and ``INSPECT``, to read the job back).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from lexigram.tasks.control import (
    MAX_ATTEMPTS_KEPT,
    MAX_TRACEBACK_CHARS,
    AttemptOutcome,
    JobInfo,
    JobState,
)
from lexigram.tasks.handle import JobHandle
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Capability, QueueCounts, TaskQueueProtocol
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.testing._base import requires
from lexigram.tasks.testing._helpers import eventually
from lexigram.tasks.testing._processes import WorkerProcesses
from lexigram.tasks.testing._worker import EMPTY, WorkerHost, settled


async def _status_when(
    handle: JobHandle[Any], check: Callable[[JobInfo], bool], timeout: float = 30.0
) -> JobInfo:
    """The job's status once it passes ``check``."""
    return await _info_when(handle.status, check, timeout)


async def _info_when(
    read: Callable[[], Awaitable[JobInfo | None]],
    check: Callable[[JobInfo], bool],
    timeout: float = 30.0,
) -> JobInfo:
    """What ``read()`` returns once it passes ``check``."""
    found: list[JobInfo] = []

    async def passes() -> bool:
        info = await read()
        if info is not None and check(info):
            found.append(info)
        return bool(found)

    try:
        await eventually(passes, timeout)
    except AssertionError:
        raise AssertionError(f"not reached; the job is now: {await read()}") from None
    return found[0]


async def _finished(handle: JobHandle[Any], timeout: float = 30.0) -> JobInfo:
    """The job's status once it has finished."""
    return await _status_when(handle, lambda info: info.state.finished, timeout)


class AttemptsContract(WorkerHost):
    """Each attempt's number, worker, times, outcome and error (Capability.ATTEMPTS).

    Jobs that fail for good are read back after they end; a job that
    succeeds only where the backend keeps finished jobs (``keeps_finished_jobs``).
    """

    @pytest.mark.asyncio
    @requires(Capability.ATTEMPTS, Capability.INSPECT)
    async def test_a_job_failing_twice_then_succeeding_shows_three_attempts(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        release = asyncio.Event()
        calls: list[int] = []
        began = time.time()
        async with self.worker(queue_name) as provider:

            @provider.task(name="flaky_twice", max_retries=3, retry_backoff=0.01)
            async def flaky_twice() -> str:
                calls.append(1)
                if len(calls) < 3:
                    raise ValueError(f"boom {len(calls)}")
                await release.wait()
                return "ok"

            await provider.start()
            handle = await flaky_twice.enqueue()
            await eventually(lambda: len(calls) == 3, 20, message="no third attempt")
            # The running attempt's worker comes from the live-worker list (as fresh
            # as registry_interval): wait for it.
            running = await _status_when(
                handle, lambda i: i.attempts[-1:] != [] and bool(i.attempts[-1].worker_id)
            )
            assert [a.outcome for a in running.attempts] == [
                AttemptOutcome.RETRYING,
                AttemptOutcome.RETRYING,
                AttemptOutcome.RUNNING,
            ]
            assert [a.worker_id for a in running.attempts] == [provider.worker_id] * 3
            release.set()
            if not self.keeps_finished_jobs:  # the rest is about the finished job
                return
            info = await _finished(handle)
            await settled(queue, EMPTY)
            worker_id = provider.worker_id
        assert info.state is JobState.SUCCEEDED
        first, second, third = info.attempts
        assert [a.number for a in info.attempts] == [1, 2, 3]
        assert [a.outcome for a in info.attempts] == [
            AttemptOutcome.RETRYING,
            AttemptOutcome.RETRYING,
            AttemptOutcome.COMPLETED,
        ]
        assert [a.worker_id for a in info.attempts] == [worker_id] * 3
        assert info.worker_id == worker_id
        for n, failed in enumerate((first, second), start=1):
            assert failed.error is not None
            assert (failed.error.type, failed.error.message) == ("ValueError", f"boom {n}")
            assert failed.error.traceback is not None
            assert 'raise ValueError(f"boom {len(calls)}")' in failed.error.traceback
            assert failed.will_retry
        assert third.error is None
        for attempt in info.attempts:
            assert attempt.started_at is not None
            assert attempt.ended_at is not None
            assert began - 1 <= attempt.started_at <= attempt.ended_at <= time.time() + 1
        assert first.ended_at is not None
        assert second.started_at is not None
        assert first.ended_at <= second.started_at + 0.5  # attempts in order (clock skew)

    @pytest.mark.asyncio
    @requires(Capability.ATTEMPTS, Capability.INSPECT)
    async def test_a_timed_out_last_attempt_is_recorded_as_timed_out(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        async with self.worker(queue_name) as provider:

            @provider.task(name="too_slow", timeout=0.2, max_retries=1, retry_backoff=0.01)
            async def too_slow() -> None:
                await asyncio.sleep(30)

            await provider.start()
            handle = await too_slow.enqueue()
            info = await _finished(handle)
            await settled(queue, QueueCounts(ready=0, delayed=0, running=0, failed=1))
        assert info.state is JobState.FAILED
        assert [(a.outcome, a.will_retry) for a in info.attempts] == [
            (AttemptOutcome.TIMED_OUT, True),
            (AttemptOutcome.TIMED_OUT, False),
        ]
        last = info.attempts[-1]
        assert last.error is not None
        assert last.error.type == "TaskTimeoutError"
        assert last.duration is not None
        assert last.duration >= 0.15

    @pytest.mark.asyncio
    @requires(Capability.ATTEMPTS, Capability.INSPECT)
    async def test_the_history_keeps_the_last_attempts_with_bounded_tracebacks(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        runs = MAX_ATTEMPTS_KEPT + 2
        async with self.worker(queue_name) as provider:

            @provider.task(
                name="always_fails",
                max_retries=runs - 1,
                retry_backoff=0.001,
                retry_backoff_max=0.01,
            )
            async def always_fails() -> None:
                def deep(n: int) -> None:  # a traceback far longer than what is kept
                    if n:
                        deep(n - 1)
                    raise RuntimeError("y" * 1200)

                deep(60)

            await provider.start()
            handle = await always_fails.enqueue()
            info = await _finished(handle, timeout=60)
        assert info.state is JobState.FAILED
        assert [a.number for a in info.attempts] == list(range(3, runs + 1))
        assert [a.outcome for a in info.attempts] == [AttemptOutcome.RETRYING] * (
            MAX_ATTEMPTS_KEPT - 1
        ) + [AttemptOutcome.FAILED]
        for attempt in info.attempts:
            assert attempt.error is not None
            assert attempt.error.traceback is not None
            assert len(attempt.error.traceback) <= MAX_TRACEBACK_CHARS + 100
            assert attempt.error.traceback.rstrip().endswith("yyy")  # the end is kept
            assert len(attempt.error.message) <= 1000

    @pytest.mark.asyncio
    @requires(Capability.ATTEMPTS, Capability.INSPECT)
    async def test_an_attempt_lost_with_its_killed_worker_shows_lease_lost(
        self, queue: TaskQueueProtocol, processes: WorkerProcesses
    ) -> None:
        """The killed worker never reports its attempt: it shows as ``lease_lost``,
        without a worker; the next attempt, on another worker, ``completed``."""
        if not self.keeps_finished_jobs:
            pytest.skip("this backend forgets a job once it succeeds")
        lease = 3.0
        job = Job(task="hang_once", args=["lost-attempt"], queue=queue.queue_name, max_retries=0)
        await queue.enqueue(job)
        first = processes.start(worker_count=2, lease_seconds=lease)
        await eventually(lambda: processes.log.count("start")["lost-attempt"], 30, message="start")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = processes.start(worker_count=2, lease_seconds=lease)
        provider = TaskProvider(queue=queue, strict=False)
        info = await _info_when(
            lambda: provider.get_job(job.id), lambda i: i.state is JobState.SUCCEEDED, lease + 30
        )
        await processes.stop(second)
        assert [(a.number, a.outcome) for a in info.attempts] == [
            (1, AttemptOutcome.LEASE_LOST),
            (2, AttemptOutcome.COMPLETED),
        ]
        lost, completed = info.attempts
        assert lost.worker_id is None
        assert completed.worker_id is not None
        assert completed.worker_id == info.worker_id
