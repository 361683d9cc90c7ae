"""WorkerPool at the edges, on the memory backend: threads past their timeout or the
shutdown window, jobs whose worker died, unknown tasks, wrong arguments, no tasks."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from lexigram.tasks import (
    ConfigurationError,
    Job,
    MemoryResultStore,
    MemoryTaskQueue,
    TaskArgumentsError,
    TaskFailedError,
    TaskProvider,
    TaskStartedEvent,
    WorkerPool,
)
from lexigram.tasks.testing import eventually
from lexigram.tasks.worker import UNKNOWN_SINCE_FIELD

# -- plain functions in threads --------------------------------------------------------


async def test_sync_task_past_its_timeout_is_not_retried_before_its_thread_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = TaskProvider(queue=MemoryTaskQueue(), result_store=MemoryResultStore())
    runs: list[tuple[float, float]] = []

    @provider.task(name="slow_sync", timeout=0.2, max_retries=1, retry_backoff=0.01)
    def slow_sync() -> None:
        start = time.monotonic()
        time.sleep(0.6)
        runs.append((start, time.monotonic()))

    async with provider:
        handle = await slow_sync.enqueue()
        with pytest.raises(TaskFailedError) as info:
            await handle.result(timeout=10)
        # the caller hears of the failure only once the last run's thread has ended
        assert len(runs) == 2
    assert info.value.error_type == "TaskTimeoutError"
    (_, first_end), (second_start, _) = runs
    assert second_start >= first_end, "the retry started while the first run was still going"
    overran = [r.getMessage() for r in caplog.records if "after its timeout" in r.getMessage()]
    assert len(overran) == 2 and all("'slow_sync'" in m for m in overran)


async def test_sync_task_still_running_at_shutdown_is_returned_and_its_result_discarded() -> None:
    queue, store = MemoryTaskQueue(), MemoryResultStore()
    provider = TaskProvider(queue=queue, result_store=store, shutdown_timeout=0.2, worker_count=2)
    release, started, ended = threading.Event(), threading.Event(), threading.Event()

    @provider.task(name="stuck")
    def stuck() -> str:
        started.set()
        release.wait(30)
        ended.set()
        return "too late"

    await provider.start()
    handle = await stuck.enqueue()
    await asyncio.to_thread(started.wait, 5)
    await provider.stop()  # returns although the thread is still blocked
    assert not ended.is_set()
    release.set()
    await asyncio.to_thread(ended.wait, 5)
    await asyncio.sleep(0.05)  # let the thread's (discarded) result reach the loop
    async with queue:
        counts = await queue.counts()
        assert (counts.ready, counts.running, counts.failed) == (1, 0, 0)
        [delivery] = await queue.dequeue()
    assert delivery.job is not None and delivery.job.attempt == 1  # no attempt used
    assert await store.get(handle.id) is None  # never stored as a success


# -- a job whose worker died ------------------------------------------------------------


async def _lose_lease(queue: MemoryTaskQueue) -> None:
    """A worker leases the next job and dies."""
    assert await queue.dequeue(lease_seconds=0.05)
    await asyncio.sleep(0.06)


async def test_a_job_whose_worker_died_runs_alone_after_the_jobs_leased_with_it() -> None:
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue, worker_count=4)
    running: set[str] = set()
    alongside: dict[str, set[str]] = {}
    finished: list[str] = []

    @provider.task(name="work")
    async def work(key: str) -> None:
        running.add(key)
        alongside.setdefault(key, set()).update(running - {key})
        await asyncio.sleep(0.05)
        alongside[key].update(running - {key})
        running.discard(key)
        finished.append(key)

    await queue.enqueue(work.job("suspect"))
    await _lose_lease(queue)
    for i in range(6):
        await queue.enqueue(work.job(f"innocent{i}"))
    async with provider:
        await eventually(lambda: len(finished) == 7, timeout=5)
    assert alongside["suspect"] == set()
    assert any(others for key, others in alongside.items() if key != "suspect")


async def test_a_suspect_waiting_to_run_alone_at_shutdown_goes_back_unharmed() -> None:
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue, worker_count=2, shutdown_timeout=0.2)
    started: list[str] = []

    @provider.task(name="hang")
    async def hang(key: str) -> None:
        started.append(key)
        await asyncio.sleep(30)

    await queue.enqueue(hang.job("suspect"))
    await _lose_lease(queue)
    await provider.start()
    await hang.enqueue("busy")
    await eventually(lambda: started == ["busy"], timeout=5)
    # the suspect is leased and waits for "busy" to finish, which it never does
    await eventually(lambda: provider.pools["default"].running == 2, timeout=5)
    await provider.stop()
    assert started == ["busy"]
    counts = await queue.counts()
    assert (counts.ready, counts.running, counts.failed) == (2, 0, 0)
    attempts = {d.job.args[0]: d.job.attempt for d in await queue.dequeue(max_jobs=2) if d.job}
    assert attempts == {"busy": 1, "suspect": 2}  # neither lost an attempt to the shutdown


async def test_only_the_runs_lost_with_a_worker_count_against_lost_lease_retries() -> None:
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue)
    seen: list[tuple[int, int]] = []
    provider.events.subscribe(
        TaskStartedEvent, lambda e: seen.append((e.job.attempt, e.job.failures))
    )

    @provider.task(name="flaky", max_retries=3, retry_backoff=0.01)
    async def flaky() -> str:
        if len(seen) < 4:
            raise ConnectionError("try later")
        return "ok"

    await queue.connect()
    await queue.enqueue(flaky.job())
    await _lose_lease(queue)  # one lost lease: within lost_lease_retries=1
    pool = WorkerPool(queue, provider.tasks, lost_lease_retries=1, events=provider.events)
    await pool.start()
    await eventually(lambda: len(seen) == 4, timeout=5)
    await eventually(lambda: pool.processed == 4, timeout=5)
    await pool.stop()
    # The lost run is not one of the task's own: it still gets 1 + max_retries runs,
    # and the failures are counted, so none of them looks like another lost lease.
    assert seen == [(2, 0), (3, 1), (4, 2), (5, 3)]
    counts = await queue.counts()
    assert (counts.pending, counts.failed) == (0, 0)


# -- unknown tasks, no tasks --------------------------------------------------------------


async def test_job_for_an_unknown_task_goes_back_for_a_worker_that_has_it() -> None:
    queue = MemoryTaskQueue()
    old, new = TaskProvider(queue=queue), TaskProvider(queue=queue)
    old.task(name="old.task")(lambda: None)
    ran: list[str] = []
    new.task(name="new.task")(lambda: ran.append("new"))
    await queue.connect()
    job_id = await queue.enqueue(Job(task="new.task"))
    old_pool = WorkerPool(queue, old.tasks, unknown_task_grace=2)
    await old_pool.start()

    async def returned_with_a_delay() -> bool:
        return (await queue.counts()).delayed == 1

    await eventually(returned_with_a_delay, timeout=5)
    await old_pool.stop()
    [delivery] = await eventually(queue.dequeue, timeout=5)
    assert delivery.job is not None and delivery.job.id == job_id
    assert delivery.job.attempt == 1  # the unknown-task round did not use an attempt
    assert isinstance(delivery.job.extra[UNKNOWN_SINCE_FIELD], float)
    await queue.nack(delivery, requeue=True)
    new_pool = WorkerPool(queue, new.tasks, unknown_task_grace=60)
    await new_pool.start()
    await eventually(lambda: ran, timeout=5)
    await new_pool.stop()
    assert not await queue.dead_letters()


async def test_unknown_task_grace_spans_workers() -> None:
    queue = MemoryTaskQueue()
    await queue.connect()
    provider = TaskProvider(queue=queue)
    provider.task(name="other")(lambda: None)
    seen_long_ago = time.time() - 100
    await queue.enqueue(Job(task="gone", extra={UNKNOWN_SINCE_FIELD: seen_long_ago}))
    pool = WorkerPool(queue, provider.tasks, unknown_task_grace=50)
    await pool.start()
    await eventually(lambda: queue.dead_letters(), timeout=5)
    await pool.stop()
    [letter] = await queue.dead_letters()
    assert letter.reason.startswith("UnknownTaskError: no worker ran task 'gone'")


async def test_a_worker_without_tasks_refuses_to_start() -> None:
    pool = WorkerPool(MemoryTaskQueue(), {})
    with pytest.raises(ConfigurationError, match="--tasks-module") as info:
        await pool.start()
    assert "@provider.task" in str(info.value) and "tasks.modules" in str(info.value)
    await asyncio.wait_for(pool.stop(), 1)  # stopping a pool that never started returns


# -- arguments that do not fit the signature ------------------------------------------------


async def test_enqueue_with_arguments_the_task_cannot_take_is_refused() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())

    @provider.task(name="add")
    def add(a: int, b: int = 0) -> int:
        return a + b

    call: Any = add.enqueue  # type checkers catch these calls too; the test makes them anyway
    with pytest.raises(TaskArgumentsError, match=r"'add'.*too many positional") as info:
        await call(1, 2, 3)
    assert isinstance(info.value, TypeError)
    with pytest.raises(TaskArgumentsError, match="unexpected keyword argument 'c'"):
        await call(1, c=2)
    with pytest.raises(TaskArgumentsError, match="missing a required argument: 'a'"):
        await add.options(priority=1).enqueue()  # type: ignore[call-arg]
    await add.enqueue(1, b=2)
    assert (await provider.queue.counts()).ready == 1


async def test_enqueue_by_name_checks_the_arguments_of_a_registered_task() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue(), strict=False)

    @provider.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(TaskArgumentsError, match=r"'add'.*too many positional"):
        await provider.enqueue("add", 1, 2, 3)
    await provider.enqueue("add", 1, 2)
    await provider.enqueue("elsewhere.defined", 1, 2, 3)  # not registered here: not checked
    assert (await provider.queue.counts()).ready == 2


async def test_wrong_arguments_from_another_producer_are_dead_lettered_without_retries() -> None:
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue)
    calls: list[int] = []

    @provider.task(name="add", max_retries=3)
    def add(a: int, b: int) -> int:
        calls.append(1)
        return a + b

    @provider.task(name="picky", max_retries=1, retry_backoff=0.01)
    def picky(a: int) -> None:
        calls.append(2)
        raise TypeError("the handler's own TypeError is retried as usual")

    await queue.connect()
    await queue.enqueue(Job(task="add", args=[1, 2, 3], max_retries=3))
    await queue.enqueue(Job(task="picky", args=[1], max_retries=1))

    async def both_dead() -> bool:
        return len(await queue.dead_letters()) == 2

    async with provider:
        await eventually(both_dead, timeout=5)
    letters = {letter.reason.split(":")[0]: letter for letter in await queue.dead_letters()}
    assert "'add'" in letters["TaskArgumentsError"].reason
    assert "too many positional arguments" in letters["TaskArgumentsError"].reason
    assert calls == [2, 2]  # add never ran; picky ran and was retried once
