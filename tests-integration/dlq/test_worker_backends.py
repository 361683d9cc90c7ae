"""The worker sends failures to the DLQ, and replays run again, on every real backend."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from lexigram.tasks import (
    DeadLetterQueue,
    MemoryResultStore,
    TaskDeadLetteredEvent,
    TaskFailedError,
    TaskProvider,
)
from lexigram.tasks.testing import eventually

if TYPE_CHECKING:
    from conftest import Backend  # the `backend` fixture's type


def failing_provider(backend: Backend, dlq: DeadLetterQueue) -> tuple[TaskProvider, dict[str, Any]]:
    provider = TaskProvider(
        queue=backend.queue,
        dead_letter=dlq,
        result_store=MemoryResultStore(),
        poll_interval=0.05,
        lease_seconds=5,
    )
    state: dict[str, Any] = {"fixed": False, "runs": 0}

    @provider.task(name="shop.ship_order", max_retries=1, retry_backoff=0.01)
    async def ship_order(order_id: int, express: bool = False) -> str:
        state["runs"] += 1
        if not state["fixed"]:
            raise ConnectionRefusedError(f"carrier API down for order {order_id}")
        return f"shipped {order_id}"

    return provider, state


async def test_an_always_failing_task_lands_with_its_traceback_then_replays(
    backend: Backend,
) -> None:
    dlq = DeadLetterQueue(backend.storage)
    provider, state = failing_provider(backend, dlq)
    dead: list[TaskDeadLetteredEvent] = []
    provider.events.subscribe(TaskDeadLetteredEvent, dead.append)
    started = time.time()
    async with provider:
        handle = await provider.enqueue("shop.ship_order", 42, express=True)
        with pytest.raises(TaskFailedError) as failed:
            await handle.result(timeout=20)
        assert failed.value.error_type == "ConnectionRefusedError"
        record = await eventually(lambda: dlq.get(handle.id), timeout=10)
        assert state["runs"] == 2  # first run + one retry
        assert record.error_type == "ConnectionRefusedError"
        assert record.error_message == "carrier API down for order 42"
        assert "Traceback (most recent call last)" in record.traceback
        assert "carrier API down" in record.traceback
        assert record.attempts == 2
        assert record.queue == backend.queue.queue_name
        assert record.worker_id == dead[0].worker_id
        assert started <= record.failed_at <= time.time()
        assert record.job is not None
        assert (record.job.args, record.job.kwargs) == ([42], {"express": True})
        assert (await backend.queue.counts()).failed == 0  # in the DLQ, not the backend's

        state["fixed"] = True
        replayed = await dlq.replay(handle.id, provider)
        assert replayed is not None
        assert await replayed.result(timeout=20) == "shipped 42"
        await eventually(lambda: _drained(backend), timeout=10)
    assert state["runs"] == 3
    assert await dlq.get(handle.id) is None
    assert await dlq.count() == 0


async def _drained(backend: Backend) -> bool:
    counts = await backend.queue.counts()
    return counts.pending == 0 and counts.failed == 0


async def test_a_message_that_is_not_a_job_is_kept_byte_for_byte(backend: Backend) -> None:
    dlq = DeadLetterQueue(backend.storage)
    provider, _ = failing_provider(backend, dlq)
    raw = b'{"id": "x", "task": ["not", "a", "name"]} \xff'
    async with provider:
        await backend.push_raw(raw)
        [record] = await eventually(lambda: dlq.list(), timeout=10)
    assert record.job is None
    assert record.payload == raw
    assert record.error_type == "MalformedJobError"
    assert record.queue == backend.queue.queue_name
    assert await dlq.get(record.id) == record


async def test_replay_many_sends_each_job_once_and_keeps_what_it_cannot_replay(
    backend: Backend,
) -> None:
    dlq = DeadLetterQueue(backend.storage)
    provider, state = failing_provider(backend, dlq)
    async with provider:
        handles = [await provider.enqueue("shop.ship_order", n) for n in range(5)]
        await backend.push_raw(b"garbage")
        await eventually(lambda: _count(dlq, 6), timeout=20)
        state["fixed"] = True
        runs_before = state["runs"]
        report = await dlq.replay_many(provider, task="shop.ship_order", batch_size=2)
        assert sorted(report.replayed) == sorted(h.id for h in handles)
        await eventually(lambda: state["runs"] == runs_before + 5, timeout=20)
    assert await dlq.count() == 1
    [left] = await dlq.list()
    assert left.job is None
    assert state["runs"] == runs_before + 5


async def _count(dlq: DeadLetterQueue, n: int) -> bool:
    return await dlq.count() == n
