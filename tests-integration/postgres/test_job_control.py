"""PostgresTaskQueue's job control: states in the row, listing, progress, cancellation, workers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from lexigram.tasks.control import (
    CancelOutcome,
    JobError,
    JobState,
    Progress,
    WorkerInfo,
)
from lexigram.tasks.job import Job
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres.migrate import quote_ident
from lexigram.tasks.protocol import Capability, Delivery
from lexigram.tasks.testing import collect, eventually


@pytest_asyncio.fixture(params=[0.0, 3600.0], ids=["delete-acked", "keep-finished"])
async def queue(
    request: pytest.FixtureRequest, postgres_dsn: str, pg_schema: str
) -> AsyncIterator[PostgresTaskQueue]:
    name = f"ctl_{uuid.uuid4().hex[:8]}"
    async with PostgresTaskQueue(
        postgres_dsn, name, schema=pg_schema, keep_finished=request.param
    ) as opened:
        yield opened


async def _one(queue: PostgresTaskQueue, **fields: object) -> tuple[Job, Delivery]:
    job = Job(task="t.run", queue=queue.queue_name, **fields)  # type: ignore[arg-type]
    await queue.enqueue(job)
    [delivery] = await collect(queue, 1, lease_seconds=30)
    return job, delivery


async def _state(queue: PostgresTaskQueue, job_id: str) -> JobState | None:
    info = await queue.get_job(job_id)
    return None if info is None else info.state


def test_the_queue_declares_the_control_capabilities() -> None:
    declared = PostgresTaskQueue.capabilities
    assert {Capability.INSPECT, Capability.CANCEL, Capability.WORKERS} <= declared


async def test_a_job_reads_queued_scheduled_then_running(queue: PostgresTaskQueue) -> None:
    job = Job(task="t.run", queue=queue.queue_name, args=[1], kwargs={"a": 2}, max_retries=3)
    job.headers["traceparent"] = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    await queue.enqueue(job)
    later = Job(task="t.later", queue=queue.queue_name, run_at=time.time() + 3600)
    await queue.enqueue(later)

    info = await queue.get_job(job.id)
    assert info is not None
    assert (info.state, info.task, info.args, info.kwargs) == (
        JobState.QUEUED,
        "t.run",
        [1],
        {"a": 2},
    )
    assert (info.attempt, info.max_attempts, info.queue) == (0, 4, queue.queue_name)
    assert info.trace_id == "ab" * 16
    assert info.enqueued_at is not None and info.started_at is None
    assert await _state(queue, later.id) is JobState.SCHEDULED
    assert await queue.get_job("no-such-job") is None

    [delivery] = await collect(queue, 1, lease_seconds=30)
    info = await queue.get_job(job.id)
    assert info is not None
    assert (info.state, info.attempt) == (JobState.RUNNING, 1)
    assert info.started_at is not None
    await queue.ack(delivery)


async def test_how_a_job_ended_is_recorded_on_the_ack_and_nack(queue: PostgresTaskQueue) -> None:
    kept = queue.keep_finished > 0
    job, delivery = await _one(queue)
    delivery.outcome = JobState.SUCCEEDED
    await queue.ack(delivery)
    assert await _state(queue, job.id) is (JobState.SUCCEEDED if kept else None)

    job, delivery = await _one(queue)
    delivery.outcome = JobState.RETRYING
    delivery.error = JobError("ValueError", "bad input")
    assert delivery.job is not None
    await queue.nack(delivery, requeue=True, delay=3600)
    info = await queue.get_job(job.id)
    assert info is not None
    assert info.state is JobState.RETRYING
    assert info.error == JobError("ValueError", "bad input")

    job, delivery = await _one(queue)
    delivery.outcome = JobState.FAILED
    delivery.error = JobError("KeyError", "'x'")
    await queue.nack(delivery, requeue=False, reason="retries exhausted")
    info = await queue.get_job(job.id)
    assert info is not None
    assert (info.state, info.error) == (JobState.FAILED, JobError("KeyError", "'x'"))
    assert info.finished_at is not None

    await queue.push_raw(b"not json")
    [bad] = await collect(queue, 1, lease_seconds=30)
    await queue.nack(bad, requeue=False, reason="not a job")
    failed = await queue.list_jobs(state=JobState.DEAD)
    assert [j.error for j in failed.jobs] == [JobError("", "not a job")]


async def test_a_job_handed_back_without_an_outcome_is_queued_again(
    queue: PostgresTaskQueue,
) -> None:
    job, delivery = await _one(queue)
    await queue.nack(delivery, requeue=True)
    info = await queue.get_job(job.id)
    assert info is not None and info.state is JobState.QUEUED


async def test_a_lapsed_lease_reads_queued_again(queue: PostgresTaskQueue) -> None:
    job = Job(task="t.run", queue=queue.queue_name)
    await queue.enqueue(job)
    await collect(queue, 1, lease_seconds=0.2)
    assert await _state(queue, job.id) is JobState.RUNNING
    await eventually(lambda: _is(queue, job.id, JobState.QUEUED), 10)
    page = await queue.list_jobs(state=JobState.QUEUED)
    assert [j.id for j in page.jobs] == [job.id]


async def _is(queue: PostgresTaskQueue, job_id: str, state: JobState) -> bool:
    return await _state(queue, job_id) is state


async def test_get_job_answers_with_the_newest_row_of_a_job_stored_twice(
    queue: PostgresTaskQueue, admin: asyncpg.Connection
) -> None:
    job = Job(task="t.run", queue=queue.queue_name)
    await queue.enqueue(job)
    _, delivery = await _one(queue)
    delivery.outcome = JobState.SUCCEEDED
    await queue.ack(delivery)
    await queue.enqueue(job)  # as an enqueue retried after a dropped connection does
    info = await queue.get_job(job.id)
    assert info is not None and info.state is JobState.QUEUED


async def test_listing_pages_through_each_state_with_a_cursor(queue: PostgresTaskQueue) -> None:
    low = [Job(task="t.a", queue=queue.queue_name) for _ in range(5)]
    high = [Job(task="t.b", queue=queue.queue_name, priority=5) for _ in range(3)]
    later = [Job(task="t.a", queue=queue.queue_name, run_at=time.time() + 3600) for _ in range(4)]
    await queue.enqueue_many(low)
    await queue.enqueue_many(high)
    await queue.enqueue_many(later)

    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await queue.list_jobs(state=JobState.QUEUED, limit=3, cursor=cursor)
        assert all(j.state is JobState.QUEUED for j in page.jobs)
        seen += [j.id for j in page.jobs]
        cursor = page.cursor
        if cursor is None:
            break
    # In the order they run: higher priority first, then first in first out.
    assert seen == [j.id for j in high + low]

    scheduled = await queue.list_jobs(state=JobState.SCHEDULED, limit=3)
    rest = await queue.list_jobs(state=JobState.SCHEDULED, limit=3, cursor=scheduled.cursor)
    assert [j.id for j in scheduled.jobs + rest.jobs] == [j.id for j in later]
    assert rest.cursor is None
    by_task = await queue.list_jobs(state=JobState.QUEUED, task="t.b")
    assert [j.id for j in by_task.jobs] == [j.id for j in high]
    everything = await queue.list_jobs(limit=100)
    assert len(everything.jobs) == 12
    first = await queue.list_jobs(limit=7)
    rest = await queue.list_jobs(limit=7, cursor=first.cursor)
    assert [j.id for j in first.jobs + rest.jobs] == [j.id for j in everything.jobs]
    assert rest.cursor is None
    assert (await queue.list_jobs(state=JobState.RUNNING)).jobs == []
    with pytest.raises(ValueError, match="not a cursor"):
        await queue.list_jobs(state=JobState.SCHEDULED, cursor=first.cursor)


async def test_listing_running_retrying_and_finished_jobs(queue: PostgresTaskQueue) -> None:
    jobs = [Job(task="t.a", queue=queue.queue_name) for _ in range(6)]
    await queue.enqueue_many(jobs)
    deliveries = await collect(queue, 6, lease_seconds=30)
    running = await queue.list_jobs(state=JobState.RUNNING, limit=4)
    more = await queue.list_jobs(state=JobState.RUNNING, limit=4, cursor=running.cursor)
    assert {j.id for j in running.jobs + more.jobs} == {j.id for j in jobs}

    for d in deliveries[:2]:
        d.outcome = JobState.SUCCEEDED
    await queue.ack_many(deliveries[:2])
    deliveries[2].outcome = JobState.RETRYING
    await queue.nack(deliveries[2], requeue=True, delay=3600)
    deliveries[3].outcome = JobState.CANCELLED
    await queue.ack(deliveries[3])
    retrying = await queue.list_jobs(state=JobState.RETRYING)
    assert [j.id for j in retrying.jobs] == [deliveries[2].job_id]
    succeeded = await queue.list_jobs(state=JobState.SUCCEEDED, limit=1)
    # A cancelled job's row is kept even when acked rows are deleted.
    cancelled = await queue.list_jobs(state=JobState.CANCELLED)
    assert [j.id for j in cancelled.jobs] == [deliveries[3].job_id]
    if queue.keep_finished > 0:
        rest = await queue.list_jobs(state=JobState.SUCCEEDED, limit=1, cursor=succeeded.cursor)
        ids = [j.id for j in succeeded.jobs + rest.jobs]
        assert ids == [d.job_id for d in deliveries[:2]]
    else:
        assert succeeded.jobs == []


@pytest.mark.parametrize("state", [None, JobState.QUEUED], ids=["any-state", "queued"])
async def test_a_task_filter_reads_a_bounded_range_per_page(
    queue: PostgresTaskQueue, state: JobState | None
) -> None:
    """A task with few jobs behind many others gives short pages with a cursor
    (each page reads at most SCAN_BUDGET rows), and paging finds every job once."""
    from lexigram.tasks.postgres._control import SCAN_BUDGET

    crowd = [Job(task="t.crowd", queue=queue.queue_name) for _ in range(SCAN_BUDGET + 500)]
    rare = [Job(task="t.rare", queue=queue.queue_name) for _ in range(3)]
    await queue.enqueue_many([rare[0], *crowd[:SCAN_BUDGET], rare[1], *crowd[SCAN_BUDGET:]])
    await queue.enqueue(rare[2])

    pages = []
    cursor = None
    while True:
        page = await queue.list_jobs(state=state, task="t.rare", limit=2, cursor=cursor)
        pages.append([j.id for j in page.jobs])
        if page.cursor is None:
            break
        cursor = page.cursor
    assert [i for ids in pages for i in ids] == [j.id for j in rare]
    assert all(len(ids) <= 2 for ids in pages)
    # The first page read the rare job and the budget's worth of the crowd: short.
    assert pages[0] == [rare[0].id], "a filtered page read past its budget"
    assert all(j.task == "t.rare" for j in (await queue.list_jobs(task="t.rare")).jobs)
    assert len((await queue.list_jobs(state=state, task="t.crowd", limit=7)).jobs) == 7


async def test_progress_is_stored_only_while_the_lease_is_held(queue: PostgresTaskQueue) -> None:
    job, delivery = await _one(queue)
    await queue.record_progress(delivery, Progress(0.25, "a quarter", {"rows": 10}))
    await queue.record_progress(delivery, Progress(0.5, meta={"file": "x.csv"}))
    info = await queue.get_job(job.id)
    assert info is not None
    assert (info.progress, info.progress_message) == (0.5, "a quarter")
    assert info.meta == {"rows": 10, "file": "x.csv"}

    stale = Delivery(delivery.job, delivery.raw, (delivery.token[0], delivery.token[1] + 1))
    await queue.record_progress(stale, Progress(0.9))
    info = await queue.get_job(job.id)
    assert info is not None and info.progress == 0.5


async def test_cancelling_a_pending_job_ends_it_and_frees_its_dedup_key(
    queue: PostgresTaskQueue,
) -> None:
    job = Job(task="t.run", queue=queue.queue_name, dedup_key="k")
    later = Job(task="t.run", queue=queue.queue_name, run_at=time.time() + 3600)
    await queue.enqueue_many([job, later])
    assert await queue.cancel(job.id) is CancelOutcome.CANCELLED
    assert await queue.cancel(later.id) is CancelOutcome.CANCELLED
    assert await _state(queue, job.id) is JobState.CANCELLED
    assert await queue.dequeue(max_jobs=10, lease_seconds=30) == []
    again = Job(task="t.run", queue=queue.queue_name, dedup_key="k")
    assert await queue.enqueue(again) == again.id
    assert await queue.cancel(job.id) is CancelOutcome.FINISHED
    assert await queue.cancel("no-such-job") is CancelOutcome.NOT_FOUND
    assert (await queue.counts()).pending == 1


async def test_cancelling_a_running_job_marks_it_notifies_and_it_is_not_retried(
    queue: PostgresTaskQueue,
) -> None:
    heard: list[str] = []
    watcher = asyncio.create_task(queue.watch_cancellations(heard.append))
    try:
        job, delivery = await _one(queue)
        _, other_delivery = await _one(queue)

        async def heard_it() -> bool:
            # Until LISTEN is up a NOTIFY is missed: ask again (it stays REQUESTED).
            assert await queue.cancel(job.id) is CancelOutcome.REQUESTED
            return bool(heard)

        await eventually(heard_it, 10, interval=0.2, message="NOTIFY not heard")
        assert set(heard) == {job.id}
        assert await queue.cancel_requested([delivery, other_delivery]) == {job.id}
        info = await queue.get_job(job.id)
        assert info is not None and info.state is JobState.RUNNING and info.cancel_requested

        delivery.outcome = JobState.RETRYING  # the task raised before it heard
        await queue.nack(delivery, requeue=True)
        assert await _state(queue, job.id) is JobState.CANCELLED
        assert await queue.dequeue(max_jobs=10, lease_seconds=30) == []
        await queue.ack(other_delivery)
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


async def test_a_cancelled_job_whose_worker_died_ends_cancelled_at_reclaim(
    queue: PostgresTaskQueue,
) -> None:
    job = Job(task="t.run", queue=queue.queue_name)
    await queue.enqueue(job)
    await collect(queue, 1, lease_seconds=1.0)  # its worker is killed now
    assert await queue.cancel(job.id) is CancelOutcome.REQUESTED

    async def reclaimed() -> bool:
        assert await queue.dequeue(max_jobs=10, lease_seconds=30) == []
        return await _state(queue, job.id) is JobState.CANCELLED

    await eventually(reclaimed, 10)


async def test_cancelling_a_job_whose_lease_lapsed_cancels_it_at_once(
    queue: PostgresTaskQueue,
) -> None:
    job = Job(task="t.run", queue=queue.queue_name)
    await queue.enqueue(job)
    await collect(queue, 1, lease_seconds=0.2)
    await eventually(lambda: _is(queue, job.id, JobState.QUEUED), 10)
    assert await queue.cancel(job.id) is CancelOutcome.CANCELLED
    assert await queue.dequeue(max_jobs=10, lease_seconds=30) == []


async def test_watching_cancellations_survives_a_terminated_connection(
    queue: PostgresTaskQueue, admin: asyncpg.Connection
) -> None:
    heard: list[str] = []
    watcher = asyncio.create_task(queue.watch_cancellations(heard.append))
    application = f"lexigram-tasks:{queue.queue_name}"

    async def listening() -> int:
        return int(
            await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                " AND query LIKE 'LISTEN%'",
                application,
            )
        )

    try:
        await eventually(listening, 10)
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = $1 AND query LIKE 'LISTEN%'",
            application,
        )
        job, _ = await _one(queue)

        async def heard_it() -> bool:
            if not heard:
                assert await queue.cancel(job.id) is CancelOutcome.REQUESTED
            return job.id in heard

        await eventually(heard_it, 15, interval=0.2)
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


async def test_cancellations_of_other_queues_are_not_reported(
    queue: PostgresTaskQueue, postgres_dsn: str, pg_schema: str
) -> None:
    heard: list[str] = []
    watcher = asyncio.create_task(queue.watch_cancellations(heard.append))
    try:
        async with PostgresTaskQueue(
            postgres_dsn, f"o_{uuid.uuid4().hex[:8]}", schema=pg_schema
        ) as other:
            job = Job(task="t.run", queue=other.queue_name)
            await other.enqueue(job)
            await collect(other, 1, lease_seconds=30)
            mine, _ = await _one(queue)

            async def heard_mine() -> bool:
                await other.cancel(job.id)
                await queue.cancel(mine.id)
                return mine.id in heard

            await eventually(heard_mine, 10, interval=0.2)
            assert job.id not in heard
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


def _worker(worker_id: str) -> WorkerInfo:
    now = time.time()
    return WorkerInfo(
        id=worker_id,
        host="h",
        pid=1,
        version="0",
        backends=["postgresql"],
        concurrency=4,
        started_at=now,
        heartbeat_at=now,
        running=["j1"],
        done=3,
        failed=1,
    )


async def test_workers_register_refresh_expire_and_deregister(
    queue: PostgresTaskQueue, admin: asyncpg.Connection, pg_schema: str
) -> None:
    a, b = f"w-{uuid.uuid4().hex[:6]}", f"w-{uuid.uuid4().hex[:6]}"
    await queue.register_worker(_worker(a), ttl=30)
    await queue.register_worker(_worker(b), ttl=0.3)
    ids = {w.id for w in await queue.list_workers()}
    assert {a, b} <= ids
    await queue.register_worker(_worker(a), ttl=30)  # a refresh, not a second entry
    mine = [w for w in await queue.list_workers() if w.id == a]
    assert mine == [_worker(a).__class__.from_dict(mine[0].to_dict())]
    assert mine[0].running == ["j1"] and mine[0].done == 3

    async def b_expired() -> bool:
        return b not in {w.id for w in await queue.list_workers()}

    await eventually(b_expired, 10)
    await queue.deregister_worker(a)
    assert a not in {w.id for w in await queue.list_workers()}
    left = await admin.fetchval(
        f"SELECT count(*) FROM {quote_ident(pg_schema)}.workers WHERE id = $1", a
    )
    assert left == 0
