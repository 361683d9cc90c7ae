"""The backend seam's shared work runs on every backend: BaseTaskQueue checks
and encodes at enqueue, and its parse_delivery builds every delivery.

Each test runs on the real servers (and on memory and the SQLite example),
so a backend that bypassed the base would fail here, not just in a review.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from lexigram.tasks import BaseTaskQueue, Delivery, Job, JobTooLargeError, MemoryTaskQueue
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.testing import eventually

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "sqlite_backend"))
from sqlite_queue import SQLiteTaskQueue

BACKENDS = ["memory", "redis", "postgres", "rabbitmq", "sqlite"]
#: What removes a test's queue from a shared server afterwards (PostgreSQL's
#: delete_expired deletes the failed rows, since keep_failed=0; acked rows are gone).
CLEANUP = {"redis": "purge", "postgres": "delete_expired", "rabbitmq": "delete_topology"}


def _make(kind: str, name: str, request: pytest.FixtureRequest, path: Path) -> BaseTaskQueue:
    if kind == "memory":
        return MemoryTaskQueue(name)
    if kind == "sqlite":
        return SQLiteTaskQueue(path=path / "seam.sqlite3", queue_name=name)
    if kind == "redis":
        return RedisTaskQueue(redis_url=request.getfixturevalue("redis_url"), queue_name=name)
    if kind == "rabbitmq":
        return RabbitMQTaskQueue(amqp_url=request.getfixturevalue("amqp_url"), queue_name=name)
    return PostgresTaskQueue(request.getfixturevalue("postgres_dsn"), name, keep_failed=0)


@pytest_asyncio.fixture(params=BACKENDS)
async def queue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BaseTaskQueue]:
    """A connected queue of each backend, with a name of its own; removed afterwards."""
    kind = request.param
    made = _make(kind, f"lxseam-{uuid.uuid4().hex[:10]}", request, tmp_path)
    async with made:
        try:
            yield made
        finally:
            if kind in CLEANUP:
                await getattr(made, CLEANUP[kind])()


async def _drain(queue: BaseTaskQueue, count: int) -> list[Delivery]:
    """Lease ``count`` deliveries (a backend may hand out fewer per call than asked)."""
    deliveries: list[Delivery] = []

    async def leased_all() -> bool:
        deliveries.extend(await queue.dequeue(max_jobs=count, lease_seconds=30, wait=0.2))
        return len(deliveries) >= count

    await eventually(leased_all, timeout=15, message=f"{len(deliveries)} of {count} leased")
    return deliveries


async def test_a_decoder_bug_fails_only_its_own_delivery(
    queue: BaseTaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job.from_json promises MalformedJobError for every bad document; should a
    decoder bug raise anything else, parse_delivery still confines it to that
    message: the good jobs leased with it are delivered, and the bad one is a
    problem the worker dead-letters, its bytes kept."""
    jobs = [Job(task="t", args=[n], queue=queue.queue_name) for n in range(5)]
    jobs[2].args = ["explode"]
    assert await queue.enqueue_many(jobs) == [job.id for job in jobs]
    decode: Callable[[type[Job], str | bytes], Job] = Job.from_json.__func__  # type: ignore[attr-defined]

    def from_json(cls: type[Job], data: str | bytes) -> Job:
        if b"explode" in (data if isinstance(data, bytes) else data.encode()):
            raise RecursionError("maximum recursion depth exceeded")
        return decode(cls, data)

    monkeypatch.setattr(Job, "from_json", classmethod(from_json))
    deliveries = await _drain(queue, 5)
    assert sorted(d.job.args[0] for d in deliveries if d.job is not None) == [0, 1, 3, 4]
    assert all(d.job.attempt == 1 for d in deliveries if d.job is not None)
    [bad] = [d for d in deliveries if d.job is None]
    assert bad.problem == "cannot be decoded: RecursionError: maximum recursion depth exceeded"
    assert bad.raw == jobs[2].to_bytes()
    await queue.nack(bad, requeue=False, reason=bad.problem)
    await queue.ack_many([d for d in deliveries if d.job is not None])
    [dead] = await eventually(queue.dead_letters, timeout=10, message="no dead letter")
    assert (dead.payload, dead.reason) == (jobs[2].to_bytes(), bad.problem)
    assert (await queue.counts()).pending == 0


async def test_a_backend_implementing_only_the_hooks_gets_every_enqueue_check(
    queue: BaseTaskQueue,
) -> None:
    """The public enqueue methods are BaseTaskQueue's on every backend: no
    backend overrides them to store without encode_job's checks."""
    if not isinstance(queue, PostgresTaskQueue):  # its connection= wraps the base's methods
        assert type(queue).enqueue is BaseTaskQueue.enqueue
        assert type(queue).enqueue_many is BaseTaskQueue.enqueue_many
    queue.max_job_bytes = 200
    big = Job(task="t", args=["x" * 300], queue=queue.queue_name)
    with pytest.raises(JobTooLargeError, match="over the limit of 200"):
        await queue.enqueue(big)
    small = Job(task="t", queue=queue.queue_name)
    with pytest.raises(JobTooLargeError, match="over the limit of 200"):
        await queue.enqueue_many([small, big])
    assert (await queue.counts()).pending == 0


async def test_redis_refuses_a_document_filed_under_another_id(redis_url: str) -> None:
    """A Redis job hash is found by its key; parse_delivery's stored_as check
    makes a document naming another id a problem, not a job settled under
    the wrong key."""
    name = f"lxseam-{uuid.uuid4().hex[:10]}"
    async with RedisTaskQueue(redis_url=redis_url, queue_name=name) as queue:
        try:
            job = Job(task="t", queue=name)
            await queue.push_raw(job.to_bytes(), job_id="elsewhere")
            [delivery] = await queue.dequeue(lease_seconds=30)
            assert delivery.job is None
            assert delivery.problem == (
                f"job id {job.id!r} does not match the id it is stored under, 'elsewhere'"
            )
            await queue.nack(delivery, requeue=False, reason=delivery.problem)
            [dead] = await queue.dead_letters()
            assert (dead.payload, dead.job_id) == (job.to_bytes(), None)
        finally:
            await queue.purge()
