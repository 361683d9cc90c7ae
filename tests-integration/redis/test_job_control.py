"""Job states, listing, progress, cancellation and workers where rq keeps its jobs.

The contract suite (test_contract.py) proves the behaviour every backend
shares; these tests pin what is Redis's own: rq's words and registries, the
priority bookkeeping a cancel must keep right, the scan budget of a listing,
the control channel and its reconnection, a cancel whose worker was killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from rq import Queue
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry

from lexigram.tasks.control import (
    CancelOutcome,
    JobError,
    JobState,
    Progress,
    WorkerInfo,
)
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Delivery
from lexigram.tasks.redis import RedisTaskQueue, _control
from lexigram.tasks.redis.keys import cancel_channel, job_key, worker_key, workers_key
from lexigram.tasks.testing import WorkerProcesses, eventually

BOOM = JobError("ValueError", "boom")


def _job(queue: RedisTaskQueue, task: str = "control.task", **fields: object) -> Job:
    return Job(task=task, queue=queue.queue_name, **fields)  # type: ignore[arg-type]


async def _lease(queue: RedisTaskQueue, count: int = 1, lease: float = 30.0) -> list[Delivery]:
    deliveries = await queue.dequeue(max_jobs=count, lease_seconds=lease)
    assert len(deliveries) == count
    return deliveries


def _rq_queue(redis_url: str, name: str) -> Queue:
    return Queue(name, connection=redis.Redis.from_url(redis_url))


async def _fields(client: aioredis.Redis, job_id: str) -> dict[str, str]:
    raw = await client.hgetall(job_key(job_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


# -- states in rq's words --------------------------------------------------------


async def test_a_cancelled_queued_job_is_in_rqs_canceled_registry(
    queue: RedisTaskQueue, client: aioredis.Redis, redis_url: str
) -> None:
    job = _job(queue)
    await queue.enqueue(job)
    assert await queue.cancel(job.id) is CancelOutcome.CANCELLED
    fields = await _fields(client, job.id)
    assert fields["status"] == "canceled"
    assert fields["ended_at"].endswith("Z")
    registry = CanceledJobRegistry(queue=_rq_queue(redis_url, queue.queue_name))
    assert job.id in registry.get_job_ids()
    assert await client.llen(queue.keys.ready) == 0
    assert await queue.cancel(job.id) is CancelOutcome.FINISHED
    info = await queue.get_job(job.id)
    assert info is not None and info.state is JobState.CANCELLED


async def test_cancelling_a_priority_job_keeps_the_priority_order(
    queue: RedisTaskQueue, client: aioredis.Redis
) -> None:
    plain = [_job(queue, args=[n]) for n in range(3)]
    high = [_job(queue, priority=7, args=[n]) for n in range(3)]
    await queue.enqueue_many([*plain, *high])
    assert await queue.cancel(high[1].id) is CancelOutcome.CANCELLED
    assert await client.hget(queue.keys.priorities, "7") == b"2"
    # A later priority job is inserted behind the two left, not behind a ghost.
    late = _job(queue, priority=7, args=["late"])
    await queue.enqueue(late)
    order = [d.job_id for d in await _lease(queue, 6)]
    assert order == [high[0].id, high[2].id, late.id, *(j.id for j in plain)]
    assert await client.exists(queue.keys.priorities) == 0


async def test_a_dead_letter_queues_job_is_failed_in_rq_but_finished_for_this_queue(
    queue: RedisTaskQueue, client: aioredis.Redis, redis_url: str
) -> None:
    job = _job(queue)
    await queue.enqueue(job)
    [delivery] = await _lease(queue)
    delivery.outcome, delivery.error = JobState.DEAD, BOOM
    await queue.ack(delivery)
    info = await queue.get_job(job.id)
    assert info is not None
    assert (info.state, info.error) == (JobState.DEAD, BOOM)
    assert (await _fields(client, job.id))["status"] == "failed"
    rq_queue = _rq_queue(redis_url, queue.queue_name)
    # Finished as far as this queue goes: the DLQ keeps it, not the backend.
    assert job.id in FinishedJobRegistry(queue=rq_queue).get_job_ids()
    assert job.id not in FailedJobRegistry(queue=rq_queue).get_job_ids()
    assert await queue.dead_letters() == []  # the DLQ has it: not listed twice
    assert (await queue.counts()).failed == 0
    page = await queue.list_jobs(state=JobState.DEAD)
    assert [listed.id for listed in page.jobs] == [job.id]
    assert (await queue.list_jobs(state=JobState.SUCCEEDED)).jobs == []


async def test_a_retry_is_marked_and_a_plain_requeue_clears_the_mark(
    queue: RedisTaskQueue, client: aioredis.Redis
) -> None:
    job = _job(queue, max_retries=3)
    await queue.enqueue(job)
    [first] = await _lease(queue)
    first.outcome, first.error = JobState.RETRYING, BOOM
    await queue.nack(first, requeue=True, delay=60, reason="ValueError: boom")
    fields = await _fields(client, job.id)
    assert (fields["status"], fields["lx_retrying"]) == ("scheduled", "1")
    page = await queue.list_jobs(state=JobState.RETRYING)
    assert [info.id for info in page.jobs] == [job.id]
    assert (await queue.list_jobs(state=JobState.SCHEDULED)).jobs == []
    # Due now: promoted, leased, handed back at shutdown: plainly queued.
    await client.zadd(queue.keys.scheduled, {job.id: 0})
    [second] = await _lease(queue)
    assert second.job is not None and second.job.attempt == 2
    second.outcome = None
    await queue.nack(second, requeue=True)
    info = await queue.get_job(job.id)
    assert info is not None and info.state is JobState.QUEUED
    assert info.error == BOOM  # the last error is kept


async def test_another_queues_job_is_not_this_queues(queue: RedisTaskQueue, redis_url: str) -> None:
    job = _job(queue)
    await queue.enqueue(job)
    other = RedisTaskQueue(redis_url=redis_url, queue_name=queue.queue_name + "-other")
    async with other:
        assert await other.get_job(job.id) is None
        assert await other.cancel(job.id) is CancelOutcome.NOT_FOUND
    assert await queue.get_job(job.id) is not None


# -- listing -----------------------------------------------------------------------


async def test_a_task_filter_scans_a_bounded_number_of_entries_and_goes_on_by_cursor(
    queue: RedisTaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_control, "SCAN_BUDGET", 10)
    noise = [_job(queue, task="control.noise") for _ in range(40)]
    wanted = [_job(queue, task="control.wanted") for _ in range(3)]
    await queue.enqueue_many([*noise[:20], wanted[0], *noise[20:], wanted[1], wanted[2]])
    seen: list[str] = []
    calls, cursor = 0, None
    while True:
        page = await queue.list_jobs(task="control.wanted", limit=2, cursor=cursor)
        calls += 1
        seen += [info.id for info in page.jobs]
        if page.cursor is None:
            break
        cursor = page.cursor
    assert seen == [job.id for job in wanted]
    assert calls >= 43 // 12, "a call examined more entries than its budget"


async def test_a_zset_cursor_goes_on_after_its_last_entry_left(queue: RedisTaskQueue) -> None:
    base = time.time() + 3600
    jobs = [_job(queue, run_at=base + n) for n in range(6)]
    await queue.enqueue_many(jobs)
    first = await queue.list_jobs(state=JobState.SCHEDULED, limit=3)
    assert [info.id for info in first.jobs] == [job.id for job in jobs[:3]]
    assert await queue.cancel(jobs[2].id) is CancelOutcome.CANCELLED  # the cursor's entry
    rest = await queue.list_jobs(state=JobState.SCHEDULED, limit=10, cursor=first.cursor)
    assert [info.id for info in rest.jobs] == [job.id for job in jobs[3:]]
    assert rest.cursor is None


async def test_a_bad_cursor_is_refused(queue: RedisTaskQueue) -> None:
    with pytest.raises(ValueError, match="cursor"):
        await queue.list_jobs(cursor="not-a-cursor")


# -- progress ----------------------------------------------------------------------


async def test_progress_needs_the_lease_and_keeps_big_numbers_exact(
    queue: RedisTaskQueue,
) -> None:
    job = _job(queue)
    await queue.enqueue(job)
    [delivery] = await _lease(queue, lease=0.2)
    big = 2**60 + 1
    await queue.record_progress(delivery, Progress(0.1, None, {"rows": big, "nested": [1.5]}))
    info = await queue.get_job(job.id)
    assert info is not None
    assert (info.progress, info.progress_message) == (0.1, None)
    assert dict(info.meta) == {"rows": big, "nested": [1.5]}

    async def redelivered() -> bool:
        return bool(await queue.dequeue(max_jobs=1, lease_seconds=30))

    await eventually(redelivered, timeout=10, message="the lease never lapsed")
    await queue.record_progress(delivery, Progress(0.9, "stale"))  # the old lease: ignored
    info = await queue.get_job(job.id)
    assert info is not None and (info.progress, info.progress_message) == (0.1, None)


# -- cancelling running jobs ---------------------------------------------------------


async def test_a_running_cancel_is_marked_published_and_heard(
    queue: RedisTaskQueue, client: aioredis.Redis
) -> None:
    heard: list[str] = []
    watcher = asyncio.create_task(queue.watch_cancellations(heard.append))
    try:
        channel = cancel_channel(queue.queue_name)

        async def subscribed() -> bool:
            return dict(await client.pubsub_numsub(channel)).get(channel.encode(), 0) >= 1

        await eventually(subscribed, timeout=10, message="the watcher never subscribed")
        jobs = [_job(queue) for _ in range(2)]
        await queue.enqueue_many(jobs)
        deliveries = await _lease(queue, 2)
        assert await queue.cancel(jobs[0].id) is CancelOutcome.REQUESTED
        await eventually(lambda: heard == [jobs[0].id], timeout=5, message=f"heard {heard}")
        assert await queue.cancel_requested(deliveries) == {jobs[0].id}
        info = await queue.get_job(jobs[0].id)
        assert info is not None and (info.state, info.cancel_requested) == (JobState.RUNNING, True)
        # At shutdown the worker hands it back: it must not run again.
        await queue.nack(deliveries[0], requeue=True)
        info = await queue.get_job(jobs[0].id)
        assert info is not None and info.state is JobState.CANCELLED
        assert await queue.dequeue(max_jobs=5, lease_seconds=30) == []
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


async def test_the_watcher_resubscribes_after_its_connection_is_killed(
    redis_url: str, client: aioredis.Redis, ns: str
) -> None:
    named = f"{redis_url}{'&' if '?' in redis_url else '?'}client_name={ns}"
    queue = RedisTaskQueue(redis_url=named, queue_name=f"lxtest-{uuid.uuid4().hex[:10]}")
    heard: list[str] = []
    channel = cancel_channel(queue.queue_name)

    async def subscribers() -> int:
        return int(dict(await client.pubsub_numsub(channel)).get(channel.encode(), 0))

    async with queue:
        watcher = asyncio.create_task(queue.watch_cancellations(heard.append))
        try:
            await eventually(subscribers, timeout=10, message="the watcher never subscribed")
            ours = [c for c in await client.client_list() if c["name"] == ns]
            killed = 0
            for connection in ours:
                if "P" in connection["flags"]:  # the pub/sub one
                    await client.client_kill_filter(_id=connection["id"])
                    killed += 1
            assert killed == 1
            job = _job(queue)
            await queue.enqueue(job)
            await _lease(queue)

            async def heard_after_reconnecting() -> bool:
                if await subscribers() >= 1 and not heard:
                    await queue.cancel(job.id)  # REQUESTED again: published again
                return heard[-1:] == [job.id]

            await eventually(heard_after_reconnecting, timeout=15)
        finally:
            watcher.cancel()
            with pytest.raises(asyncio.CancelledError):
                await watcher
            await queue.purge()


async def test_a_job_cancelled_after_its_worker_was_sigkilled_is_not_run_again(
    queue: RedisTaskQueue, workers: WorkerProcesses, tmp_path: Path
) -> None:
    first = workers.start(lease_seconds=1.0)
    await workers.ready(1)
    job = _job(queue, task="slow", args=["victim", 60])
    await queue.enqueue(job)
    await eventually(lambda: workers.log.count("start")["victim"] == 1, timeout=30)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    assert await queue.cancel(job.id) is CancelOutcome.REQUESTED

    workers.start(lease_seconds=1.0)  # reclaims the lapsed lease
    await workers.ready(2)
    marker = _job(queue, task="record", args=["marker"])
    await queue.enqueue(marker)
    await eventually(lambda: workers.log.count("done")["marker"] == 1, timeout=30)

    async def cancelled() -> bool:
        info = await queue.get_job(job.id)
        return info is not None and info.state is JobState.CANCELLED

    await eventually(cancelled, timeout=30, message="the killed worker's job never ended")
    assert workers.log.count("start")["victim"] == 1, "the cancelled job ran again"
    assert (await queue.counts()).pending == 0


# -- workers -------------------------------------------------------------------------


async def test_an_expired_worker_is_pruned_from_the_index(
    queue: RedisTaskQueue, client: aioredis.Redis
) -> None:
    now = time.time()
    info = WorkerInfo("w-1", "host", 1, "1.0", ["redis"], 4, now, now)
    await queue.register_worker(info, ttl=0.2)
    assert [w.id for w in await queue.list_workers()] == ["w-1"]
    assert json.loads(await client.get(worker_key(queue.queue_name, "w-1")))["pid"] == 1

    async def gone() -> bool:
        return await queue.list_workers() == []

    await eventually(gone, timeout=10)
    assert await client.zcard(workers_key(queue.queue_name)) == 0


async def test_paging_running_jobs_goes_on_after_a_seen_job_that_finished(
    queue: RedisTaskQueue,
) -> None:
    # Jobs leased together share a lease deadline (one score): when the last job
    # of a page finishes before the next page is asked for, the next page still
    # holds every running job after it, none skipped for sharing its score.
    jobs = [_job(queue) for _ in range(6)]
    await queue.enqueue_many(jobs)
    deliveries = await _lease(queue, count=6)
    first = await queue.list_jobs(state=JobState.RUNNING, limit=3)
    assert len(first.jobs) == 3 and first.cursor is not None
    last_seen = first.jobs[-1].id
    await queue.ack(next(d for d in deliveries if d.job_id == last_seen))
    rest = await queue.list_jobs(state=JobState.RUNNING, limit=10, cursor=first.cursor)
    seen = {info.id for info in first.jobs} | {info.id for info in rest.jobs}
    assert seen == {job.id for job in jobs}
    assert not {info.id for info in first.jobs} & {info.id for info in rest.jobs}
