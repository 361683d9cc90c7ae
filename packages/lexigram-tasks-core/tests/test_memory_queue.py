"""MemoryTaskQueue behaviour beyond the contract suite (see test_memory_contract.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from lexigram.tasks import (
    Capability,
    Job,
    JobSerializationError,
    MemoryTaskQueue,
    QueueCounts,
    TaskQueueProtocol,
)
from lexigram.tasks.control import CancelOutcome, JobState, WorkerInfo
from lexigram.tasks.testing import collect, eventually

EMPTY = QueueCounts(ready=0, delayed=0, running=0, failed=0)


@pytest.fixture
async def queue() -> AsyncIterator[MemoryTaskQueue]:
    async with MemoryTaskQueue(queue_name="mem") as q:
        yield q


def test_describes_itself() -> None:
    queue = MemoryTaskQueue()
    assert queue.queue_name == "default"
    assert queue.system == "memory"
    assert queue.capabilities == {
        Capability.DELAY,
        Capability.PRIORITY,
        Capability.UNIQUE,
        Capability.INSPECT,
        Capability.CANCEL,
        Capability.WORKERS,
        Capability.ATTEMPTS,
    }
    assert isinstance(queue, TaskQueueProtocol)
    assert repr(MemoryTaskQueue("emails")) == "MemoryTaskQueue(queue_name='emails')"


async def test_instances_do_not_share_jobs() -> None:
    first, second = MemoryTaskQueue("same"), MemoryTaskQueue("same")
    await first.enqueue(Job(task="t", queue="same"))
    assert (await first.counts()).ready == 1
    assert await second.counts() == EMPTY


async def test_stored_job_is_a_copy(queue: MemoryTaskQueue) -> None:
    job = Job(task="t", kwargs={"n": 1}, headers={"h": "1"})
    await queue.enqueue(job)
    job.kwargs["n"] = 2
    job.headers["h"] = "changed"
    [delivery] = await queue.dequeue(lease_seconds=30)
    assert delivery.job is not None
    assert delivery.job.kwargs == {"n": 1}
    assert delivery.job.headers == {"h": "1"}


async def test_unserialisable_job_is_refused_and_not_stored(queue: MemoryTaskQueue) -> None:
    with pytest.raises(JobSerializationError, match="argument 'conn'"):
        await queue.enqueue(Job(task="t", kwargs={"conn": object()}))
    assert await queue.counts() == EMPTY


async def test_push_raw_stores_bytes_as_they_are(queue: MemoryTaskQueue) -> None:
    message_id = queue.push_raw(b"\x00 not a job")
    assert isinstance(message_id, str)
    [delivery] = await queue.dequeue(lease_seconds=30)
    assert delivery.job is None
    assert delivery.raw == b"\x00 not a job"
    assert delivery.problem is not None
    assert "not valid JSON" in delivery.problem


async def test_a_waiting_dequeue_wakes_when_a_delayed_job_falls_due(
    queue: MemoryTaskQueue,
) -> None:
    job = Job(task="t", queue="mem", run_at=time.time() + 0.3)
    await queue.enqueue(job)
    started = time.monotonic()
    [delivery] = await queue.dequeue(lease_seconds=30, wait=10)
    elapsed = time.monotonic() - started
    assert delivery.job_id == job.id
    assert 0.25 <= elapsed < 2.0


async def test_a_waiting_dequeue_wakes_when_a_lease_lapses(queue: MemoryTaskQueue) -> None:
    job = Job(task="t", queue="mem")
    await queue.enqueue(job)
    await queue.dequeue(lease_seconds=0.3)
    started = time.monotonic()
    [delivery] = await queue.dequeue(lease_seconds=30, wait=10)
    elapsed = time.monotonic() - started
    assert delivery.job_id == job.id
    assert delivery.job is not None
    assert delivery.job.attempt == 2
    assert 0.2 <= elapsed < 2.0


async def test_several_waiting_consumers_each_get_a_job(queue: MemoryTaskQueue) -> None:
    waiters = [asyncio.create_task(queue.dequeue(lease_seconds=30, wait=10)) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    jobs = [Job(task="t", queue="mem") for _ in range(3)]
    for job in jobs:
        await queue.enqueue(job)
    results = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert sorted(d.job_id or "" for batch in results for d in batch) == sorted(j.id for j in jobs)


async def test_nack_requeue_of_a_malformed_message_dead_letters_it(
    queue: MemoryTaskQueue,
) -> None:
    queue.push_raw(b"[]")
    [delivery] = await queue.dequeue(lease_seconds=30)
    await queue.nack(delivery, requeue=True, reason="cannot retry what cannot be read")
    assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=1)
    [dead] = await queue.dead_letters()
    assert dead.payload == b"[]"
    assert dead.reason == "cannot retry what cannot be read"


async def test_requeue_with_a_new_priority_uses_it(queue: MemoryTaskQueue) -> None:
    low, other = Job(task="t", queue="mem"), Job(task="t", queue="mem", priority=5)
    await queue.enqueue(low)
    [delivery] = await queue.dequeue(lease_seconds=30)
    await queue.enqueue(other)
    assert delivery.job is not None
    delivery.job.priority = 9
    await queue.nack(delivery, requeue=True)
    deliveries = await collect(queue, 2, lease_seconds=30)
    assert [d.job_id for d in deliveries] == [low.id, other.id]


async def test_extend_lease_of_a_settled_delivery_is_ignored(queue: MemoryTaskQueue) -> None:
    await queue.enqueue(Job(task="t", queue="mem"))
    [delivery] = await queue.dequeue(lease_seconds=30)
    await queue.ack(delivery)
    await queue.extend_lease([delivery], 30)
    assert await queue.counts() == EMPTY


async def test_counts_notice_a_lapsed_lease_without_a_dequeue(queue: MemoryTaskQueue) -> None:
    await queue.enqueue(Job(task="t", queue="mem"))
    await queue.dequeue(lease_seconds=0.1)
    assert (await queue.counts()).running == 1
    counts = await eventually(
        lambda: _ready_counts(queue), timeout=5, message="lapsed lease never counted as ready"
    )
    assert counts == QueueCounts(ready=1, delayed=0, running=0, failed=0)


async def _ready_counts(queue: MemoryTaskQueue) -> QueueCounts | None:
    counts = await queue.counts()
    return counts if counts.ready == 1 else None


def test_one_queue_serves_successive_event_loops() -> None:
    # A module-level queue (the usual `provider = TaskProvider(queue=MemoryTaskQueue())`)
    # outlives the event loop of each test or asyncio.run().
    queue = MemoryTaskQueue("loops")

    async def wait_then_take() -> None:
        assert await queue.dequeue(lease_seconds=30, wait=0.05) == []
        waiter = asyncio.create_task(queue.dequeue(lease_seconds=30, wait=5))
        await asyncio.sleep(0.01)
        job = Job(task="t", queue="loops")
        await queue.enqueue(job)
        deliveries = await asyncio.wait_for(waiter, 5)
        assert [d.job_id for d in deliveries] == [job.id]
        await queue.ack_many(deliveries)

    asyncio.run(wait_then_take())
    asyncio.run(wait_then_take())


# -- job control -----------------------------------------------------------------


async def _finish(queue: MemoryTaskQueue, jobs: list[Job]) -> None:
    await queue.enqueue_many(jobs)
    deliveries = await collect(queue, len(jobs), lease_seconds=30, batch=1000)
    for delivery in deliveries:
        delivery.outcome = JobState.SUCCEEDED
    await queue.ack_many(deliveries)


async def test_only_the_last_max_finished_jobs_are_kept() -> None:
    queue = MemoryTaskQueue("bounded", max_finished=3)
    jobs = [Job(task="t", queue="bounded") for _ in range(5)]
    await _finish(queue, jobs)
    assert [await queue.get_job(job.id) for job in jobs[:2]] == [None, None]
    page = await queue.list_jobs()
    assert [info.id for info in page.jobs] == [job.id for job in jobs[2:]]
    assert all(info.state is JobState.SUCCEEDED for info in page.jobs)
    assert await queue.cancel(jobs[0].id) is CancelOutcome.NOT_FOUND
    assert await queue.cancel(jobs[4].id) is CancelOutcome.FINISHED


async def test_listing_stays_right_after_many_evictions() -> None:
    queue = MemoryTaskQueue("evicting", max_finished=10)
    jobs = [Job(task="t", queue="evicting") for _ in range(3000)]
    await _finish(queue, jobs)
    waiting = Job(task="t", queue="evicting")
    await queue.enqueue(waiting)
    seen, cursor = [], None
    while True:
        page = await queue.list_jobs(limit=4, cursor=cursor)
        seen += [info.id for info in page.jobs]
        if page.cursor is None:
            break
        cursor = page.cursor
    kept = len(seen) - 1  # forgotten in batches: between max_finished and a little more
    assert 10 <= kept <= 11
    assert seen == [job.id for job in jobs[-kept:]] + [waiting.id]
    assert len(queue._book._order) < 3000, "forgotten jobs were never compacted away"


async def test_a_bad_cursor_or_limit_is_refused(queue: MemoryTaskQueue) -> None:
    with pytest.raises(ValueError, match="not a cursor"):
        await queue.list_jobs(cursor="page-2")
    with pytest.raises(ValueError, match="limit"):
        await queue.list_jobs(limit=0)


async def test_a_job_enqueued_again_with_its_id_replaces_the_finished_one(
    queue: MemoryTaskQueue,
) -> None:
    job = Job(task="t", queue="mem")
    await _finish(queue, [job])
    await queue.enqueue(Job(task="t", queue="mem", id=job.id, args=["again"]))
    info = await queue.get_job(job.id)
    assert info is not None
    assert (info.state, info.args) == (JobState.QUEUED, ["again"])
    assert [i.id for i in (await queue.list_jobs()).jobs] == [job.id]


async def test_a_malformed_message_is_listed(queue: MemoryTaskQueue) -> None:
    message_id = queue.push_raw(b"not a job")
    info = await queue.get_job(message_id)
    assert info is not None
    assert (info.state, info.task, info.args) == (JobState.QUEUED, "", [])


async def test_a_cancelled_running_job_handed_back_is_not_run_again(
    queue: MemoryTaskQueue,
) -> None:
    job = Job(task="t", queue="mem")
    await queue.enqueue(job)
    [delivery] = await queue.dequeue(lease_seconds=30)
    assert await queue.cancel(job.id) is CancelOutcome.REQUESTED
    await queue.nack(delivery, requeue=True, reason="shutdown")
    assert await queue.dequeue(lease_seconds=30) == []
    info = await queue.get_job(job.id)
    assert info is not None
    assert info.state is JobState.CANCELLED


async def test_watch_cancellations_stops_listening_when_cancelled(
    queue: MemoryTaskQueue,
) -> None:
    heard: list[str] = []

    def broken(job_id: str) -> None:
        raise RuntimeError("a listener's bug")

    watches = [
        asyncio.create_task(queue.watch_cancellations(broken)),
        asyncio.create_task(queue.watch_cancellations(heard.append)),
    ]
    await asyncio.sleep(0)
    first, second = Job(task="t", queue="mem"), Job(task="t", queue="mem")
    await queue.enqueue_many([first, second])
    await queue.dequeue(max_jobs=2, lease_seconds=30)
    assert await queue.cancel(first.id) is CancelOutcome.REQUESTED
    assert heard == [first.id], "a failing listener kept the others from hearing"
    for watch in watches:
        watch.cancel()
    await asyncio.gather(*watches, return_exceptions=True)
    assert await queue.cancel(second.id) is CancelOutcome.REQUESTED
    assert heard == [first.id]


async def test_the_worker_registry_is_per_queue_and_expires(queue: MemoryTaskQueue) -> None:
    info = WorkerInfo("w1", "host", 1, "0", ["memory"], 4, time.time(), time.time())
    await queue.register_worker(info, ttl=0.05)
    assert await queue.list_workers() == [info]
    assert await MemoryTaskQueue("mem").list_workers() == []
    await eventually(lambda: _no_workers(queue), 5)


async def _no_workers(queue: MemoryTaskQueue) -> bool:
    return await queue.list_workers() == []
