"""WorkerPool behaviour on the memory backend: retries, timeouts, shutdown, leases, bad input."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import pytest

from lexigram.tasks import (
    Job,
    MemoryTaskQueue,
    TaskCompletedEvent,
    TaskDeadLetteredEvent,
    TaskFailedError,
    TaskFailedEvent,
    TaskProvider,
    TaskRetryingEvent,
    TaskStartedEvent,
)
from lexigram.tasks.testing import eventually
from lexigram.tasks.worker import JobFailure


def test_worker_defaults_match_the_documentation() -> None:
    from lexigram.tasks import WorkerPool

    pool = WorkerPool(MemoryTaskQueue(), {})
    assert (pool.worker_count, pool.poll_interval) == (1, 0.5)
    assert (pool.default_timeout, pool.shutdown_timeout) == (300.0, 30.0)


async def test_retries_with_backoff_then_succeeds_and_emits_events() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())
    seen: list[str] = []
    calls: list[float] = []

    @provider.task(name="flaky", max_retries=3, retry_backoff=0.1)
    async def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError("try later")
        return "ok"

    provider.events.subscribe(TaskStartedEvent, lambda e: seen.append(f"start{e.job.attempt}"))
    provider.events.subscribe(TaskFailedEvent, lambda e: seen.append(f"fail{e.job.attempt}"))
    provider.events.subscribe(TaskRetryingEvent, lambda e: seen.append("retry"))
    provider.events.subscribe(TaskCompletedEvent, lambda e: seen.append(f"done:{e.result}"))

    async with provider:
        assert await (await flaky.enqueue()).result(timeout=10) == "ok"
    assert seen == ["start1", "fail1", "retry", "start2", "fail2", "retry", "start3", "done:ok"]
    # equal jitter: attempt n waits between base*2**(n-1)/2 and base*2**(n-1)
    assert calls[1] - calls[0] >= 0.05
    assert calls[2] - calls[1] >= 0.1


async def test_exhausted_retries_dead_letter_on_the_backend() -> None:
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue)
    dead: list[TaskDeadLetteredEvent] = []
    provider.events.subscribe(TaskDeadLetteredEvent, dead.append)

    @provider.task(name="broken", max_retries=2, retry_backoff=0.01)
    async def broken() -> None:
        raise RuntimeError("bug")

    async with provider:
        handle = await broken.enqueue()
        with pytest.raises(TaskFailedError):
            await handle.result(timeout=10)
    [letter] = await queue.dead_letters()
    assert letter.job_id == handle.id
    assert letter.reason == "RuntimeError: bug"
    assert (await queue.counts()).failed == 1
    assert dead[0].job is not None and dead[0].job.attempt == 3


async def test_dead_letter_sink_receives_the_failure() -> None:
    class Sink:
        def __init__(self) -> None:
            self.failures: list[JobFailure] = []

        async def add(self, failure: JobFailure) -> None:
            self.failures.append(failure)

    queue, sink = MemoryTaskQueue(), Sink()
    provider = TaskProvider(queue=queue, dead_letter=sink)

    @provider.task(name="broken")
    async def broken() -> None:
        raise ValueError("bad input")

    async with provider:
        with pytest.raises(TaskFailedError):
            await (await broken.enqueue()).result(timeout=5)
    [failure] = sink.failures
    assert (failure.error_type, failure.error_message) == ("ValueError", "bad input")
    assert "raise ValueError" in failure.traceback
    assert failure.job is not None and failure.job.task == "broken" and failure.attempts == 1
    assert (await queue.counts()).pending == 0 and not await queue.dead_letters()


async def test_timeout_cancels_the_task_and_the_worker_goes_on() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())
    cancelled = asyncio.Event()

    @provider.task(name="hangs", timeout=0.2)
    async def hangs() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    @provider.task(name="quick")
    async def quick() -> str:
        return "still working"

    async with provider:
        hung = await hangs.enqueue()
        with pytest.raises(TaskFailedError) as info:
            await hung.result(timeout=10)
        assert await (await quick.enqueue()).result(timeout=5) == "still working"
    assert info.value.error_type == "TaskTimeoutError"
    assert "timeout of 0.2s" in info.value.error_message
    assert cancelled.is_set()


async def test_handler_raising_timeouterror_is_not_reported_as_a_timeout() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())

    @provider.task(name="t")
    async def t() -> None:
        raise TimeoutError("upstream timed out")

    async with provider:
        with pytest.raises(TaskFailedError) as info:
            await (await t.enqueue()).result(timeout=5)
    assert info.value.error_type == "TimeoutError"


async def test_unknown_task_on_worker_is_dead_lettered_with_reason_after_the_grace() -> None:
    from lexigram.tasks import WorkerPool

    queue = MemoryTaskQueue()
    await queue.enqueue(Job(task="nobody.registered.this"))
    provider = TaskProvider(queue=queue)
    provider.task(name="other")(lambda: None)
    pool = WorkerPool(queue, provider.tasks, unknown_task_grace=0)
    async with queue:
        await pool.start()
        await eventually(lambda: queue.dead_letters(), timeout=5)
        await pool.stop()
    [letter] = await queue.dead_letters()
    assert "UnknownTaskError" in letter.reason and "nobody.registered.this" in letter.reason
    assert "unknown_task_grace" in letter.reason


async def test_malformed_message_is_dead_lettered_and_the_worker_goes_on() -> None:
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue)
    dead: list[TaskDeadLetteredEvent] = []
    provider.events.subscribe(TaskDeadLetteredEvent, dead.append)

    @provider.task(name="ok")
    async def ok() -> int:
        return 1

    queue.push_raw(b"{not json")
    queue.push_raw(b'{"id": "x"}')
    async with provider:
        assert await (await ok.enqueue()).result(timeout=5) == 1
        await eventually(lambda: len(dead) == 2, timeout=5)
    reasons = sorted(letter.reason for letter in await queue.dead_letters())
    assert reasons[0].startswith("MalformedJobError: missing required field 'task'")
    assert reasons[1].startswith("MalformedJobError: not valid JSON")
    assert {d.payload for d in dead} == {b"{not json", b'{"id": "x"}'}


async def test_graceful_shutdown_returns_unfinished_jobs_without_using_an_attempt() -> None:
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue, worker_count=2, shutdown_timeout=0.3)
    started = asyncio.Event()
    finished: list[str] = []

    @provider.task(name="slow")
    async def slow() -> None:
        started.set()
        await asyncio.sleep(30)

    @provider.task(name="short")
    async def short() -> None:
        await asyncio.sleep(0.1)
        finished.append("short")

    await provider.start()
    await slow.enqueue()
    await started.wait()
    await short.enqueue()
    await eventually(lambda: provider.pools["default"].running == 2, timeout=5)
    await provider.stop()
    assert finished == ["short"]  # let finish within the shutdown window
    counts = await queue.counts()
    assert (counts.ready, counts.running, counts.failed) == (1, 0, 0)
    [delivery] = await queue.dequeue()
    assert delivery.job is not None and delivery.job.task == "slow"
    assert delivery.job.attempt == 1  # the interrupted run did not count


async def test_long_job_keeps_its_lease_and_runs_once() -> None:
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue, lease_seconds=0.3)
    runs: list[int] = []

    @provider.task(name="long")
    async def long() -> None:
        runs.append(1)
        await asyncio.sleep(1.2)  # four lease periods

    async with provider:
        handle = await long.enqueue()
        await eventually(lambda: runs, timeout=5)
        other_consumer = await queue.dequeue(max_jobs=1, wait=1.0)
        await handle.result(timeout=10)
    assert other_consumer == []
    assert runs == [1]


async def test_killed_workers_job_runs_again_even_without_retries() -> None:
    queue = MemoryTaskQueue()
    await queue.enqueue(Job(task="once", max_retries=0))
    assert await queue.dequeue(lease_seconds=0.05)  # a worker leases it and is killed
    await asyncio.sleep(0.06)
    provider = TaskProvider(queue=queue)
    ran: list[int] = []
    provider.task(name="once")(lambda: ran.append(1))
    async with provider:
        await eventually(lambda: ran, timeout=5)
    assert ran == [1]
    assert not await queue.dead_letters()


async def test_job_whose_workers_keep_dying_is_dead_lettered() -> None:
    queue = MemoryTaskQueue()
    await queue.enqueue(Job(task="crashy", max_retries=1))
    # 1 run + 1 retry + 2 lost-lease retries: four workers lease it and die
    for _ in range(4):
        assert await queue.dequeue(lease_seconds=0.05)
        await asyncio.sleep(0.06)
    provider = TaskProvider(queue=queue)
    ran: list[int] = []
    provider.task(name="crashy")(lambda: ran.append(1))
    async with provider:
        await eventually(lambda: queue.dead_letters(), timeout=5)
    [letter] = await queue.dead_letters()
    assert letter.reason.startswith("LeaseExpired: gave up after 4 attempt(s)")
    assert ran == []


async def test_blocking_async_handler_is_reported_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())

    @provider.task(name="blocks")
    async def blocks() -> None:
        time.sleep(1.2)  # the mistake this warning exists for

    @provider.task(name="fine")
    async def fine() -> str:
        return "fine"

    with caplog.at_level(logging.WARNING, logger="lexigram.tasks.worker"):
        async with provider:
            await (await blocks.enqueue()).result(timeout=10)
            assert await (await fine.enqueue()).result(timeout=5) == "fine"
    assert "event loop has been blocked" in caplog.text
    assert "blocks" in caplog.text


async def test_rate_limited_task_keeps_its_pace() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue(), worker_count=4)
    starts: list[float] = []

    @provider.task(name="limited", rate_limit="20/s")
    async def limited() -> None:
        starts.append(time.monotonic())

    async with provider:
        handles = await provider.enqueue_many([limited.job() for _ in range(8)])
        for handle in handles:
            await handle.result(timeout=10)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.045  # 20/s = one start per 50 ms, never faster


async def test_delayed_job_does_not_run_early() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())
    ran_at: list[float] = []

    @provider.task(name="later")
    async def later() -> None:
        ran_at.append(time.time())

    async with provider:
        sent = time.time()
        handle = await later.options(delay=0.4).enqueue()
        await handle.result(timeout=5)
    assert ran_at[0] - sent >= 0.4


async def test_priority_order_with_one_worker() -> None:
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue)
    order: list[int] = []

    @provider.task(name="p")
    async def p(level: int) -> None:
        order.append(level)

    for level in (0, 5, 9, 1):
        await p.options(priority=level).enqueue(level)
    async with provider:
        await eventually(lambda: len(order) == 4, timeout=5)
    assert order == [9, 5, 1, 0]


async def test_failing_event_subscriber_does_not_affect_the_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())

    @provider.on(TaskStartedEvent)
    async def broken_subscriber(event: TaskStartedEvent) -> None:
        raise RuntimeError("subscriber bug")

    @provider.task(name="t")
    async def t() -> int:
        return 7

    async with provider:
        assert await (await t.enqueue()).result(timeout=5) == 7
    assert "subscriber bug" in caplog.text
