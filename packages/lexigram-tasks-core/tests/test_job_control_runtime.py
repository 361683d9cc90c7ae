"""Job visibility and control in the worker and provider, on the memory backend.

States through a job's life seen via ``handle.status()``, cancellation of
pending and running jobs, ``current_job()`` with coalesced progress, the
live-worker list, and how the worker marks each settled delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lexigram.tasks import (
    CancelOutcome,
    Capability,
    CapabilityNotSupportedError,
    Delivery,
    JobCancelledError,
    JobState,
    MemoryTaskQueue,
    NoCurrentJobError,
    TaskCancelledEvent,
    TaskCompletedEvent,
    TaskError,
    TaskFailedEvent,
    TaskProvider,
    current_job,
)
from lexigram.tasks.control import JobInfo, Progress
from lexigram.tasks.testing import eventually
from lexigram.tasks.worker import JobFailure

pytestmark = pytest.mark.timeout(60)


class CountingQueue(MemoryTaskQueue):
    """The memory backend, counting progress writes and recording how each job was settled."""

    def __init__(self, queue_name: str = "default") -> None:
        super().__init__(queue_name)
        self.progress_writes: list[Progress] = []
        self.settled: list[tuple[str, str | None, JobState | None, str | None]] = []

    async def record_progress(self, delivery: Delivery, progress: Progress) -> None:
        self.progress_writes.append(progress)
        await super().record_progress(delivery, progress)

    def _note(self, how: str, delivery: Delivery) -> None:
        error = delivery.error.type if delivery.error is not None else None
        self.settled.append((how, delivery.job_id, delivery.outcome, error))

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self._note("ack", delivery)
        await super().ack_many(deliveries)

    async def nack(
        self, delivery: Delivery, *, requeue: bool, delay: float = 0.0, reason: str = ""
    ) -> None:
        self._note("requeue" if requeue else "dead", delivery)
        await super().nack(delivery, requeue=requeue, delay=delay, reason=reason)


class PlainQueue(MemoryTaskQueue):
    """A backend declaring none of the control capabilities."""

    capabilities = frozenset({Capability.DELAY, Capability.PRIORITY, Capability.UNIQUE})


async def state_of(handle: Any, state: JobState) -> JobInfo | None:
    info: JobInfo | None = await handle.status()
    return info if info is not None and info.state is state else None


# -- states ---------------------------------------------------------------------


async def test_states_through_a_jobs_life_via_handle_status() -> None:
    queue = CountingQueue("states")
    provider = TaskProvider(
        queue=queue, worker_count=4, strict=False, unknown_task_grace=0, registry_interval=0.05
    )
    release = asyncio.Event()

    @provider.task(name="wait")
    async def wait() -> str:
        await release.wait()
        return "done"

    @provider.task(name="flaky", max_retries=1, retry_backoff=60)
    async def flaky() -> None:
        raise RuntimeError("try again later")

    @provider.task(name="broken")
    async def broken() -> None:
        raise ValueError("bad input")

    await provider.connect()
    running = await wait.enqueue()
    assert (await running.status()).state is JobState.QUEUED  # type: ignore[union-attr]
    later = await wait.options(delay=60).enqueue()
    assert (await later.status()).state is JobState.SCHEDULED  # type: ignore[union-attr]
    retried = await flaky.enqueue()
    failed = await broken.enqueue()
    dead = await provider.enqueue("nobody.has.this")
    async with provider:
        info = await eventually(lambda: state_of(running, JobState.RUNNING))
        assert info.started_at is not None

        async def run_by_this_worker() -> bool:
            # Recorded by the backend, or found in the live-worker list.
            info = await running.status()
            return info is not None and info.worker_id == provider.worker_id

        await eventually(run_by_this_worker)
        info = await eventually(lambda: state_of(retried, JobState.RETRYING))
        assert info.error is not None and info.error.type == "RuntimeError"
        info = await eventually(lambda: state_of(failed, JobState.FAILED))
        assert info.error is not None and info.error.message == "bad input"
        await eventually(lambda: state_of(dead, JobState.DEAD))
        release.set()
        info = await eventually(lambda: state_of(running, JobState.SUCCEEDED))
        assert (info.result, info.has_result) == ("done", True)
        assert (await later.cancel()) is CancelOutcome.CANCELLED
        await eventually(lambda: state_of(later, JobState.CANCELLED))
    assert await provider.get_job("no-such-job") is None


async def test_the_worker_marks_each_settled_delivery() -> None:
    queue = CountingQueue("outcomes")
    sink: list[JobFailure] = []

    class Sink:
        async def add(self, failure: JobFailure) -> None:
            sink.append(failure)

    provider = TaskProvider(queue=queue, dead_letter=Sink())

    @provider.task(name="ok")
    async def ok() -> int:
        return 1

    @provider.task(name="flaky", max_retries=1, retry_backoff=0.01)
    async def flaky() -> None:
        raise RuntimeError("again")

    async with provider:
        good = await ok.enqueue()
        bad = await flaky.enqueue()
        await good.result(timeout=10)
        await eventually(lambda: len(sink) == 1, timeout=10)
        await eventually(lambda: sum(1 for s in queue.settled if s[1] == bad.id) == 2)
    assert ("ack", good.id, JobState.SUCCEEDED, None) in queue.settled
    assert ("requeue", bad.id, JobState.RETRYING, "RuntimeError") in queue.settled
    # The sink took it: acked, recorded as failed (the task's own failure).
    assert ("ack", bad.id, JobState.FAILED, "RuntimeError") in queue.settled


async def test_a_job_handed_back_at_shutdown_has_no_outcome() -> None:
    queue = CountingQueue("handback")
    provider = TaskProvider(queue=queue, shutdown_timeout=0.05)
    started = asyncio.Event()

    @provider.task(name="long")
    async def long() -> None:
        started.set()
        await asyncio.sleep(60)

    async with provider:
        handle = await long.enqueue()
        await asyncio.wait_for(started.wait(), 10)
    assert queue.settled == [("requeue", handle.id, None, None)]


# -- cancellation -----------------------------------------------------------------


async def test_cancelling_queued_and_delayed_jobs_they_never_start() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue("cancel-pending"))
    ran: list[str] = []

    @provider.task(name="record")
    async def record(name: str) -> None:
        ran.append(name)

    await provider.connect()
    queued = await record.enqueue("queued")
    delayed = await record.options(delay=0.3).enqueue("delayed")
    assert await queued.cancel() is CancelOutcome.CANCELLED
    assert await provider.cancel(delayed.id) is CancelOutcome.CANCELLED
    with pytest.raises(JobCancelledError):
        await queued.result(timeout=5)
    async with provider:
        after = await record.enqueue("after")
        await after.result(timeout=10)
        await asyncio.sleep(0.4)  # past the delayed job's run_at: it must still not run
        with pytest.raises(JobCancelledError):
            await delayed.result(timeout=5)
        assert ran == ["after"]
        assert (await queued.status()).state is JobState.CANCELLED  # type: ignore[union-attr]
        assert await after.cancel() is CancelOutcome.FINISHED
    assert await provider.cancel("no-such-job") is CancelOutcome.NOT_FOUND


async def test_cancelling_a_running_async_job_stops_it_within_a_second() -> None:
    provider = TaskProvider(queue=CountingQueue("cancel-running"))
    started = asyncio.Event()
    stopped_at: list[float] = []
    events: list[object] = []
    provider.on(TaskCompletedEvent)(events.append)
    provider.on(TaskFailedEvent)(events.append)
    provider.on(TaskCancelledEvent)(events.append)

    @provider.task(name="forever", max_retries=3)
    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            stopped_at.append(time.monotonic())
            raise

    async with provider:
        handle = await forever.enqueue()
        await asyncio.wait_for(started.wait(), 10)
        asked = time.monotonic()
        assert await handle.cancel() is CancelOutcome.REQUESTED
        with pytest.raises(JobCancelledError):
            await handle.result(timeout=10)
        assert stopped_at and stopped_at[0] - asked < 1.0
        info = await eventually(lambda: state_of(handle, JobState.CANCELLED))
        assert info.attempt == 1  # not retried
        assert await provider.queue.dead_letters() == []
        await eventually(lambda: events)
    assert [type(e) for e in events] == [TaskCancelledEvent]


class LateListener(MemoryTaskQueue):
    """The memory backend whose control channel listens only once told to."""

    def __init__(self, queue_name: str) -> None:
        super().__init__(queue_name)
        self.subscribe = asyncio.Event()

    async def watch_cancellations(self, on_cancel: Any) -> None:
        await self.subscribe.wait()
        await super().watch_cancellations(on_cancel)


async def test_a_cancel_sent_before_the_channel_listened_is_caught_up_on_subscription() -> None:
    queue = LateListener("cancel-late-listener")
    provider = TaskProvider(queue=queue)  # lease 30 s: the heartbeat would ask after 10 s
    started = asyncio.Event()
    stopped: list[float] = []

    @provider.task(name="forever")
    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            stopped.append(time.monotonic())
            raise

    async with provider:
        handle = await forever.enqueue()
        await asyncio.wait_for(started.wait(), 10)
        assert await handle.cancel() is CancelOutcome.REQUESTED  # nobody listens yet
        subscribed = time.monotonic()
        queue.subscribe.set()
        await eventually(lambda: state_of(handle, JobState.CANCELLED), 8)
        assert stopped and stopped[0] - subscribed < 5.0  # long before the heartbeat


async def test_a_handler_that_swallows_the_cancellation_still_ends_cancelled() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue("cancel-swallowed"))
    started = asyncio.Event()

    @provider.task(name="stubborn")
    async def stubborn() -> str:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        return "ignored the cancellation"

    async with provider:
        handle = await stubborn.enqueue()
        await asyncio.wait_for(started.wait(), 10)
        await handle.cancel()
        with pytest.raises(JobCancelledError):
            await handle.result(timeout=10)
        # The pool goes on running jobs: its slot was not left cancelled.
        again = await stubborn.enqueue()
        started.clear()
        await asyncio.wait_for(started.wait(), 10)
        await again.cancel()
        with pytest.raises(JobCancelledError):
            await again.result(timeout=10)


async def test_a_def_task_sees_cancel_requested_and_stops_itself() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue("cancel-def"))
    started = threading.Event()

    @provider.task(name="careful")
    def careful(stop: bool) -> str:
        job = current_job()
        started.set()
        deadline = time.monotonic() + 30
        while not job.cancel_requested and time.monotonic() < deadline:
            time.sleep(0.005)
        if stop:
            job.raise_if_cancelled()
        return "finished anyway"

    async with provider:
        stopping = await careful.enqueue(True)
        await eventually(started.is_set, timeout=10)
        assert await stopping.cancel() is CancelOutcome.REQUESTED
        with pytest.raises(JobCancelledError):
            await stopping.result(timeout=10)
        await eventually(lambda: state_of(stopping, JobState.CANCELLED))

        started.clear()
        ignoring = await careful.enqueue(False)
        await eventually(started.is_set, timeout=10)
        await ignoring.cancel()
        assert await ignoring.result(timeout=10) == "finished anyway"
        await eventually(lambda: state_of(ignoring, JobState.SUCCEEDED))


async def test_the_heartbeat_finds_a_cancellation_the_channel_missed() -> None:
    class Deaf(MemoryTaskQueue):
        async def watch_cancellations(self, on_cancel: Any) -> None:
            await asyncio.get_running_loop().create_future()  # hears nothing

    provider = TaskProvider(queue=Deaf("cancel-deaf"), lease_seconds=0.3)
    started = asyncio.Event()

    @provider.task(name="forever")
    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    async with provider:
        handle = await forever.enqueue()
        await asyncio.wait_for(started.wait(), 10)
        await handle.cancel()
        with pytest.raises(JobCancelledError):
            await handle.result(timeout=10)


async def test_a_cancelled_job_counts_in_the_metric_and_its_span() -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    exporter = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    provider = TaskProvider(
        queue=MemoryTaskQueue("cancel-otel"), tracer_provider=tracers, meter_provider=meters
    )
    started = asyncio.Event()

    @provider.task(name="forever")
    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    try:
        async with provider:
            handle = await forever.enqueue()
            await asyncio.wait_for(started.wait(), 10)
            await handle.cancel()
            with pytest.raises(JobCancelledError):
                await handle.result(timeout=10)
            await eventually(lambda: [s for s in exporter.get_finished_spans() if s.events])
        [span] = [s for s in exporter.get_finished_spans() if s.name == "process cancel-otel"]
        assert [e.name for e in span.events] == ["cancelled"]
        assert span.attributes is not None
        assert span.attributes["lexigram.task.outcome"] == "cancelled"
        data = reader.get_metrics_data()
        assert data is not None
        counted = [
            point.value
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "lexigram.tasks.jobs.cancelled"
            for point in metric.data.data_points
            if isinstance(point, NumberDataPoint)
        ]
        assert counted == [1]
    finally:
        meters.shutdown()
        tracers.shutdown()


# -- current_job() and progress ---------------------------------------------------------


def test_current_job_outside_a_job_says_what_is_wrong() -> None:
    with pytest.raises(NoCurrentJobError, match="outside a running job") as caught:
        current_job()
    assert isinstance(caught.value, LookupError)
    assert isinstance(caught.value, TaskError)


async def test_current_job_gives_id_attempt_and_task() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue("current"))

    @provider.task(name="who")
    async def who() -> list[Any]:
        job = current_job()

        async def inner() -> str:
            return current_job().id

        # asyncio tasks it starts while it runs see it too.
        assert await asyncio.create_task(inner()) == job.id
        return [job.id, job.attempt, job.task, job.cancel_requested]

    @provider.task(name="who_def")
    def who_def() -> list[Any]:
        job = current_job()
        return [job.id, job.attempt, job.task]

    async with provider:
        handle = await who.enqueue()
        assert await handle.result(timeout=10) == [handle.id, 1, "who", False]
        other = await who_def.enqueue()
        assert await other.result(timeout=10) == [other.id, 1, "who_def"]


async def test_progress_calls_are_coalesced_into_a_handful_of_writes() -> None:
    queue = CountingQueue("coalesce")
    exporter = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    provider = TaskProvider(queue=queue, tracer_provider=tracers, progress_interval=0.2)
    calls = 10_000

    @provider.task(name="chatty")
    async def chatty() -> float:
        job = current_job()
        began = time.monotonic()
        for number in range(1, calls + 1):
            await job.progress(number / calls, f"step {number}")
            if number % 100 == 0:
                await asyncio.sleep(0.005)  # some real work between reports
        await job.set_meta({"rows": calls})
        return time.monotonic() - began

    try:
        async with provider:
            handle = await chatty.enqueue()
            took = await handle.result(timeout=30)
            info = await eventually(lambda: state_of(handle, JobState.SUCCEEDED))
    finally:
        tracers.shutdown()
    writes = len(queue.progress_writes)
    # One write per interval at most, plus the first and the final flush.
    assert 1 <= writes <= took / 0.2 + 3, (writes, took)
    assert writes < 50
    last = queue.progress_writes[-1]
    assert (last.fraction, last.message) == (1.0, f"step {calls}")
    assert info.progress == 1.0 and info.progress_message == f"step {calls}"
    assert info.meta == {"rows": calls}
    [span] = [s for s in exporter.get_finished_spans() if s.name == "process coalesce"]
    progress_events = [e for e in span.events if e.name == "progress"]
    assert len(progress_events) == writes
    assert progress_events[-1].attributes == {
        "lexigram.progress.fraction": 1.0,
        "lexigram.progress.message": f"step {calls}",
    }


async def test_progress_is_visible_in_status_while_the_job_runs() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue("progress-status"), progress_interval=0.05)
    release = asyncio.Event()
    threaded = threading.Event()

    @provider.task(name="halfway")
    async def halfway() -> None:
        job = current_job()
        await job.progress(0.5, "half")
        await job.set_meta({"stage": "copy"})
        await release.wait()

    @provider.task(name="halfway_def")
    def halfway_def() -> None:
        job = current_job()
        job.progress_sync(0.25, "a quarter")
        job.set_meta_sync({"thread": True})
        threaded.wait(30)

    async def shows(handle: Any, fraction: float) -> JobInfo | None:
        # The two reports may be written apart (one write per progress_interval).
        info: JobInfo | None = await handle.status()
        return info if info is not None and info.progress == fraction and info.meta else None

    async with provider:
        handle = await halfway.enqueue()
        info = await eventually(lambda: shows(handle, 0.5))
        assert (info.state, info.progress_message, info.meta) == (
            JobState.RUNNING,
            "half",
            {"stage": "copy"},
        )
        release.set()
        await handle.result(timeout=10)
        in_thread = await halfway_def.enqueue()
        info = await eventually(lambda: shows(in_thread, 0.25))
        assert (info.progress_message, info.meta) == ("a quarter", {"thread": True})
        threaded.set()
        await in_thread.result(timeout=10)


async def test_a_progress_fraction_outside_0_to_1_is_refused() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue("progress-bad"))

    @provider.task(name="bad")
    async def bad(fraction: Any) -> str:
        try:
            await current_job().progress(fraction)
        except (ValueError, TypeError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return "accepted"

    async with provider:
        assert "between 0.0 and 1.0" in await (await bad.enqueue(1.5)).result(timeout=10)
        assert "between 0.0 and 1.0" in await (await bad.enqueue(-0.1)).result(timeout=10)
        assert "TypeError" in await (await bad.enqueue("half")).result(timeout=10)
        assert await (await bad.enqueue(1)).result(timeout=10) == "accepted"


# -- workers and capabilities ---------------------------------------------------------


async def test_workers_lists_the_pool_and_it_disappears_after_stop() -> None:
    queue = MemoryTaskQueue("workers")
    provider = TaskProvider(queue=queue, worker_count=3, registry_interval=0.05)
    release = asyncio.Event()

    @provider.task(name="wait")
    async def wait() -> None:
        await release.wait()

    async with provider:
        [me] = await provider.workers()
        assert me.id == provider.worker_id
        assert (me.backends, me.concurrency) == (["default"], 3)
        handle = await wait.enqueue()

        async def running() -> bool:
            [info] = await provider.workers()
            return info.running == [handle.id]

        await eventually(running)
        release.set()
        await handle.result(timeout=10)

        async def counted() -> bool:
            [info] = await provider.workers()
            return info.done == 1 and info.running == []

        await eventually(counted)
    assert await provider.workers() == []


async def test_a_backend_without_the_capabilities_says_so_clearly() -> None:
    provider = TaskProvider(queue=PlainQueue("plain"))

    @provider.task(name="noop")
    async def noop() -> None:
        return None

    async with provider:
        handle = await noop.enqueue()
        await handle.result(timeout=10)
        with pytest.raises(CapabilityNotSupportedError, match="list_jobs"):
            await provider.jobs()
        with pytest.raises(CapabilityNotSupportedError, match="cancel"):
            await handle.cancel()
        with pytest.raises(CapabilityNotSupportedError, match="workers"):
            await provider.workers()
        # The result store still knows a finished job.
        info = await handle.status()
        assert info is not None and (info.state, info.has_result) == (JobState.SUCCEEDED, True)
        with pytest.raises(CapabilityNotSupportedError, match="look jobs up"):
            await provider.get_job("unknown")


async def test_jobs_lists_a_backend_by_state_and_task() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue("listing"))

    @provider.task(name="a")
    async def a() -> None:
        return None

    await provider.connect()
    first = await a.enqueue()
    second = await a.enqueue()
    page = await provider.jobs(state="queued", task="a", limit=1)
    assert [j.id for j in page.jobs] == [first.id]
    assert page.cursor is not None
    page = await provider.jobs(state=JobState.QUEUED, limit=10, cursor=page.cursor)
    assert [j.id for j in page.jobs] == [second.id]
    with pytest.raises(ValueError, match="unknown backend"):
        await provider.jobs(backend="nope")
    await provider.disconnect()


async def test_a_job_cancelled_while_in_line_never_starts() -> None:
    from lexigram.tasks import Job, JobResult, MemoryResultStore, WorkerPool

    queue = MemoryTaskQueue("in-line")
    store = MemoryResultStore()
    release = asyncio.Event()
    ran: list[str] = []

    async def block(name: str) -> None:
        ran.append(name)
        await release.wait()

    from lexigram.tasks import Task

    provider = TaskProvider(queue=queue)
    task: Task[Any, Any] = provider.task(name="block")(block)
    pool = WorkerPool(queue, {"block": task}, result_store=store, worker_count=1)
    await queue.connect()
    await pool.start()
    try:
        await queue.enqueue(Job(task="block", args=["first"], queue="in-line"))
        await eventually(lambda: ran == ["first"])
        second = Job(task="block", args=["second"], queue="in-line")
        await queue.enqueue(second)
        # Leased and waiting for a slot, as the fetch loop leaves a job in line.
        [delivery] = await queue.dequeue(max_jobs=1)
        pool._held[id(delivery)] = delivery
        pool._busy += 1
        pool._ready.append(delivery)
        assert await queue.cancel(second.id) is CancelOutcome.REQUESTED
        outcome: JobResult = await store.wait(second.id, timeout=10)
        assert outcome.status == "cancelled"
        await eventually(lambda: state_of_queue(queue, second.id, JobState.CANCELLED))
        assert not pool._ready and ran == ["first"]
    finally:
        release.set()
        await pool.stop()
        await queue.disconnect()


async def state_of_queue(queue: MemoryTaskQueue, job_id: str, state: JobState) -> bool:
    info = await queue.get_job(job_id)
    return info is not None and info.state is state
