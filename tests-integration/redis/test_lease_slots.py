"""The lease takes a job's concurrency slots on Redis: the enqueue names them (the job's
``lexigram-slots`` header, stored as ``lx_slots``), the lease script takes them for the
worker, and the worker keeps them only when they are the slots it computes itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from lexigram.tasks.concurrency import SLOTS_HEADER
from lexigram.tasks.control import JobState
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.redis.concurrency import RedisConcurrencyLimiter
from lexigram.tasks.testing import eventually
from lexigram.tasks.worker import WorkerPool


def _provider(
    queue: RedisTaskQueue, key: Callable[..., Any], limit: int, gate: asyncio.Event, ran: list[str]
) -> TaskProvider:
    provider = TaskProvider(queue=queue)

    @provider.task(
        name=f"{queue.queue_name}.keyed", concurrency_key=key, max_concurrency_per_key=limit
    )
    async def keyed(tenant: str) -> None:
        ran.append(tenant)
        await gate.wait()

    return provider


async def _started(
    queue: RedisTaskQueue,
    tasks: dict[str, Any],
    workers: int,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[WorkerPool, RedisConcurrencyLimiter, list[str]]:
    """A started worker pool, its limiter, and the limiter calls that take slots it makes."""
    calls: list[str] = []
    # Patched on the class before the pool starts: its first fetch may come at once.
    for method in ("acquire", "acquire_many"):
        original = getattr(RedisConcurrencyLimiter, method)

        async def spy(*args: Any, _name: str = method, _original: Any = original) -> Any:
            calls.append(_name)
            return await _original(*args)

        monkeypatch.setattr(RedisConcurrencyLimiter, method, spy)
    pool = WorkerPool(queue, tasks, worker_count=workers)
    await pool.start()
    limiter = pool.concurrency_limiter
    assert isinstance(limiter, RedisConcurrencyLimiter)
    return pool, limiter, calls


async def test_the_lease_takes_the_slots_its_job_names(
    queue: RedisTaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, ran = asyncio.Event(), list[str]()
    provider = _provider(queue, lambda tenant: tenant, 1, gate, ran)
    task = provider.tasks[f"{queue.queue_name}.keyed"]
    handle = await task.enqueue("acme")
    name = f"task:{task.name}:key:acme"
    stored = await queue.client.hget(queue.keys.job(handle.id), "lx_slots")
    assert stored == f"{name}\t1".encode()
    pool, limiter, calls = await _started(queue, provider.tasks, 2, monkeypatch)
    try:
        await eventually(lambda: ran == ["acme"], timeout=10)
        holders = await queue.client.zrange(limiter.key(name), 0, -1)
        assert holders == [f"{pool.worker_id}/{handle.id}".encode()]
        # A second job of the key: its lease finds the slot full, and it waits in the queue.
        second = await task.enqueue("acme")
        await eventually(lambda: _returned(queue, second.id), timeout=10)
        assert ran == ["acme"]
        gate.set()
        await eventually(lambda: ran == ["acme", "acme"], timeout=10)
        assert calls == []  # every slot was taken by a lease
        await eventually(lambda: _completed(queue, handle.id, second.id), timeout=10)
        await eventually(lambda: _gone(queue, limiter.key(name)), timeout=10)
        # Put back unrun, the second job used no attempt.
        info = await queue.get_job(second.id)
        assert info is not None and info.attempt == 1
    finally:
        gate.set()
        await pool.stop()
    # Its worker stopped, the queue's leases take no more slots.
    await task.enqueue("acme")
    [delivery] = await queue.dequeue(max_jobs=1)
    assert delivery.slots is None
    assert not await queue.client.exists(limiter.key(name))


async def _returned(queue: RedisTaskQueue, job_id: str) -> bool:
    info = await queue.get_job(job_id)
    return info is not None and info.state in (JobState.QUEUED, JobState.SCHEDULED)


async def _completed(queue: RedisTaskQueue, *job_ids: str) -> bool:
    infos = [await queue.get_job(job_id) for job_id in job_ids]
    return all(info is not None and info.state is JobState.SUCCEEDED for info in infos)


async def _gone(queue: RedisTaskQueue, key: str) -> bool:
    return await queue.client.exists(key) == 0


async def test_slots_named_under_another_key_are_given_back(
    queue: RedisTaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The producer's key function differs from the worker's (a deploy changed it): the
    # lease takes the slot the job names, the worker gives it back and takes its own.
    gate, ran = asyncio.Event(), list[str]()
    producer = _provider(queue, lambda tenant: tenant, 1, gate, ran)
    task_name = f"{queue.queue_name}.keyed"
    handle = await producer.tasks[task_name].enqueue("acme")
    assert producer.tasks[task_name].job("acme").headers[SLOTS_HEADER] == (
        f"task:{task_name}:key:acme\t1"
    )
    consumer = _provider(queue, lambda tenant: tenant.upper(), 1, gate, ran)
    pool, limiter, calls = await _started(queue, consumer.tasks, 1, monkeypatch)
    try:
        await eventually(lambda: ran == ["acme"], timeout=10)
        holder = f"{pool.worker_id}/{handle.id}".encode()
        named, own = (limiter.key(f"task:{task_name}:key:{k}") for k in ("acme", "ACME"))
        assert await queue.client.zrange(own, 0, -1) == [holder]
        await eventually(lambda: _gone(queue, named), timeout=10)
        assert calls == ["acquire_many"]
        gate.set()
        await eventually(lambda: _completed(queue, handle.id), timeout=10)
        await eventually(lambda: _gone(queue, own), timeout=10)
    finally:
        gate.set()
        await pool.stop()


async def test_the_lease_takes_every_limit_of_a_job_or_none(
    queue: RedisTaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A task-wide limit and a per-key one: the lease takes a slot of each, all or none.
    gate, ran = asyncio.Event(), list[str]()
    provider = TaskProvider(queue=queue)
    task_name = f"{queue.queue_name}.both"

    @provider.task(
        name=task_name,
        max_concurrency=2,
        concurrency_key=lambda tenant: tenant,
        max_concurrency_per_key=1,
    )
    async def both(tenant: str) -> None:
        ran.append(tenant)
        await gate.wait()

    first = await both.enqueue("a")
    second = await both.enqueue("a")  # the key's slot is first's: refused
    third = await both.enqueue("b")
    pool, limiter, calls = await _started(queue, provider.tasks, 3, monkeypatch)
    try:
        await eventually(lambda: sorted(ran) == ["a", "b"], timeout=10)
        holders = {f"{pool.worker_id}/{job.id}".encode() for job in (first, third)}
        task_wide = await queue.client.zrange(limiter.key(f"task:{task_name}"), 0, -1)
        assert set(task_wide) == holders
        key_a = await queue.client.zrange(limiter.key(f"task:{task_name}:key:a"), 0, -1)
        assert key_a == [f"{pool.worker_id}/{first.id}".encode()]
        await eventually(lambda: _returned(queue, second.id), timeout=10)
        gate.set()
        await eventually(lambda: _completed(queue, first.id, second.id, third.id), timeout=20)
        assert calls == []
    finally:
        gate.set()
        await pool.stop()


async def test_the_ack_gives_back_the_slots_the_lease_took(
    queue: RedisTaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A succeeded job's slots go back in its ack's own script call: the worker queues
    # no release for them. A failed job's slots are the worker's to give back.
    released: list[list[str]] = []
    original = RedisConcurrencyLimiter.release_nowait

    def spy(self: RedisConcurrencyLimiter, names: list[str], holder: str) -> None:
        released.append(list(names))
        original(self, names, holder)

    monkeypatch.setattr(RedisConcurrencyLimiter, "release_nowait", spy)
    provider = TaskProvider(queue=queue)
    prefix = queue.queue_name

    @provider.task(name=f"{prefix}.ok", concurrency_key=lambda t: t, max_concurrency_per_key=1)
    async def ok(t: str) -> None:
        return None

    @provider.task(
        name=f"{prefix}.boom",
        concurrency_key=lambda t: t,
        max_concurrency_per_key=1,
        max_retries=0,
    )
    async def boom(t: str) -> None:
        raise RuntimeError("boom")

    succeeded = [await ok.enqueue(t) for t in ("acme", "globex")]
    failed = await boom.enqueue("initech")
    pool, limiter, calls = await _started(queue, provider.tasks, 3, monkeypatch)
    try:
        await eventually(lambda: _completed(queue, *(h.id for h in succeeded)), timeout=10)

        async def failed_for_good() -> bool:
            info = await queue.get_job(failed.id)
            return info is not None and info.state is JobState.FAILED

        await eventually(failed_for_good, timeout=10)
        keys = [limiter.key(f"task:{prefix}.ok:key:{t}") for t in ("acme", "globex")]
        keys.append(limiter.key(f"task:{prefix}.boom:key:initech"))
        for key in keys:
            await eventually(lambda key=key: _gone(queue, key), timeout=10)
    finally:
        await pool.stop()
    assert calls == []  # every slot was taken by a lease
    assert released == [[f"task:{prefix}.boom:key:initech"]]
