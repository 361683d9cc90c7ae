"""Leases and acks of whole batches: the sorted sets each is recorded in, and their scores."""

from __future__ import annotations

import uuid

from lexigram.tasks.control import JobState
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.testing import eventually


def _jobs(queue: RedisTaskQueue, n: int) -> list[Job]:
    return [Job(task="batches.noop", queue=queue.queue_name) for _ in range(n)]


async def _server_time(queue: RedisTaskQueue) -> float:
    seconds, micros = await queue.client.time()
    return float(seconds + micros / 1e6)


async def test_a_batch_bigger_than_one_server_call_takes_is_leased_and_acked_whole(
    queue: RedisTaskQueue,
) -> None:
    # 1,200 jobs: their leases and registry entries go to Redis in several calls.
    jobs = _jobs(queue, 1200)
    await queue.enqueue_many(jobs)
    deliveries = await queue.dequeue(max_jobs=1200, lease_seconds=30)
    assert sorted(d.job_id for d in deliveries) == sorted(job.id for job in jobs)
    client, keys = queue.client, queue.keys
    assert await client.zcard(keys.leases) == 1200
    assert await client.zcard(keys.started) == 1200  # rq's StartedJobRegistry

    await queue.ack_many(deliveries)

    assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=0)
    assert await client.zcard(keys.started) == 0
    assert await client.zcard(keys.finished) == 1200  # rq's FinishedJobRegistry
    info = await queue.get_job(jobs[-1].id)
    assert info is not None and info.state is JobState.SUCCEEDED


async def test_a_long_lease_lapses_within_a_second_of_its_length_a_short_one_on_time(
    queue: RedisTaskQueue,
) -> None:
    await queue.enqueue_many(_jobs(queue, 2))
    before = await _server_time(queue)
    [long] = await queue.dequeue(max_jobs=1, lease_seconds=30)
    [short] = await queue.dequeue(max_jobs=1, lease_seconds=2.5)
    after = await _server_time(queue)
    long_deadline = await queue.client.zscore(queue.keys.leases, long.job_id)
    short_deadline = await queue.client.zscore(queue.keys.leases, short.job_id)
    assert long_deadline is not None and short_deadline is not None
    # A lease of 10 s or more is scored in whole seconds, rounded up: never early.
    assert long_deadline == int(long_deadline)
    assert before + 30 <= long_deadline <= after + 31
    assert before + 2.5 <= short_deadline <= after + 2.5

    await queue.extend_lease([long], 60)
    extended = await queue.client.zscore(queue.keys.leases, long.job_id)
    assert extended is not None and extended >= before + 60


async def test_a_fractional_finished_ttl_keeps_a_finished_job_at_least_that_long(
    redis_url: str,
) -> None:
    name = f"lxtest-{uuid.uuid4().hex[:10]}"
    async with RedisTaskQueue(redis_url=redis_url, queue_name=name, finished_ttl=0.5) as queue:
        try:
            [job] = _jobs(queue, 1)
            await queue.enqueue(job)
            deliveries = await queue.dequeue(max_jobs=1, lease_seconds=30)
            await queue.ack_many(deliveries)

            info = await queue.get_job(job.id)
            assert info is not None and info.state is JobState.SUCCEEDED
            assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=0)

            async def gone() -> bool:
                return await queue.get_job(job.id) is None

            await eventually(gone, timeout=10, message="the finished job never expired")
        finally:
            await queue.purge()


async def test_with_finished_ttl_0_an_acked_batch_leaves_no_job_and_no_registry_entry(
    redis_url: str,
) -> None:
    name = f"lxtest-{uuid.uuid4().hex[:10]}"
    async with RedisTaskQueue(redis_url=redis_url, queue_name=name, finished_ttl=0) as queue:
        try:
            jobs = _jobs(queue, 3)
            await queue.enqueue_many(jobs)
            await queue.ack_many(await queue.dequeue(max_jobs=3, lease_seconds=30))

            assert [await queue.get_job(job.id) for job in jobs] == [None, None, None]
            assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=0)
            assert await queue.client.zcard(queue.keys.finished) == 0
            assert await queue.client.zcard(queue.keys.started) == 0
        finally:
            await queue.purge()
