"""Acks riding with the next lease on Redis: one write for both, what a failed part
leaves, and a worker whose process-executor jobs wait in line for a child."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from lexigram.tasks import TaskProvider, chord, group
from lexigram.tasks.control import JobState
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Delivery
from lexigram.tasks.redis import RedisTaskQueue, _scripts
from lexigram.tasks.testing import eventually
from lexigram.tasks.worker import WorkerPool
from lexigram.tasks.worker._settling import ACK_LINGER

# The children import the task functions by module name: this folder must be on
# sys.path (children inherit it).
sys.path.insert(0, str(Path(__file__).parent))
import _px_functions
from _unknown_scripts import never_loaded


async def _leased(queue: RedisTaskQueue, n: int) -> list[Delivery]:
    jobs = [Job(task="rides.noop", queue=queue.queue_name) for _ in range(n)]
    await queue.enqueue_many(jobs)
    return await queue.dequeue(max_jobs=n)


async def _states(queue: RedisTaskQueue, deliveries: list[Delivery]) -> list[JobState]:
    infos = [await queue.get_job(d.job.id) for d in deliveries if d.job is not None]
    return [info.state for info in infos if info is not None]


async def test_a_lease_acks_the_jobs_it_carries(queue: RedisTaskQueue) -> None:
    first = await _leased(queue, 2)
    await queue.enqueue(Job(task="rides.noop", queue=queue.queue_name))
    leased, acked = await queue.dequeue_after_ack(first, max_jobs=5)
    assert acked
    assert len(leased) == 1 and leased[0].job is not None
    assert await _states(queue, first) == [JobState.SUCCEEDED] * 2
    assert await _states(queue, leased) == [JobState.RUNNING]
    counts = await queue.counts()
    assert (counts.ready, counts.running) == (0, 1)


async def test_an_empty_queue_waits_for_the_next_job_after_the_ack(
    queue: RedisTaskQueue,
) -> None:
    first = await _leased(queue, 1)
    leased, acked = await queue.dequeue_after_ack(first, max_jobs=1, wait=0.05)
    assert (leased, acked) == ([], True)
    assert await _states(queue, first) == [JobState.SUCCEEDED]


@pytest.mark.parametrize("unknown", ["lease", "ack"])
async def test_a_script_the_server_lost_leaves_nothing_undone(
    queue: RedisTaskQueue, monkeypatch: pytest.MonkeyPatch, unknown: str
) -> None:
    # As after SCRIPT FLUSH: an unknown lease script is loaded and the lease made
    # anyway; an unknown ack script is reported, and the worker acks them again.
    first = await _leased(queue, 2)
    await queue.enqueue(Job(task="rides.noop", queue=queue.queue_name))
    script = never_loaded(_scripts.SCRIPTS[unknown])
    monkeypatch.setitem(_scripts.SCRIPTS, unknown, script)
    leased, acked = await queue.dequeue_after_ack(first, max_jobs=5)
    assert len(leased) == 1
    if unknown == "lease":
        assert acked
        assert await queue.client.script_exists(script.sha) == [True]
        assert await _states(queue, first) == [JobState.SUCCEEDED] * 2
    else:
        assert not acked
        assert await _states(queue, first) == [JobState.RUNNING] * 2
        await queue.ack_many(first)  # what the worker's ack loop does next
        assert await _states(queue, first) == [JobState.SUCCEEDED] * 2


def test_a_cluster_queue_sends_its_acks_on_their_own(redis_url: str) -> None:
    # On a cluster (sharded or not) the acked jobs may live on another master.
    assert RedisTaskQueue(redis_url=redis_url, queue_name="rides").acks_ride_with_lease
    cluster = RedisTaskQueue(redis_url="redis+cluster://127.0.0.1:7000/0", queue_name="rides")
    assert not cluster.acks_ride_with_lease


def _process_tasks(queue: RedisTaskQueue) -> TaskProvider:
    provider = TaskProvider(queue=queue)
    provider.task(name="px.add", executor="process")(_px_functions.add)
    provider.task(name="px.hold", executor="process")(_px_functions.hold)
    provider.task(name="px.busy", executor="process")(_px_functions.busy)
    return provider


def _count_rides(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Ids of the jobs acked with a lease, from the next pool started on."""
    ridden: list[str] = []
    original = RedisTaskQueue.dequeue_after_ack

    async def counted(self: RedisTaskQueue, acks: list[Delivery], **options: Any) -> Any:
        ridden.extend(d.job.id for d in acks if d.job is not None)
        return await original(self, acks, **options)

    monkeypatch.setattr(RedisTaskQueue, "dequeue_after_ack", counted)
    return ridden


async def test_acks_of_jobs_that_waited_for_a_child_ride_with_the_leases(
    queue: RedisTaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One child, eight slots: jobs of 20 ms wait in line for the child, the worker
    # leases again only every few jobs, and the acks of the jobs done meanwhile go
    # with it.
    provider = _process_tasks(queue)
    busy = provider.tasks["px.busy"]
    handles = await provider.enqueue_many([busy.job(0.02) for _ in range(40)])
    ridden = _count_rides(monkeypatch)
    pool = WorkerPool(queue, provider.tasks, worker_count=8, process_pool_size=1)
    await pool.start()
    try:

        async def all_succeeded() -> bool:
            infos = [await queue.get_job(h.id) for h in handles]
            return all(i is not None and i.state is JobState.SUCCEEDED for i in infos)

        await eventually(all_succeeded, timeout=60)
    finally:
        await pool.stop()
    assert ridden, "no ack rode with a lease"
    assert set(ridden) <= {h.id for h in handles}
    assert len(ridden) == len(set(ridden))  # none acked twice that way
    counts = await queue.counts()
    assert (counts.ready, counts.running) == (0, 0)


async def test_an_ack_does_not_wait_for_a_lease_behind_a_long_job(
    queue: RedisTaskQueue, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The child runs a quick job, then one that holds it; a third waits in line. The
    # worker leases nothing more until the held job ends, so the quick job's ack,
    # left for the next lease, goes on its own after ACK_LINGER.
    tasks = _process_tasks(queue).tasks
    quick = await tasks["px.add"].enqueue(1, 2)
    started, release = tmp_path / "started", tmp_path / "release"
    held = await tasks["px.hold"].enqueue(str(started), str(release))
    last = await tasks["px.add"].enqueue(3, 4)
    ridden = _count_rides(monkeypatch)
    pool = WorkerPool(queue, tasks, worker_count=3, process_pool_size=1)
    await pool.start()
    try:
        await eventually(started.exists, timeout=60)

        async def quick_acked() -> bool:
            info = await queue.get_job(quick.id)
            return info is not None and info.state is JobState.SUCCEEDED

        await eventually(quick_acked, timeout=10 + ACK_LINGER)
        assert await _job_state(queue, held.id) is JobState.RUNNING
        assert await _job_state(queue, last.id) is JobState.RUNNING  # leased, in line
        assert quick.id not in ridden
        release.touch()

        async def both_done() -> bool:
            states = {await _job_state(queue, h.id) for h in (held, last)}
            return states == {JobState.SUCCEEDED}

        await eventually(both_done, timeout=30)
    finally:
        release.touch()
        await pool.stop()


async def _job_state(queue: RedisTaskQueue, job_id: str) -> JobState | None:
    info = await queue.get_job(job_id)
    return None if info is None else info.state


async def test_workflow_steps_waiting_for_a_child_record_their_results_before_their_ack(
    redis_url: str,
) -> None:
    # Steps' acks go out only after their results are recorded (the ack loop's work),
    # never riding ahead of it: the chord still gathers every result.
    queue = RedisTaskQueue(redis_url=redis_url, queue_name=f"lxtest-{uuid.uuid4().hex[:10]}")
    provider = TaskProvider(queue=queue, worker_count=8, process_pool_size=1)
    busy = provider.task(name="px.busy", executor="process")(_px_functions.busy)
    total = provider.task(name="px.total", executor="process")(_px_functions.total)
    try:
        async with provider:
            handle = await chord(group(busy.s(0.02) for _ in range(12)), total.s()).enqueue()
            assert await handle.result(timeout=60) == 0.24
    finally:
        async with queue:
            await queue.purge()
