"""TaskProvider on the memory backend: registering, enqueueing, results, routing."""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import threading
from typing import Any

import pytest

from lexigram.tasks import (
    ConfigurationError,
    JobSerializationError,
    JobTooLargeError,
    MemoryTaskQueue,
    NoResultStoreError,
    TaskFailedError,
    TaskProvider,
    UnknownTaskError,
)


def test_seed_memory_snippets_construct() -> None:
    from lexigram.tasks import MemoryTaskQueue, TaskProvider

    provider = TaskProvider(queue=MemoryTaskQueue(), worker_count=2)
    assert provider.worker_count == 2
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue, worker_count=1)
    assert provider.queue is queue


async def test_task_name_defaults_to_module_and_function() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())

    @provider.task
    async def send_email(to: str) -> str:
        return to

    assert (
        send_email.name
        == f"{__name__}.test_task_name_defaults_to_module_and_function.<locals>.send_email"
    )
    assert provider.tasks[send_email.name] is send_email
    assert send_email.__doc__ is None and send_email.__name__ == "send_email"
    assert await send_email("direct") == "direct"  # calling the task runs the function


def test_duplicate_task_name_is_rejected() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())
    provider.task(name="x")(lambda: None)
    with pytest.raises(ValueError, match="already registered"):
        provider.task(name="x")(lambda: None)


async def test_enqueue_from_task_and_by_name_returns_results() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue(), worker_count=2)

    @provider.task(name="myapp.send_email", max_retries=3, timeout=30)
    async def send_email(to: str, subject: str) -> str:
        return f"sent {subject} to {to}"

    async with provider:
        by_object = await send_email.enqueue("a@b.c", subject="hi")
        by_name = await provider.enqueue("myapp.send_email", "d@e.f", subject="yo")
        assert await by_object.result(timeout=5) == "sent hi to a@b.c"
        assert await by_name.result(timeout=5) == "sent yo to d@e.f"


async def test_plain_functions_run_in_worker_threads() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())

    @provider.task
    def where() -> str:
        return threading.current_thread().name

    async with provider:
        name = await (await where.enqueue()).result(timeout=5)
    assert name.startswith("lexigram-task")


async def test_failed_task_result_carries_exception_type_and_message() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())

    @provider.task(max_retries=1, retry_backoff=0.01)
    async def broken() -> None:
        raise KeyError("missing-sku")

    async with provider:
        handle = await broken.enqueue()
        with pytest.raises(TaskFailedError) as info:
            await handle.result(timeout=5)
    assert info.value.error_type == "KeyError"
    assert "missing-sku" in info.value.error_message
    assert info.value.job_id == handle.id


async def test_unregistered_task_name_is_refused_at_enqueue() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())

    @provider.task(name="known")
    async def known() -> None: ...

    with pytest.raises(UnknownTaskError, match=r"'unknown'.*registered: known"):
        await provider.enqueue("unknown")


async def test_non_strict_provider_enqueues_for_other_workers() -> None:
    queue = MemoryTaskQueue()
    producer = TaskProvider(queue=queue, strict=False)
    producer.task(name="local")(lambda: None)
    handle = await producer.enqueue("defined.elsewhere", 1)
    assert (await queue.counts()).ready == 1
    assert handle.task == "defined.elsewhere"


async def test_unserialisable_argument_is_named_in_the_error() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())

    @provider.task
    async def report(title: str, when: Any) -> None: ...

    with pytest.raises(JobSerializationError, match="argument 'when' \\(datetime\\)"):
        await report.enqueue("x", when=datetime.datetime.now())
    with pytest.raises(JobSerializationError, match="positional argument 1"):
        await report.enqueue("x", {1, 2})


async def test_unserialisable_result_fails_the_result_clearly() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())

    @provider.task
    async def returns_object() -> object:
        return object()

    async with provider:
        handle = await returns_object.enqueue()
        with pytest.raises(TaskFailedError, match="JobSerializationError"):
            await handle.result(timeout=5)


async def test_result_without_store_says_how_to_configure_one() -> None:
    class NotMemory(MemoryTaskQueue):
        pass

    provider = TaskProvider(backends={"main": MemoryTaskQueue()}, result_store=None)
    assert provider.result_store is not None  # memory backends get a memory store
    provider = TaskProvider(queue=NotMemory())
    provider.result_store = None
    provider.task(name="t")(lambda: None)
    handle = await provider.enqueue("t")
    with pytest.raises(NoResultStoreError, match="result_store"):
        await handle.result(timeout=1)


async def test_enqueue_options_delay_priority_dedup() -> None:
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue)

    @provider.task(name="t")
    async def t(x: int) -> int:
        return x

    first = await t.options(dedup_key="order-1").enqueue(1)
    second = await t.options(dedup_key="order-1").enqueue(2)
    assert second.id == first.id
    await t.options(delay=60).enqueue(3)
    urgent = await t.options(priority=9).enqueue(4)
    counts = await queue.counts()
    assert (counts.ready, counts.delayed) == (2, 1)
    [delivery] = await queue.dequeue(max_jobs=1)
    assert delivery.job is not None and delivery.job.id == urgent.id
    with pytest.raises(ValueError, match="priority"):
        t.options(priority=10)
    with pytest.raises(ValueError, match="delay or eta"):
        t.options(delay=1, eta=2)


async def test_enqueue_many_sends_every_job() -> None:
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue)

    @provider.task(name="t")
    async def t(x: int) -> int:
        return x * 2

    async with provider:
        handles = await provider.enqueue_many([t.job(i) for i in range(50)])
        results = [await h.result(timeout=5) for h in handles]
    assert results == [i * 2 for i in range(50)]


async def test_tasks_route_to_their_backend() -> None:
    main, notifications = MemoryTaskQueue("main"), MemoryTaskQueue("notifications")
    provider = TaskProvider(backends={"main": main, "notifications": notifications})

    @provider.task(name="notify", backend="notifications")
    async def notify() -> None: ...

    @provider.task(name="work")
    async def work() -> None: ...

    await notify.enqueue()
    await work.enqueue()
    await work.options(backend="notifications").enqueue()
    assert (await main.counts()).ready == 1
    assert (await notifications.counts()).ready == 2
    with pytest.raises(ValueError, match="not configured"):
        provider.task(name="x", backend="nope")


async def test_memory_queue_outside_development_logs_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = TaskProvider(queue=MemoryTaskQueue(), environment="production")
    provider.task(name="t")(lambda: None)
    with caplog.at_level(logging.WARNING, logger="lexigram.tasks"):
        async with provider:
            pass
    assert "MemoryTaskQueue is used in environment 'production'" in caplog.text


async def test_memory_queue_in_testing_environment_does_not_warn(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEXIGRAM_ENV", "testing")
    provider = TaskProvider(queue=MemoryTaskQueue())
    provider.task(name="t")(lambda: None)
    with caplog.at_level(logging.WARNING, logger="lexigram.tasks"):
        async with provider:
            pass
    assert "MemoryTaskQueue" not in caplog.text


async def test_serve_stops_on_request() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())
    done: list[int] = []

    @provider.task(name="t")
    async def t(x: int) -> None:
        done.append(x)
        if x == 3:
            provider.request_stop()

    for i in range(4):
        await provider.enqueue("t", i)
    await asyncio.wait_for(provider.serve(), 10)
    assert 3 in done


# -- a provider without tasks, max_job_bytes ------------------------------------------------


class CountingQueue(MemoryTaskQueue):
    """Records connects, to show that a refused start opened nothing."""

    connects = 0

    async def connect(self) -> None:
        self.connects += 1
        await super().connect()


async def test_workers_without_tasks_refuse_to_start_before_connecting() -> None:
    queue = CountingQueue()
    provider = TaskProvider(queue=queue)
    await provider.enqueue("elsewhere.task")  # no tasks: any name goes, for other workers
    message = "no tasks are registered with this provider"
    with pytest.raises(ConfigurationError, match=message):
        async with provider:
            pass
    with pytest.raises(ConfigurationError, match=message):
        await asyncio.wait_for(provider.serve(), 10)
    assert provider.pools == {}
    assert (await queue.counts()).ready == 1  # the job waits for a worker that has the task
    assert queue.connects == 1  # the enqueue's; neither start connected
    await provider.start(backends=[])  # no pool asked for: nothing to refuse
    await provider.stop()


async def test_max_job_bytes_is_checked_at_enqueue_naming_both_sizes() -> None:
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue, max_job_bytes=2048)

    @provider.task(name="store")
    async def store(data: str) -> None: ...

    assert provider.max_job_bytes == queue.max_job_bytes == 2048
    await store.enqueue("x" * 1000)
    with pytest.raises(JobTooLargeError) as info:
        await store.enqueue("x" * 4000)
    assert re.search(
        r" is 4,\d{3} bytes, over the limit of 2,048 \(max_job_bytes\)", str(info.value)
    )
    with pytest.raises(JobTooLargeError):
        await provider.enqueue_many([store.job("small"), store.job("x" * 4000)])
    assert (await queue.counts()).ready == 1  # only the first, small job


def test_max_job_bytes_is_a_positive_number_of_bytes() -> None:
    for bad in (0, -1, 1.5, "10MiB", True):
        with pytest.raises(ValueError, match="max_job_bytes must be a positive number of bytes"):
            TaskProvider(queue=MemoryTaskQueue(), max_job_bytes=bad)  # type: ignore[arg-type]


def test_max_job_bytes_defaults_to_the_backend_s_own() -> None:
    queue = MemoryTaskQueue()
    queue.max_job_bytes = 777
    TaskProvider(queue=queue)
    assert queue.max_job_bytes == 777


def test_max_job_bytes_cannot_reach_a_backend_not_deriving_from_base_task_queue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Foreign:
        queue_name = "foreign"

    with caplog.at_level(logging.WARNING, logger="lexigram.tasks"):
        TaskProvider(queue=Foreign(), max_job_bytes=4096)  # type: ignore[arg-type]
    assert "backend 'default' (Foreign) does not derive from BaseTaskQueue" in caplog.text
