"""Jobs whose lease lapsed run next, count every delivery, and keep what the worker wrote."""

from __future__ import annotations

import json

import pytest

from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Delivery
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.testing import eventually

LEASE = 0.3


async def _lapse(queue: RedisTaskQueue, job_id: str) -> None:
    """Wait until the lease of ``job_id`` has passed on the server's clock."""

    async def lapsed() -> bool:
        deadline = await queue.client.zscore(queue.keys.leases, job_id)
        seconds, micros = await queue.client.time()
        return deadline is not None and deadline < seconds + micros / 1e6

    await eventually(lapsed, timeout=10, message=f"the lease of {job_id} never lapsed")


async def _lease_one(queue: RedisTaskQueue, lease_seconds: float = 30.0) -> Delivery:
    [delivery] = await queue.dequeue(max_jobs=1, lease_seconds=lease_seconds)
    assert delivery.job is not None
    return delivery


def _job(queue: RedisTaskQueue, name: str, priority: int = 0) -> Job:
    return Job(task=f"redelivery.{name}", queue=queue.queue_name, priority=priority)


@pytest.mark.parametrize(
    ("priority", "backlog", "expected_ahead"),
    [
        (0, [0] * 50, 0),
        (0, [9, 9, 9] + [0] * 50, 3),
        (5, [9, 9] + [5] * 20 + [0] * 20, 2),
    ],
    ids=["plain-backlog", "behind-higher-priorities", "front-of-its-priority"],
)
async def test_a_job_whose_lease_lapsed_runs_before_the_backlog_of_its_priority(
    queue: RedisTaskQueue, priority: int, backlog: list[int], expected_ahead: int
) -> None:
    lost = _job(queue, "lost", priority)
    await queue.enqueue(lost)
    held = await _lease_one(queue, lease_seconds=LEASE)  # its worker dies: never settled
    assert held.job_id == lost.id
    waiting = [_job(queue, f"backlog-{n}", p) for n, p in enumerate(backlog)]
    await queue.enqueue_many(waiting)
    await _lapse(queue, lost.id)

    deliveries = await queue.dequeue(max_jobs=expected_ahead + 1, lease_seconds=30)
    order = [d.job_id for d in deliveries]
    assert order[-1] == lost.id, (
        f"reclaimed job at {order.index(lost.id) if lost.id in order else 'the back'}"
    )
    assert all(d.job is not None and d.job.priority > priority for d in deliveries[:-1])
    assert deliveries[-1].job is not None
    assert deliveries[-1].job.attempt == 2
    # The rest of the backlog keeps its order.
    rest = await queue.dequeue(max_jobs=len(backlog), lease_seconds=30)
    expected = sorted(waiting, key=lambda job: -job.priority)[expected_ahead:]
    assert [d.job_id for d in rest] == [job.id for job in expected]


async def test_every_delivery_counts_an_attempt_and_a_requeue_keeps_the_workers_document(
    queue: RedisTaskQueue,
) -> None:
    job = _job(queue, "counted")
    await queue.enqueue(job)

    first = await _lease_one(queue)
    assert first.job is not None and first.job.attempt == 1
    # What the worker does before requeueing a failed attempt: record it in the
    # job document (the "failures" field, kept in extra by a core without it).
    if hasattr(first.job, "failures"):
        first.job.failures = 1
    else:
        first.job.extra["failures"] = 1
    first.job.headers["note"] = "failed once"
    await queue.nack(first, requeue=True, reason="boom")

    second = await _lease_one(queue, lease_seconds=LEASE)
    assert second.job is not None and second.job.attempt == 2
    assert json.loads(second.raw)["failures"] == 1
    assert second.job.headers == {"note": "failed once"}

    await _lapse(queue, job.id)  # the worker running attempt 2 dies
    third = await _lease_one(queue)
    assert third.job is not None and third.job.attempt == 3
    assert json.loads(third.raw)["failures"] == 1  # a lost lease is not a failure
    await queue.ack(third)
    assert (await queue.counts()).pending == 0
