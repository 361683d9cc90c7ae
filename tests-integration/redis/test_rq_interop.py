"""rq's own tooling sees lexigram queues: rq info, Queue.count, the registries, Job.fetch."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator

import pytest
import redis
from rq import Queue
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.registry import ScheduledJobRegistry

from lexigram.tasks.job import Job
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.redis import RedisTaskQueue


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


async def test_rq_sees_counts_and_registries_and_its_cleanup_leaves_our_state_intact(
    queue: RedisTaskQueue, sync_redis: redis.Redis, redis_url: str
) -> None:
    name = queue.queue_name
    jobs = [Job(task="interop.work", args=[i], queue=name, priority=i % 3) for i in range(6)]
    later = [Job(task="interop.later", queue=name, run_at=time.time() + 600) for _ in range(2)]
    await queue.enqueue_many(jobs + later)
    done, failed, running = await queue.dequeue(max_jobs=3, lease_seconds=30)
    await queue.ack(done)
    await queue.nack(failed, requeue=False, reason="interop: gave up")
    expected = QueueCounts(ready=3, delayed=2, running=1, failed=1)
    assert await queue.counts() == expected

    rq_queue = Queue(name, connection=sync_redis)
    assert name in {q.name for q in Queue.all(connection=sync_redis)}
    assert rq_queue.count == 3
    assert rq_queue.started_job_registry.count == 1
    assert rq_queue.finished_job_registry.count == 1
    assert rq_queue.failed_job_registry.count == 1
    assert ScheduledJobRegistry(queue=rq_queue).count == 2
    assert rq_queue.started_job_registry.get_job_ids() == [running.job_id]

    # rq loads lexigram's job hashes: status, origin and times are rq's fields.
    assert running.job_id is not None
    started = RQJob.fetch(running.job_id, connection=sync_redis)
    assert started.get_status() == JobStatus.STARTED
    assert started.origin == name
    assert started.started_at is not None
    assert started.enqueued_at is not None
    # the script writes rq's time format (server clock, same host here)
    sent = next(j for j in jobs if j.id == running.job_id)
    assert abs(started.enqueued_at.timestamp() - sent.enqueued_at) < 5
    assert RQJob.fetch(str(done.job_id), connection=sync_redis).get_status() == JobStatus.FINISHED
    assert RQJob.fetch(str(failed.job_id), connection=sync_redis).get_status() == JobStatus.FAILED
    assert RQJob.fetch(later[0].id, connection=sync_redis).get_status() == JobStatus.SCHEDULED
    assert set(rq_queue.job_ids) == {j.id for j in jobs} - {
        done.job_id,
        failed.job_id,
        running.job_id,
    }

    # rq's command-line monitor (which also runs rq's registry cleanup).
    info = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "rq.cli", "info", "--url", redis_url, "--raw", "-Q", name],
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(info.communicate(), 60)
    assert info.returncode == 0
    assert f"queue {name} 3, 1 executing, 1 finished, 1 failed" in stdout.decode()

    # Nothing rq did touched lexigram's bookkeeping: the lease still holds.
    assert await queue.counts() == expected
    await queue.ack(running)
    assert await queue.counts() == QueueCounts(ready=3, delayed=2, running=0, failed=1)
    assert rq_queue.started_job_registry.count == 0
    assert rq_queue.finished_job_registry.count == 2


async def test_ready_list_is_in_priority_order_for_rq_too(
    queue: RedisTaskQueue, sync_redis: redis.Redis
) -> None:
    name = queue.queue_name
    jobs = [Job(task="interop.p", args=[p], queue=name, priority=p) for p in (0, 5, 9, 3, 0, 9, 1)]
    await queue.enqueue_many(jobs)
    by_id = {j.id: j.priority for j in jobs}
    listed = [by_id[i] for i in Queue(name, connection=sync_redis).job_ids]
    assert listed == [9, 9, 5, 3, 1, 0, 0]
    leased = await queue.dequeue(max_jobs=3, lease_seconds=30)
    assert [d.job.priority for d in leased if d.job] == [9, 9, 5]
    await queue.enqueue(Job(task="interop.p", args=[4], queue=name, priority=4))
    leased = await queue.dequeue(max_jobs=10, lease_seconds=30)
    assert [d.job.priority for d in leased if d.job] == [4, 3, 1, 0, 0]
