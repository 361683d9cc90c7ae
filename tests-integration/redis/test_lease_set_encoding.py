"""The lease set and rq's started registry are made skiplists once a worker holds many
leases (a listpack costs every insert a walk over all its members), unseen by readers."""

from __future__ import annotations

from lexigram.tasks.job import Job
from lexigram.tasks.redis import RedisTaskQueue


def _jobs(queue: RedisTaskQueue, n: int) -> list[Job]:
    return [Job(task="encoding.noop", queue=queue.queue_name) for _ in range(n)]


async def _encoding(queue: RedisTaskQueue, key: str) -> bytes | None:
    encoding: bytes | None = await queue.client.object("encoding", key)
    return encoding


async def test_many_leases_are_held_in_skiplists_with_only_the_leased_jobs_in_them(
    queue: RedisTaskQueue,
) -> None:
    jobs = _jobs(queue, 20)
    await queue.enqueue_many(jobs)
    keys = queue.keys
    first = await queue.dequeue(max_jobs=5, lease_seconds=30)
    assert await _encoding(queue, keys.leases) == b"listpack"
    assert await _encoding(queue, keys.started) == b"listpack"

    second = await queue.dequeue(max_jobs=15, lease_seconds=30)

    assert await _encoding(queue, keys.leases) == b"skiplist"
    assert await _encoding(queue, keys.started) == b"skiplist"
    deliveries = first + second
    leased = await queue.client.zrange(keys.leases, 0, -1)
    assert sorted(leased) == sorted(job.id.encode() for job in jobs)
    started = await queue.client.zrange(keys.started, 0, -1, withscores=True)
    assert sorted(member for member, _ in started) == sorted(
        d.token.split(b" ")[1] + b":" + d.token.split(b" ")[0] for d in deliveries
    )
    assert {score for _, score in started} == {float("inf")}  # rq's "no expiry"

    await queue.ack_many(deliveries)

    assert await queue.client.exists(keys.leases, keys.started) == 0


async def test_a_few_leases_stay_in_listpacks(queue: RedisTaskQueue) -> None:
    await queue.enqueue_many(_jobs(queue, 3))
    await queue.dequeue(max_jobs=3, lease_seconds=30)
    assert await _encoding(queue, queue.keys.leases) == b"listpack"
    assert await _encoding(queue, queue.keys.started) == b"listpack"
