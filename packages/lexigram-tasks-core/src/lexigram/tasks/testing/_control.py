"""Capability.INSPECT: job states through a job's life, details, listing and progress."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

import pytest

from lexigram.tasks.control import JobControlProtocol, JobError, JobInfo, JobState, Progress
from lexigram.tasks.protocol import Capability, Delivery, TaskQueueProtocol
from lexigram.tasks.testing._base import ContractBase, requires
from lexigram.tasks.testing._helpers import collect, eventually, make_job

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
BOOM = JobError("ValueError", "boom")


def control(queue: TaskQueueProtocol) -> JobControlProtocol:
    """``queue`` seen through the job-control methods it declares."""
    return cast(JobControlProtocol, queue)


async def job_info(queue: TaskQueueProtocol, job_id: str) -> JobInfo:
    """``get_job(job_id)``, failing the test if the backend does not know the id."""
    info = await control(queue).get_job(job_id)
    assert info is not None, f"get_job({job_id!r}) is None for a job of this queue"
    return info


async def info_when(
    queue: TaskQueueProtocol,
    job_id: str,
    check: Callable[[JobInfo], bool],
    timeout: float = 10.0,
    message: str = "",
) -> JobInfo:
    """Wait until the job's info passes ``check``; return that info."""
    found: list[JobInfo] = []

    async def passes() -> bool:
        info = await control(queue).get_job(job_id)
        if info is not None and check(info):
            found.append(info)
        return bool(found)

    try:
        await eventually(passes, timeout)
    except AssertionError:
        last = await control(queue).get_job(job_id)
        raise AssertionError(f"{message or 'condition not met'}; job {job_id}: {last}") from None
    return found[0]


async def state_becomes(
    queue: TaskQueueProtocol, job_id: str, state: JobState, timeout: float = 10.0
) -> JobInfo:
    """Wait until the job is in ``state``; return its info."""
    return await info_when(
        queue, job_id, lambda info: info.state is state, timeout, f"not {state.value}"
    )


def settle_as(delivery: Delivery, outcome: JobState | None, error: JobError | None = None) -> None:
    """Mark how the job ended, as the worker does before ack or nack."""
    delivery.outcome = outcome
    delivery.error = error


class InspectContract(ContractBase):
    """``get_job``, ``list_jobs`` and ``record_progress`` (Capability.INSPECT)."""

    @pytest.mark.asyncio
    @requires(Capability.INSPECT)
    async def test_get_job_of_an_unknown_id_is_none(self, queue: TaskQueueProtocol) -> None:
        assert await control(queue).get_job("job-never-enqueued-here") is None

    @pytest.mark.asyncio
    @requires(Capability.INSPECT)
    async def test_an_enqueued_job_is_queued_with_its_details(
        self, queue: TaskQueueProtocol
    ) -> None:
        priority = 4 if Capability.PRIORITY in queue.capabilities else 0
        job = make_job(
            queue,
            task="contract.details",
            args=[1, "two", [3]],
            kwargs={"k": {"nested": True}},
            max_retries=3,
            priority=priority,
            headers={"traceparent": TRACEPARENT},
        )
        await queue.enqueue(job)
        info = await job_info(queue, job.id)
        assert (info.id, info.queue, info.task, info.state) == (
            job.id,
            queue.queue_name,
            "contract.details",
            JobState.QUEUED,
        )
        assert (info.args, info.kwargs) == ([1, "two", [3]], {"k": {"nested": True}})
        assert (info.attempt, info.max_attempts, info.priority) == (0, 4, priority)
        assert info.enqueued_at == pytest.approx(job.enqueued_at, abs=1.0)
        assert (info.started_at, info.finished_at, info.error) == (None, None, None)
        assert info.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert not info.cancel_requested
        plain = make_job(queue)
        await queue.enqueue(plain)
        assert (await job_info(queue, plain.id)).trace_id is None

    @pytest.mark.asyncio
    @requires(Capability.INSPECT, Capability.DELAY)
    async def test_a_delayed_job_is_scheduled(self, queue: TaskQueueProtocol) -> None:
        run_at = time.time() + 300
        job = make_job(queue, run_at=run_at)
        await queue.enqueue(job)
        info = await job_info(queue, job.id)
        assert info.state is JobState.SCHEDULED
        assert info.run_at == pytest.approx(run_at, abs=1e-3)

    @pytest.mark.asyncio
    @requires(Capability.INSPECT)
    async def test_a_leased_job_is_running(self, queue: TaskQueueProtocol) -> None:
        job = make_job(queue)
        await queue.enqueue(job)
        leased_at = time.time()
        await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        info = await job_info(queue, job.id)
        assert (info.state, info.attempt) == (JobState.RUNNING, 1)
        assert info.started_at is not None
        assert info.started_at == pytest.approx(leased_at, abs=5.0)
        assert info.finished_at is None

    @pytest.mark.asyncio
    @requires(Capability.INSPECT)
    @pytest.mark.parametrize(
        ("outcome", "error"),
        [
            (JobState.SUCCEEDED, None),
            (JobState.CANCELLED, None),
            (JobState.FAILED, BOOM),
            (JobState.DEAD, JobError("LeaseExpired", "gave up after 3 attempt(s)")),
        ],
        ids=["succeeded", "cancelled", "failed", "dead"],
    )
    async def test_ack_records_how_the_job_ended(
        self, queue: TaskQueueProtocol, outcome: JobState, error: JobError | None
    ) -> None:
        if not self.keeps_finished_jobs:
            pytest.skip(f"{type(self).__name__}: finished jobs are not kept")
        job = make_job(queue)
        await queue.enqueue(job)
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        settle_as(delivery, outcome, error)
        await queue.ack(delivery)
        info = await state_becomes(queue, job.id, outcome)
        assert info.error == error
        assert info.finished_at is not None
        assert info.started_at is not None
        assert info.finished_at >= info.started_at - self.clock_tolerance
        assert info.attempt == 1

    @pytest.mark.asyncio
    @requires(Capability.INSPECT)
    async def test_nack_for_a_retry_is_retrying_with_the_error(
        self, queue: TaskQueueProtocol
    ) -> None:
        job = make_job(queue, max_retries=2)
        await queue.enqueue(job)
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        settle_as(delivery, JobState.RETRYING, BOOM)
        await queue.nack(delivery, requeue=True, reason="ValueError: boom")
        info = await job_info(queue, job.id)
        assert (info.state, info.error, info.attempt) == (JobState.RETRYING, BOOM, 1)
        [again] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        info = await job_info(queue, job.id)
        assert (info.state, info.attempt, info.error) == (JobState.RUNNING, 2, BOOM)
        settle_as(again, JobState.SUCCEEDED)
        await queue.ack(again)
        if self.keeps_finished_jobs:
            await state_becomes(queue, job.id, JobState.SUCCEEDED)

    @pytest.mark.asyncio
    @requires(Capability.INSPECT, Capability.DELAY)
    async def test_nack_for_a_delayed_retry_says_when(self, queue: TaskQueueProtocol) -> None:
        job = make_job(queue, max_retries=2)
        await queue.enqueue(job)
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        settle_as(delivery, JobState.RETRYING, BOOM)
        nacked_at = time.time()
        await queue.nack(delivery, requeue=True, delay=300, reason="ValueError: boom")
        info = await job_info(queue, job.id)
        assert (info.state, info.error) == (JobState.RETRYING, BOOM)
        assert info.run_at is not None
        assert info.run_at == pytest.approx(nacked_at + 300, abs=5.0)

    @pytest.mark.asyncio
    @requires(Capability.INSPECT)
    async def test_a_job_handed_back_is_queued(self, queue: TaskQueueProtocol) -> None:
        job = make_job(queue)
        await queue.enqueue(job)
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        assert delivery.job is not None
        delivery.job.attempt -= 1  # handed back without using an attempt, as at shutdown
        settle_as(delivery, None)
        await queue.nack(delivery, requeue=True, reason="shutdown")
        info = await job_info(queue, job.id)
        assert (info.state, info.error) == (JobState.QUEUED, None)

    @pytest.mark.asyncio
    @requires(Capability.INSPECT)
    @pytest.mark.parametrize("outcome", [JobState.FAILED, JobState.DEAD], ids=["failed", "dead"])
    async def test_nack_to_the_dead_letters_records_it(
        self, queue: TaskQueueProtocol, outcome: JobState
    ) -> None:
        if not self.keeps_finished_jobs:
            pytest.skip(f"{type(self).__name__}: finished jobs are not kept")
        job = make_job(queue)
        await queue.enqueue(job)
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        settle_as(delivery, outcome, BOOM)
        await queue.nack(delivery, requeue=False, reason="ValueError: boom")
        info = await state_becomes(queue, job.id, outcome)
        assert info.error == BOOM
        assert info.finished_at is not None

    @pytest.mark.asyncio
    @requires(Capability.INSPECT)
    async def test_list_jobs_by_state(self, queue: TaskQueueProtocol) -> None:
        jobs = [make_job(queue, args=[n]) for n in range(5)]
        await queue.enqueue_many(jobs)
        deliveries = await collect(queue, 2, lease_seconds=self.lease_seconds * 10)
        settle_as(deliveries[0], JobState.SUCCEEDED)
        await queue.ack(deliveries[0])
        running = {deliveries[1].job_id}
        done = {deliveries[0].job_id}
        queued = {job.id for job in jobs} - running - done

        async def listed(state: JobState) -> set[str]:
            page = await control(queue).list_jobs(state=state, limit=100)
            assert all(info.state is state for info in page.jobs), page
            return {info.id for info in page.jobs}

        assert await listed(JobState.QUEUED) == queued
        assert await listed(JobState.RUNNING) == running
        if self.keeps_finished_jobs:

            async def succeeded() -> bool:
                return await listed(JobState.SUCCEEDED) == done

            await eventually(succeeded, 10, message="the finished job is not listed")
        assert await listed(JobState.FAILED) == set()

    @pytest.mark.asyncio
    @requires(Capability.INSPECT)
    async def test_list_jobs_by_task(self, queue: TaskQueueProtocol) -> None:
        mails = [make_job(queue, task="contract.mail") for _ in range(3)]
        other = [make_job(queue, task="contract.other") for _ in range(2)]
        await queue.enqueue_many([*mails, *other])
        page = await control(queue).list_jobs(task="contract.mail")
        assert {info.id for info in page.jobs} == {job.id for job in mails}
        assert all(info.task == "contract.mail" for info in page.jobs)
        both = await control(queue).list_jobs(task="contract.other", state=JobState.QUEUED)
        assert {info.id for info in both.jobs} == {job.id for job in other}
        assert (await control(queue).list_jobs(task="contract.nobody")).jobs == []

    @pytest.mark.asyncio
    @requires(Capability.INSPECT)
    async def test_pages_have_no_duplicates_and_no_gaps_while_jobs_are_added(
        self, queue: TaskQueueProtocol
    ) -> None:
        limit = 7
        first = [make_job(queue, args=[n]) for n in range(30)]
        await queue.enqueue_many(first)
        added = []
        seen: list[str] = []
        cursor: str | None = None
        for pages in range(1, 100):
            page = await control(queue).list_jobs(state=JobState.QUEUED, limit=limit, cursor=cursor)
            assert len(page.jobs) <= limit
            assert all(info.queue == queue.queue_name for info in page.jobs)
            seen += [info.id for info in page.jobs]
            if pages <= 3:  # producers go on enqueueing while someone pages
                more = [make_job(queue, args=["late"]) for _ in range(3)]
                await queue.enqueue_many(more)
                added += more
            cursor = page.cursor
            if cursor is None:
                break
        assert len(seen) == len(set(seen)), "a job was listed twice"
        assert {job.id for job in first} <= set(seen), "a job was skipped"
        assert set(seen) <= {job.id for job in [*first, *added]}
        assert pages >= 30 // limit, "pages were larger than the limit"

    @pytest.mark.asyncio
    @requires(Capability.INSPECT)
    async def test_unfiltered_listing_pages_through_every_state(
        self, queue: TaskQueueProtocol
    ) -> None:
        jobs = [make_job(queue) for _ in range(12)]
        await queue.enqueue_many(jobs)
        await collect(queue, 4, lease_seconds=self.lease_seconds * 10)
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page = await control(queue).list_jobs(limit=5, cursor=cursor)
            seen += [info.id for info in page.jobs]
            if page.cursor is None:
                break
            cursor = page.cursor
        assert sorted(seen) == sorted(job.id for job in jobs)

    @pytest.mark.asyncio
    @requires(Capability.INSPECT)
    async def test_progress_and_meta_are_visible(self, queue: TaskQueueProtocol) -> None:
        job = make_job(queue)
        await queue.enqueue(job)
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        jobs = control(queue)
        await jobs.record_progress(delivery, Progress(0.25, "a quarter", {"rows": 10}))
        await jobs.record_progress(delivery, Progress(meta={"file": "a.csv"}))

        info = await info_when(
            queue, job.id, lambda i: "file" in i.meta, message="progress never became visible"
        )
        assert (info.progress, info.progress_message) == (0.25, "a quarter")
        assert dict(info.meta) == {"rows": 10, "file": "a.csv"}
        await jobs.record_progress(delivery, Progress(0.5, "half", {"rows": 20}))
        info = await info_when(
            queue, job.id, lambda i: i.progress == 0.5, message="the second report never came"
        )
        assert info.progress_message == "half"
        assert dict(info.meta) == {"rows": 20, "file": "a.csv"}
