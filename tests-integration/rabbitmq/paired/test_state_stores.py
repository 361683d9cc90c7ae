"""The job state stores RabbitMQ pairs with, tested directly on the real servers:
state moves, tombstones, cursor listing without gaps or duplicates, TTL purge, workers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from lexigram.tasks.control import CancelOutcome, JobError, JobState, Progress, WorkerInfo
from lexigram.tasks.job import Job
from lexigram.tasks.state_store import JobStateStore, Leased, Settled, create_state_store
from lexigram.tasks.testing import eventually

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture(params=["redis", "postgres"])
async def store(request: pytest.FixtureRequest, store_specs: Any) -> AsyncIterator[JobStateStore]:
    opened = create_state_store(store_specs(request.param, finished_ttl=1.0))
    await opened.connect()
    try:
        yield opened
    finally:
        await opened.disconnect()


@pytest.fixture
def queue() -> str:
    return f"lxstate-{uuid.uuid4().hex[:10]}"


def job(queue: str, **fields: object) -> Job:
    return Job(task=str(fields.pop("task", "t.work")), queue=queue, **fields)  # type: ignore[arg-type]


def leased(item: Job, attempt: int = 1) -> Leased:
    return Leased(item, attempt, time.time() + 60)


async def state(store: JobStateStore, job_id: str) -> JobState:
    info = await store.get_job(job_id)
    assert info is not None
    return info.state


async def test_a_jobs_life(store: JobStateStore, queue: str) -> None:
    first = job(queue, args=[1, "a"], kwargs={"k": [2]}, max_retries=2)
    later = job(queue, run_at=time.time() + 300)
    await store.record_enqueued([first, later])
    info = await store.get_job(first.id)
    assert info is not None
    assert (info.state, info.args, info.kwargs, info.max_attempts) == (
        JobState.QUEUED,
        [1, "a"],
        {"k": [2]},
        3,
    )
    assert await state(store, later.id) is JobState.SCHEDULED
    assert await store.record_leased([leased(first)]) == set()
    info = await store.get_job(first.id)
    assert info is not None
    assert (info.state, info.attempt) == (JobState.RUNNING, 1)
    await store.record_progress(first.id, Progress(0.5, "half", {"rows": 3}))
    await store.record_progress(first.id, Progress(meta={"file": "x"}))
    boom = JobError("ValueError", "boom")
    await store.record_settled([Settled(first.id, JobState.RETRYING, boom, time.time() + 5, 1)])
    info = await store.get_job(first.id)
    assert info is not None
    assert (info.state, info.error, info.progress, info.progress_message) == (
        JobState.RETRYING,
        boom,
        0.5,
        "half",
    )
    assert dict(info.meta) == {"rows": 3, "file": "x"}
    await store.record_leased([leased(first, 2)])
    await store.record_settled([Settled(first.id, JobState.SUCCEEDED, attempt=2)])
    info = await store.get_job(first.id)
    assert info is not None
    assert (info.state, info.attempt, info.error) == (JobState.SUCCEEDED, 2, boom)
    assert info.finished_at is not None
    assert await store.cancel(first.id) is CancelOutcome.FINISHED
    assert await store.get_job("nobody") is None
    assert await store.cancel("nobody") is CancelOutcome.NOT_FOUND


async def test_tombstones_and_requested_cancellations(store: JobStateStore, queue: str) -> None:
    pending, running, kept = job(queue), job(queue), job(queue)
    await store.record_enqueued([pending, running, kept])
    await store.record_leased([leased(running)])
    assert await store.cancel(pending.id) is CancelOutcome.CANCELLED
    assert await store.cancel(running.id) is CancelOutcome.REQUESTED
    assert await store.cancel_requested([running.id, kept.id, pending.id]) == {running.id}
    info = await store.get_job(running.id)
    assert info is not None
    assert (info.state, info.cancel_requested) == (JobState.RUNNING, True)
    # Its worker died; the broker delivers both again: neither runs.
    again = [leased(pending), leased(running, 2), leased(kept)]
    assert await store.record_leased(again) == {pending.id, running.id}
    assert await state(store, pending.id) is JobState.CANCELLED
    assert await state(store, running.id) is JobState.CANCELLED
    assert await state(store, kept.id) is JobState.RUNNING


async def test_a_handed_back_cancelled_job_is_dropped_at_its_next_lease(
    store: JobStateStore, queue: str
) -> None:
    item = job(queue)
    await store.record_enqueued([item])
    await store.record_leased([leased(item)])
    await store.cancel(item.id)
    await store.record_settled([Settled(item.id, JobState.QUEUED, attempt=0)])
    assert await store.record_leased([leased(item)]) == {item.id}
    assert await state(store, item.id) is JobState.CANCELLED


async def test_a_foreign_job_gets_a_record_when_leased(store: JobStateStore, queue: str) -> None:
    foreign = job(queue, task="t.foreign")
    assert await store.record_leased([leased(foreign)]) == set()
    info = await store.get_job(foreign.id)
    assert info is not None
    assert (info.state, info.task, info.queue) == (JobState.RUNNING, "t.foreign", queue)


async def test_a_lapsed_lease_reads_queued(store: JobStateStore, queue: str) -> None:
    item = job(queue)
    await store.record_enqueued([item])
    await store.record_leased([Leased(item, 1, time.time() + 0.3)])
    assert await state(store, item.id) is JobState.RUNNING
    await store.extend_leases([item.id], time.time() + 0.6)
    await asyncio.sleep(0.1)
    assert await state(store, item.id) is JobState.RUNNING

    async def queued() -> bool:
        return await state(store, item.id) is JobState.QUEUED

    await eventually(queued, 10)


async def test_cursor_pages_have_no_gaps_or_duplicates(store: JobStateStore, queue: str) -> None:
    jobs = [job(queue, task="t.a" if n % 3 else "t.b", args=[n]) for n in range(45)]
    await store.record_enqueued(jobs)
    await store.record_leased([leased(j) for j in jobs[:10]])
    others = [job(f"{queue}-other") for _ in range(5)]
    await store.record_enqueued(others)

    async def walk(**filters: object) -> list[str]:
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page = await store.list_jobs(queue, limit=4, cursor=cursor, **filters)  # type: ignore[arg-type]
            assert len(page.jobs) <= 4
            seen += [info.id for info in page.jobs]
            if page.cursor is None:
                return seen
            cursor = page.cursor
            await store.record_enqueued([job(queue, args=["late"])])  # producers go on

    everything = await walk()
    assert len(everything) == len(set(everything))
    assert everything[:45] == [j.id for j in jobs], "not in enqueue order, or a gap"
    assert not {o.id for o in others} & set(everything)
    queued = await walk(state=JobState.QUEUED)
    assert len(queued) == len(set(queued))
    assert [j.id for j in jobs[10:]] == queued[:35]
    assert await walk(state=JobState.RUNNING) == [j.id for j in jobs[:10]]
    assert await walk(task="t.b") == [j.id for j in jobs if j.task == "t.b"]
    running_b = await walk(task="t.b", state=JobState.RUNNING)
    assert running_b == [j.id for j in jobs[:10] if j.task == "t.b"]


async def test_finished_records_are_purged_after_their_ttl(
    store: JobStateStore, queue: str
) -> None:
    done, waiting = job(queue), job(queue)
    await store.record_enqueued([done, waiting])
    await store.record_leased([leased(done)])
    await store.record_settled([Settled(done.id, JobState.SUCCEEDED)])

    async def purged() -> bool:
        await store.purge_finished()
        return await store.get_job(done.id) is None

    await eventually(purged, 15, message="the finished record was not purged")
    assert await state(store, waiting.id) is JobState.QUEUED
    page = await store.list_jobs(queue)
    assert [info.id for info in page.jobs] == [waiting.id]


async def test_a_failed_publish_is_forgotten(store: JobStateStore, queue: str) -> None:
    item = job(queue)
    await store.record_enqueued([item])
    await store.forget([item.id])
    assert await store.get_job(item.id) is None
    assert (await store.list_jobs(queue)).jobs == []


async def test_workers_register_refresh_and_expire(store: JobStateStore, queue: str) -> None:
    now = time.time()
    info = WorkerInfo("w-1", "host", 1, "0", ["rabbitmq"], 4, now, now, ["j"], 2, 1)
    short = WorkerInfo("w-2", "host", 2, "0", ["rabbitmq"], 1, now, now)
    await store.register_worker(queue, info, 60)
    await store.register_worker(queue, short, 0.5)
    assert {w.id for w in await store.list_workers(queue)} == {"w-1", "w-2"}
    assert await store.list_workers(f"{queue}-other") == []

    async def expired() -> bool:
        return {w.id for w in await store.list_workers(queue)} == {"w-1"}

    await eventually(expired, 10)
    [listed] = await store.list_workers(queue)
    assert listed.to_dict() == info.to_dict()
    await store.deregister_worker(queue, "w-1")
    assert await store.list_workers(queue) == []
