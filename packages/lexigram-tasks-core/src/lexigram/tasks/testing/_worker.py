"""The worker on a backend, in the test process: retries, timeouts, shutdown, bad input,
rate limits, unknown tasks, events and spans."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from lexigram.tasks.events import (
    TaskCompletedEvent,
    TaskDeadLetteredEvent,
    TaskEvent,
    TaskFailedEvent,
    TaskRetryingEvent,
    TaskStartedEvent,
)
from lexigram.tasks.protocol import QueueCounts, TaskQueueProtocol
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.task import EnqueueOptions
from lexigram.tasks.testing._base import ContractBase
from lexigram.tasks.testing._helpers import eventually
from lexigram.tasks.worker import WorkerPool

EMPTY = QueueCounts(ready=0, delayed=0, running=0, failed=0)

#: Messages a foreign producer wrote ahead of the good jobs: the worker dead-letters each.
POISON = {
    b"this is { not json": "not valid JSON",
    b'{"id": "poison-deep", "task": "record", "args": '
    + b"[" * 1000
    + b"]" * 1000
    + b"}": "nested too deeply",
    b'{"id": "poison-nan", "task": "record", "args": [NaN]}': "NaN",
}


async def settled(queue: TaskQueueProtocol, expected: QueueCounts, timeout: float = 10.0) -> None:
    """Wait until ``queue.counts()`` is ``expected`` (acks are sent in batches)."""

    async def reached() -> bool:
        return await queue.counts() == expected

    try:
        await eventually(reached, timeout)
    except AssertionError:
        raise AssertionError(f"counts are {await queue.counts()}, not {expected}") from None


class WorkerHost(ContractBase):
    """Runs a worker on this backend in the test process (a base of the worker suites)."""

    @asynccontextmanager
    async def worker(self, queue_name: str, **settings: Any) -> AsyncIterator[TaskProvider]:
        """A provider on a new instance of the queue; register tasks, then ``start()`` it.

        Stopped (if started) and disconnected on leaving the block.
        """
        provider = TaskProvider(queue=await self.create_queue(queue_name), **settings)
        try:
            yield provider
        finally:
            await provider.stop()
            await provider.disconnect()


class WorkerBehaviourContract(WorkerHost):
    """What a worker does with the jobs of this backend, in the test process."""

    @pytest.mark.asyncio
    async def test_retries_with_backoff_then_succeeds_and_emits_events(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        seen: list[str] = []
        calls: list[float] = []
        async with self.worker(queue_name) as provider:

            @provider.task(name="flaky", max_retries=3, retry_backoff=0.2)
            async def flaky() -> str:
                calls.append(time.monotonic())
                if len(calls) < 3:
                    raise ConnectionError("try later")
                return "ok"

            def note(event: TaskEvent) -> None:
                kind = type(event).__name__.removeprefix("Task").removesuffix("Event").lower()
                seen.append(f"{kind}{event.job.attempt}")

            for kind in (TaskStartedEvent, TaskFailedEvent, TaskRetryingEvent):
                provider.events.subscribe(kind, note)
            provider.events.subscribe(TaskCompletedEvent, lambda e: seen.append(f"ok:{e.result}"))
            await provider.start()
            await queue.enqueue(flaky.job())
            await eventually(lambda: seen[-1:] == ["ok:ok"], 10, message="never succeeded")
            await settled(queue, EMPTY)
        assert seen == [
            *("started1", "failed1", "retrying1"),
            *("started2", "failed2", "retrying2"),
            *("started3", "ok:ok"),
        ]
        # Equal jitter: retry n waits between base * 2**(n-1) / 2 and base * 2**(n-1).
        assert calls[1] - calls[0] >= 0.1 - self.clock_tolerance
        assert calls[2] - calls[1] >= 0.2 - self.clock_tolerance

    @pytest.mark.asyncio
    async def test_exhausted_retries_are_dead_lettered_with_the_reason(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        dead: list[TaskDeadLetteredEvent] = []
        async with self.worker(queue_name) as provider:

            @provider.task(name="broken", max_retries=2, retry_backoff=0.01)
            async def broken() -> None:
                raise RuntimeError("bug")

            provider.events.subscribe(TaskDeadLetteredEvent, dead.append)
            await provider.start()
            job = broken.job()
            await queue.enqueue(job)
            await settled(queue, QueueCounts(ready=0, delayed=0, running=0, failed=1))
        [letter] = await queue.dead_letters()
        assert (letter.job_id, letter.reason) == (job.id, "RuntimeError: bug")
        [event] = dead
        assert event.job is not None
        assert (event.job.attempt, event.job.failures) == (3, 2)

    @pytest.mark.asyncio
    async def test_async_timeout_cancels_the_job_and_the_worker_goes_on(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        cancelled = asyncio.Event()
        failed: list[TaskFailedEvent] = []
        done: list[str] = []
        async with self.worker(queue_name) as provider:

            @provider.task(name="hangs", timeout=0.2)
            async def hangs() -> None:
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    cancelled.set()
                    raise

            @provider.task(name="quick")
            async def quick() -> None:
                done.append("quick")

            provider.events.subscribe(TaskFailedEvent, failed.append)
            await provider.start()
            await queue.enqueue(hangs.job())
            await eventually(lambda: failed, 10, message="the timeout never fired")
            await queue.enqueue(quick.job())
            await eventually(lambda: done, 10, message="the worker stopped after a timeout")
            await settled(queue, QueueCounts(ready=0, delayed=0, running=0, failed=1))
        assert cancelled.is_set()
        assert failed[0].error_type == "TaskTimeoutError"
        assert "timeout of 0.2s" in failed[0].error_message
        [letter] = await queue.dead_letters()
        assert letter.reason.startswith("TaskTimeoutError: ")

    @pytest.mark.asyncio
    async def test_sync_timeout_fails_the_job_once_its_thread_returns(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        """A thread cannot be stopped: the job fails at its timeout only once the
        function returns, and its retry never overlaps the late run."""
        runs: list[tuple[float, float]] = []
        failed: list[TaskFailedEvent] = []
        async with self.worker(queue_name) as provider:

            @provider.task(name="slow_def", timeout=0.2, max_retries=1, retry_backoff=0.01)
            def slow_def() -> None:
                started = time.monotonic()
                time.sleep(0.5)
                runs.append((started, time.monotonic()))

            provider.events.subscribe(TaskFailedEvent, failed.append)
            await provider.start()
            await queue.enqueue(slow_def.job())
            await settled(queue, QueueCounts(ready=0, delayed=0, running=0, failed=1))
        assert [e.error_type for e in failed] == ["TaskTimeoutError", "TaskTimeoutError"]
        assert all(e.duration >= 0.5 - self.clock_tolerance for e in failed)
        [(_, first_end), (second_start, _)] = runs
        assert second_start >= first_end, "the retry ran while the late run still did"

    @pytest.mark.asyncio
    async def test_graceful_shutdown_returns_unfinished_jobs_without_using_an_attempt(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        """Stopped three times mid-run, the job still has all its attempts: on the
        fourth worker it runs as attempt 1 and finishes (no LeaseExpired)."""
        attempts: list[int] = []
        finished: list[str] = []
        hold = [30.0]  # how long the job runs: past the shutdown window, until the last life
        job = None
        for life in range(4):
            hold[0] = 30.0 if life < 3 else 0.0
            async with self.worker(queue_name, worker_count=2, shutdown_timeout=0.2) as provider:

                @provider.task(name="slow", max_retries=0)
                async def slow() -> None:
                    await asyncio.sleep(hold[0])

                @provider.task(name="short")
                async def short() -> None:
                    await asyncio.sleep(0.05)
                    finished.append("short")

                def started(event: TaskStartedEvent) -> None:
                    if event.job.task == "slow":
                        attempts.append(event.job.attempt)

                provider.events.subscribe(TaskStartedEvent, started)
                await provider.start()
                if job is None:
                    job = slow.job()
                    await queue.enqueue(job)
                await eventually(lambda: len(attempts) > life, 10, message="not started")  # noqa: B023
                if life < 3:
                    await queue.enqueue(short.job())
                    await eventually(lambda: provider.pools["default"].running == 2, 10)
            if life < 3:
                assert finished == ["short"] * (life + 1), "a job inside the window was cut"
                await settled(queue, QueueCounts(ready=1, delayed=0, running=0, failed=0))
        await settled(queue, EMPTY)
        assert attempts == [1, 1, 1, 1], "the interrupted runs used up attempts"

    @pytest.mark.asyncio
    async def test_jobs_finished_at_stop_are_acked(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        """8 jobs finish while stop() runs: every one is acked, none is delivered again."""
        provider = TaskProvider(queue=queue, strict=False)
        release = asyncio.Event()
        started: list[int] = []

        @provider.task(name="together")
        async def together(n: int) -> None:
            started.append(n)
            await release.wait()

        await queue.enqueue_many([together.job(n) for n in range(8)])
        worker_queue = await self.create_queue(queue_name)
        await worker_queue.connect()
        try:
            pool = WorkerPool(worker_queue, provider.tasks, worker_count=8, lease_seconds=30)
            await pool.start()
            await eventually(lambda: len(started) == 8, 10, message="8 jobs running")
            stopping = asyncio.create_task(pool.stop())
            await asyncio.sleep(0)  # stop() is waiting for the running jobs when they finish
            release.set()
            await stopping
        finally:
            await worker_queue.disconnect()
        assert await queue.counts() == EMPTY
        assert await queue.dequeue(max_jobs=8, lease_seconds=5, wait=0.5) == []
        assert sorted(started) == list(range(8))

    @pytest.mark.asyncio
    async def test_poison_messages_are_dead_lettered_and_the_jobs_behind_them_run(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        for payload in POISON:
            await self.push_raw(queue, payload)
        done: list[str] = []
        dead: list[TaskDeadLetteredEvent] = []
        async with self.worker(queue_name, worker_count=10) as provider:

            @provider.task(name="record")
            async def record(key: str) -> None:
                done.append(key)

            provider.events.subscribe(TaskDeadLetteredEvent, dead.append)
            keys = [f"good-{n}" for n in range(50)]
            await queue.enqueue_many([record.job(k) for k in keys])
            await provider.start()
            await eventually(lambda: len(done) == len(keys), 30, message="good jobs stuck")
            await settled(queue, QueueCounts(ready=0, delayed=0, running=0, failed=len(POISON)))
        assert sorted(done) == sorted(keys)
        letters = await queue.dead_letters()
        assert all(letter.job_id is None for letter in letters)
        reasons = {letter.payload: letter.reason for letter in letters}
        assert reasons.keys() == POISON.keys()
        for payload, problem in POISON.items():
            assert reasons[payload].startswith("MalformedJobError: "), reasons[payload]
            assert problem in reasons[payload], reasons[payload]
        assert {event.payload for event in dead} == POISON.keys()
        assert all(event.job is None for event in dead)

    @pytest.mark.asyncio
    async def test_rate_limited_task_keeps_its_pace(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        starts: list[float] = []
        async with self.worker(queue_name, worker_count=4) as provider:

            @provider.task(name="limited", rate_limit="20/s")
            async def limited() -> None:
                starts.append(time.monotonic())

            await queue.enqueue_many([limited.job() for _ in range(8)])
            await provider.start()
            await eventually(lambda: len(starts) == 8, 10, message="rate-limited jobs stuck")
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert min(gaps) >= 0.045, gaps  # 20/s = one start per 50 ms, never faster

    @pytest.mark.asyncio
    async def test_jobs_handed_back_by_the_rate_limit_use_no_attempt(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        """A wait longer than the poll interval hands the job back with a delay: it
        must not count as a run, or the job ends up dead-lettered as LeaseExpired."""
        attempts: list[int] = []
        async with self.worker(queue_name, worker_count=6, poll_interval=0.05) as provider:

            @provider.task(name="limited", rate_limit="5/s", max_retries=0)
            async def limited() -> None:
                pass

            provider.events.subscribe(TaskStartedEvent, lambda e: attempts.append(e.job.attempt))
            await queue.enqueue_many([limited.job() for _ in range(6)])
            await provider.start()
            await eventually(lambda: len(attempts) == 6, 15, message="rate-limited jobs stuck")
            await settled(queue, EMPTY)
        assert attempts == [1] * 6
        assert await queue.dead_letters() == []

    @pytest.mark.asyncio
    async def test_unknown_task_is_put_back_for_a_worker_that_has_it(
        self, queue: TaskQueueProtocol, queue_name: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        provider = TaskProvider(queue=queue, strict=False)
        provider.task(name="other")(lambda: None)
        await queue.enqueue(provider.build_job("wanted", (), {}, EnqueueOptions()))
        lacking = WorkerPool(queue, provider.tasks, unknown_task_grace=5)
        with caplog.at_level(logging.WARNING, logger="lexigram.tasks.worker"):
            await lacking.start()
            try:
                await eventually(lambda: "which this worker does not have" in caplog.text, 10)
            finally:
                await lacking.stop()
        attempts: list[int] = []
        async with self.worker(queue_name) as having:
            having.task(name="wanted")(lambda: None)
            having.events.subscribe(TaskStartedEvent, lambda e: attempts.append(e.job.attempt))
            await having.start()
            await eventually(lambda: attempts, 15, message="the returned job never ran")
            await settled(queue, EMPTY)
        assert attempts == [1]

    @pytest.mark.asyncio
    async def test_unknown_task_is_dead_lettered_after_the_grace(
        self, queue: TaskQueueProtocol
    ) -> None:
        provider = TaskProvider(queue=queue, strict=False)
        provider.task(name="other")(lambda: None)
        await queue.enqueue(provider.build_job("nobody.has.this", (), {}, EnqueueOptions()))
        pool = WorkerPool(queue, provider.tasks, unknown_task_grace=0)
        await pool.start()
        try:
            await settled(queue, QueueCounts(ready=0, delayed=0, running=0, failed=1))
        finally:
            await pool.stop()
        [letter] = await queue.dead_letters()
        assert letter.reason.startswith("UnknownTaskError: ")
        assert "nobody.has.this" in letter.reason

    @pytest.mark.asyncio
    async def test_the_producer_trace_continues_in_the_worker(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        """Producer and worker have their own tracer providers, as separate processes
        do: the trace travels in the job's headers through the backend."""
        sent, received = InMemorySpanExporter(), InMemorySpanExporter()
        producer_tracing, worker_tracing = TracerProvider(), TracerProvider()
        producer_tracing.add_span_processor(SimpleSpanProcessor(sent))
        worker_tracing.add_span_processor(SimpleSpanProcessor(received))
        done: list[str] = []
        producer = TaskProvider(
            queue=await self.create_queue(queue_name),
            tracer_provider=producer_tracing,
            strict=False,
        )
        async with self.worker(queue_name, tracer_provider=worker_tracing) as worker:

            @worker.task(name="record")
            async def record(key: str) -> None:
                done.append(key)

            await worker.start()
            await producer.connect()
            try:
                with producer_tracing.get_tracer("test").start_as_current_span("GET /signup"):
                    await producer.enqueue("record", "traced")
            finally:
                await producer.disconnect()
            await eventually(lambda: done, 10, message="the traced job never ran")
            await settled(queue, EMPTY)

        [send] = [s for s in sent.get_finished_spans() if s.kind == SpanKind.PRODUCER]
        [request] = [s for s in sent.get_finished_spans() if s.name == "GET /signup"]
        [process] = [s for s in received.get_finished_spans() if s.kind == SpanKind.CONSUMER]
        assert send.context is not None
        assert process.context is not None
        assert request.context is not None
        assert send.context.trace_id == request.context.trace_id
        assert process.name == f"process {queue_name}"
        assert process.context.trace_id == send.context.trace_id
        assert process.parent is not None
        assert process.parent.span_id == send.context.span_id
        assert send.context.span_id in [link.context.span_id for link in process.links]
        assert (process.attributes or {})["messaging.system"] == queue.system
