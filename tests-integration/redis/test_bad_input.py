"""Poison messages never stop a Redis worker; the Lua scripts store what Python wrote, unchanged."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator

import pytest

from lexigram.tasks import TaskProvider
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.testing import eventually

DEEP = b'{"id": "poison-deep", "task": "work", "args": ' + b"[" * 1000 + b"]" * 1000 + b"}"
NAN = b'{"id": "poison-nan", "task": "work", "args": [NaN]}'


async def test_poison_messages_ahead_of_200_jobs_are_dead_lettered_and_all_jobs_run(
    queue: RedisTaskQueue, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    worker_queue = RedisTaskQueue(redis_url=redis_url, queue_name=queue.queue_name)
    provider = TaskProvider(queue=worker_queue, worker_count=8, poll_interval=0.1)
    ran: set[int] = set()

    @provider.task(name="work")
    async def work(n: int) -> None:
        ran.add(n)

    # Raw, as a foreign producer writes them, at the head of the queue.
    await queue.push_raw(DEEP)
    await queue.push_raw(NAN)
    await provider.enqueue_many([work.job(n) for n in range(200)])

    with caplog.at_level(logging.WARNING, logger="lexigram.tasks"):
        async with provider:
            await eventually(lambda: len(ran) == 200, timeout=30, message=f"{len(ran)} of 200 ran")
            counts = await eventually(lambda: _settled(queue), timeout=10)
    assert counts == QueueCounts(ready=0, delayed=0, running=0, failed=2)
    letters = {letter.payload: letter for letter in await queue.dead_letters()}
    assert set(letters) == {DEEP, NAN}
    assert "nested too deeply" in letters[DEEP].reason
    assert "NaN" in letters[NAN].reason
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []  # no failed fetch, no crashed runner, no failed settle


async def _settled(queue: RedisTaskQueue) -> QueueCounts | None:
    counts = await queue.counts()
    return counts if counts.pending == 0 and counts.failed == 2 else None


async def test_huge_integers_survive_enqueue_requeue_and_dead_letter_unchanged(
    queue: RedisTaskQueue,
) -> None:
    # Lua's JSON parser reads numbers as doubles (this one becomes inf); the
    # scripts must store the document as Python wrote it.
    big = int("9" * 4000) + 7
    job = Job(task="bad_input.big", queue=queue.queue_name, args=[big, -big], kwargs={"n": big})
    await queue.enqueue(job)

    [delivery] = await queue.dequeue(max_jobs=1, lease_seconds=30)
    assert delivery.job is not None
    assert delivery.job.args == [big, -big]
    assert delivery.job.kwargs == {"n": big}
    await queue.nack(delivery, requeue=True, reason="again")

    [delivery] = await queue.dequeue(max_jobs=1, lease_seconds=30)
    assert delivery.job is not None
    assert delivery.job.args == [big, -big]
    await queue.nack(delivery, requeue=False, reason="kept")

    [letter] = await queue.dead_letters()
    assert json.loads(letter.payload)["args"] == [big, -big]
    assert letter.payload == delivery.raw  # the document as stored at the requeue


@pytest.fixture
def deep_recursion() -> Iterator[None]:
    # An application may raise Python's limit; Python then writes nesting far
    # deeper than Lua's JSON parser would read (1000 levels).
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    yield
    sys.setrecursionlimit(before)


async def test_a_job_python_can_write_is_never_refused_by_the_lua_parser(
    queue: RedisTaskQueue, deep_recursion: None
) -> None:
    nested: list[object] = []
    for _ in range(1500):
        nested = [nested]
    jobs = [Job(task="bad_input.deep", queue=queue.queue_name, args=[nested]) for _ in range(2)]
    await queue.enqueue(jobs[0])
    await queue.enqueue_many(jobs[1:])
    deliveries = await queue.dequeue(max_jobs=2, lease_seconds=30)
    assert [d.job.id for d in deliveries if d.job is not None] == [job.id for job in jobs]
    assert all(d.raw == job.to_bytes() for d, job in zip(deliveries, jobs, strict=True))
