"""WorkerPool: runs jobs from one queue with bounded concurrency.

One fetch loop leases as many jobs as there are free slots; each job runs in
its own asyncio task (plain functions in a thread pool); finished jobs are
acked in batches by one ack loop, and a heartbeat extends the leases of
every job still held. Retry policy, events, tracing and dead-lettering live
here, once, so every backend gets them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from opentelemetry.trace import Span

from lexigram.tasks._otel import Telemetry
from lexigram.tasks.errors import JobSerializationError, TaskTimeoutError, UnknownTaskError
from lexigram.tasks.events import (
    EventBus,
    TaskCompletedEvent,
    TaskDeadLetteredEvent,
    TaskFailedEvent,
    TaskRetryingEvent,
    TaskStartedEvent,
)
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Capability, Delivery, TaskQueueProtocol
from lexigram.tasks.ratelimit import LocalRateLimiter, Rate, RateLimiter
from lexigram.tasks.results import JobResult, ResultStore
from lexigram.tasks.task import Task

logger = logging.getLogger("lexigram.tasks.worker")

GLOBAL_RATE_KEY = "lexigram:global"


@dataclass(frozen=True, slots=True)
class JobFailure:
    """A job (or undecodable message) that failed for good, as given to a dead-letter sink."""

    job: Job | None
    payload: bytes
    queue: str
    reason: str
    error_type: str
    error_message: str
    traceback: str
    attempts: int
    worker_id: str
    failed_at: float = field(default_factory=time.time)
    trace_context: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class DeadLetterSink(Protocol):
    """Receives jobs that exhausted their retries and messages that are not valid jobs.

    ``lexigram-tasks-dlq``'s ``DeadLetterQueue`` is one. Without a sink the
    backend keeps such messages itself (``queue.dead_letters()``).
    """

    async def add(self, failure: JobFailure) -> None: ...


class WorkerPool:
    """Runs jobs from ``queue`` with the handlers in ``tasks``.

    Defaults follow the documentation: one worker, 0.5 s poll interval,
    300 s per-task timeout, 30 s graceful-shutdown window. A job whose worker
    died (its lease lapsed) may run ``lost_lease_retries`` more times than its
    own ``max_retries`` allow before it is dead-lettered.
    """

    def __init__(
        self,
        queue: TaskQueueProtocol,
        tasks: Mapping[str, Task[Any, Any]],
        *,
        worker_count: int = 1,
        poll_interval: float = 0.5,
        default_timeout: float = 300.0,
        shutdown_timeout: float = 30.0,
        lease_seconds: float = 30.0,
        result_store: ResultStore | None = None,
        result_ttl: float | None = None,
        events: EventBus | None = None,
        telemetry: Telemetry | None = None,
        dead_letter: DeadLetterSink | None = None,
        rate_limiter: RateLimiter | None = None,
        global_rate_limit: Rate | None = None,
        worker_id: str | None = None,
        blocked_loop_warning: float = 1.0,
        lost_lease_retries: int = 2,
    ) -> None:
        if worker_count < 1:
            raise ValueError(f"worker_count must be >= 1, got {worker_count}")
        if lease_seconds <= 0 or poll_interval <= 0:
            raise ValueError("lease_seconds and poll_interval must be > 0")
        self.queue = queue
        self.tasks = tasks
        self.worker_count = worker_count
        self.poll_interval = poll_interval
        self.default_timeout = default_timeout
        self.shutdown_timeout = shutdown_timeout
        self.lease_seconds = lease_seconds
        self.result_store = result_store
        self.result_ttl = result_ttl
        self.events = events or EventBus()
        self.telemetry = telemetry or Telemetry()
        self.dead_letter = dead_letter
        self.rate_limiter = rate_limiter or LocalRateLimiter()
        self.global_rate_limit = global_rate_limit
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.blocked_loop_warning = blocked_loop_warning
        self.lost_lease_retries = lost_lease_retries
        self._system = queue.system
        self._can_delay = Capability.DELAY in queue.capabilities
        self._active: dict[asyncio.Task[None], Job | None] = {}
        self._held: dict[int, Delivery] = {}
        self._to_ack: list[Delivery] = []
        self._ack_wakeup = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._stopping = False
        self._started = False
        self._stopped = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._fetcher: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._watchdog: _LoopWatchdog | None = None
        self.processed = 0

    def __repr__(self) -> str:
        return f"WorkerPool(queue={self.queue!r}, worker_count={self.worker_count})"

    @property
    def running(self) -> int:
        """Jobs being executed right now."""
        return len(self._active)

    async def start(self) -> None:
        """Start fetching and running jobs (the queue must be connected)."""
        if self._started:
            return
        self._started = True
        self._stopping = False
        self._stopped.clear()
        span = self._worker_span("start")
        self._executor = ThreadPoolExecutor(self.worker_count, thread_name_prefix="lexigram-task")
        self._fetcher = asyncio.create_task(self._fetch_loop(), name="lexigram-fetch")
        self._background = [
            asyncio.create_task(self._ack_loop(), name="lexigram-ack"),
            asyncio.create_task(self._heartbeat_loop(), name="lexigram-heartbeat"),
        ]
        if self.blocked_loop_warning > 0:
            self._watchdog = _LoopWatchdog(self.blocked_loop_warning, self._describe_running)
            self._watchdog.start()
        span.end()
        logger.debug("worker %s started on %r", self.worker_id, self.queue)

    async def stop(self) -> None:
        """Stop taking jobs, let running ones finish within ``shutdown_timeout``,
        return the rest to the queue, and flush pending acks."""
        if not self._started or self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._slot_free.set()
        span = self._worker_span("stop")
        if self._fetcher is not None:
            # On timeout wait_for cancels it; leased-but-unstarted jobs lapse back.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fetcher, self.poll_interval + 5)
        if self._active:
            _, pending = await asyncio.wait(list(self._active), timeout=self.shutdown_timeout)
            for task in pending:
                task.cancel()
            if pending:
                logger.warning(
                    "shutdown timeout (%gs) reached: returning %d running job(s) to the queue",
                    self.shutdown_timeout,
                    len(pending),
                )
                await asyncio.gather(*pending, return_exceptions=True)
        for task in self._background:
            task.cancel()
        # Bounded: on Python 3.11 a library's asyncio.wait_for can swallow a
        # cancellation (CPython gh-86296), and an unbounded wait would hang stop().
        await asyncio.wait(self._background, timeout=5.0)
        await self._flush_acks(retries=3)
        if self._watchdog is not None:
            self._watchdog.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._started = False
        self._stopped.set()
        span.end()
        logger.debug("worker %s stopped after %d jobs", self.worker_id, self.processed)

    def _worker_span(self, operation: str) -> Span:
        return self.telemetry.worker_span(
            operation, self._system, self.queue.queue_name, self.worker_id, self.worker_count
        )

    async def wait_stopped(self) -> None:
        """Return once :meth:`stop` has finished."""
        await self._stopped.wait()

    # -- fetching --------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        failures = 0
        while not self._stopping:
            free = self.worker_count - len(self._active)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                deliveries = await self.queue.dequeue(
                    max_jobs=free, lease_seconds=self.lease_seconds, wait=self.poll_interval
                )
            except Exception as exc:
                failures += 1
                pause = min(self.poll_interval * 2**failures, 10.0)
                logger.error(
                    "fetching from %r failed (%s: %s); retrying in %.1fs",
                    self.queue,
                    type(exc).__name__,
                    exc,
                    pause,
                )
                await asyncio.sleep(pause)
                continue
            failures = 0
            for delivery in deliveries:
                self._held[id(delivery)] = delivery
                if self._stopping:
                    await self._return_to_queue(delivery)
                    continue
                task = asyncio.create_task(self._execute(delivery))
                self._active[task] = delivery.job
                task.add_done_callback(self._on_done)
            if deliveries:
                # Let the new jobs start before going back for more: fetching
                # again first would delay every job by the cost of a dequeue.
                await asyncio.sleep(0)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        self._active.pop(task, None)
        self.processed += 1
        self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("job runner crashed", exc_info=task.exception())

    # -- running one job -------------------------------------------------------

    async def _execute(self, delivery: Delivery) -> None:
        job = delivery.job
        if job is None:
            reason = f"malformed: {delivery.problem}"
            await self._dead_letter(delivery, "MalformedJobError", delivery.problem or "", "", None)
            logger.warning("dead-lettered a message that is not a valid job: %s", reason)
            return
        # A job whose worker died comes back with its attempt used up; it gets
        # ``lost_lease_retries`` extra runs beyond its own retries, so a killed
        # worker's job still runs, while a job that kills every worker stops.
        if job.attempt > job.max_retries + 1 + self.lost_lease_retries:
            message = (
                f"gave up after {job.attempt - 1} attempt(s): the workers running it "
                "stopped responding (killed, crashed or lost their lease)"
            )
            await self._dead_letter(delivery, "LeaseExpired", message, "", None)
            return
        task = self.tasks.get(job.task)
        if task is not None and not await self._within_rate_limit(task, delivery):
            return
        with self.telemetry.process(job, self._system, self.worker_id) as span:
            try:
                await self._run(job, task, delivery, span)
            except asyncio.CancelledError:
                if self._stopping:
                    self.telemetry.record_outcome(span, "requeued")
                    await self._return_to_queue(delivery)
                raise

    async def _run(
        self, job: Job, task: Task[Any, Any] | None, delivery: Delivery, span: Span
    ) -> None:
        events = self.events
        if events.wants(TaskStartedEvent):
            await events.emit(TaskStartedEvent(job, job.queue, self.worker_id))
        started = time.monotonic()
        timeout = job.timeout or (task.timeout if task is not None else None)
        timeout = timeout or self.default_timeout
        deadline = asyncio.timeout(timeout)
        try:
            if task is None:
                raise UnknownTaskError(
                    f"no task named {job.task!r} is registered with this worker "
                    f"(registered: {', '.join(sorted(self.tasks)) or 'none'})"
                )
            async with deadline:
                if task.is_async:
                    result = await task.fn(*job.args, **job.kwargs)
                else:
                    result = await self._run_in_thread(task.fn, job)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                exc = TaskTimeoutError(f"task {job.task!r} exceeded its timeout of {timeout:g}s")
            await self._failed(job, task, delivery, span, exc, time.monotonic() - started)
            return
        if self.result_store is not None and task.store_result:  # task is set here
            await self._store_result(JobResult.success(job.id, result))
        if events.wants(TaskCompletedEvent):
            duration = time.monotonic() - started
            await events.emit(
                TaskCompletedEvent(job, job.queue, self.worker_id, duration=duration, result=result)
            )
        self._to_ack.append(delivery)
        self._ack_wakeup.set()

    async def _run_in_thread(self, fn: Callable[..., Any], job: Job) -> Any:
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *job.args, **job.kwargs)
        return await loop.run_in_executor(self._executor, call)

    async def _failed(
        self,
        job: Job,
        task: Task[Any, Any] | None,
        delivery: Delivery,
        span: Span,
        exc: Exception,
        duration: float,
    ) -> None:
        error_type = type(exc).__qualname__
        policy = task.retry if task is not None else None
        will_retry = job.attempt <= job.max_retries and (policy is None or policy.should_retry(exc))
        tb = "".join(traceback.format_exception(exc))
        self.telemetry.record_failure(span, exc, error_type, will_retry)
        if self.events.wants(TaskFailedEvent):
            await self.events.emit(
                TaskFailedEvent(
                    job,
                    job.queue,
                    self.worker_id,
                    error=exc,
                    error_type=error_type,
                    error_message=str(exc),
                    traceback=tb,
                    duration=duration,
                    will_retry=will_retry,
                )
            )
        if not will_retry:
            logger.error("job %s (%s) failed for good: %s: %s", job.id, job.task, error_type, exc)
            await self._dead_letter(delivery, error_type, str(exc), tb, span)
            return
        delay = (policy.delay(job.attempt) if policy else 1.0) if self._can_delay else 0.0
        reason = f"{error_type}: {exc}"
        logger.warning(
            "job %s (%s) attempt %d failed (%s); retrying in %.1fs",
            job.id,
            job.task,
            job.attempt,
            reason,
            delay,
        )
        self.telemetry.record_retry(span, delay, reason)
        await self._settle(self.queue.nack(delivery, requeue=True, delay=delay, reason=reason))
        self._held.pop(id(delivery), None)
        if self.events.wants(TaskRetryingEvent):
            await self.events.emit(
                TaskRetryingEvent(
                    job,
                    job.queue,
                    self.worker_id,
                    delay=delay,
                    error_type=error_type,
                    error_message=str(exc),
                )
            )

    async def _dead_letter(
        self,
        delivery: Delivery,
        error_type: str,
        message: str,
        tb: str,
        span: Span | None,
    ) -> None:
        job = delivery.job
        reason = f"{error_type}: {message}" if message else error_type
        if span is not None:
            self.telemetry.record_dead_letter(span, reason)
        else:
            self.telemetry.record_unprocessed_dead_letter(
                job, self._system, self.queue.queue_name, error_type, reason
            )
        if self.dead_letter is not None:
            failure = JobFailure(
                job=job,
                payload=delivery.raw,
                queue=self.queue.queue_name,
                reason=reason,
                error_type=error_type,
                error_message=message,
                traceback=tb,
                attempts=job.attempt if job is not None else 0,
                worker_id=self.worker_id,
                trace_context=dict(job.headers) if job is not None else {},
            )
            try:
                await self.dead_letter.add(failure)
            except Exception:
                logger.exception("dead-letter sink failed; the backend keeps the message instead")
            else:
                self._to_ack.append(delivery)
                self._ack_wakeup.set()
                await self._after_dead_letter(delivery, reason, error_type, message)
                return
        await self._settle(self.queue.nack(delivery, requeue=False, reason=reason))
        self._held.pop(id(delivery), None)
        await self._after_dead_letter(delivery, reason, error_type, message)

    async def _after_dead_letter(
        self, delivery: Delivery, reason: str, error_type: str, message: str
    ) -> None:
        job = delivery.job
        if job is not None and self.result_store is not None:
            await self._store_result(JobResult.failure(job.id, error_type, message))
        if self.events.wants(TaskDeadLetteredEvent):
            await self.events.emit(
                TaskDeadLetteredEvent(
                    job, delivery.raw, reason, self.queue.queue_name, self.worker_id
                )
            )

    async def _within_rate_limit(self, task: Task[Any, Any], delivery: Delivery) -> bool:
        """Wait for a rate-limit slot, or hand the job back if the wait is long."""
        limits = [(f"task:{task.name}", task.rate_limit)] if task.rate_limit else []
        if self.global_rate_limit is not None:
            limits.append((GLOBAL_RATE_KEY, self.global_rate_limit))
        for key, rate in limits:
            while (wait := await self.rate_limiter.acquire(key, rate)) > 0:
                if wait <= self.poll_interval or not self._can_delay:
                    await asyncio.sleep(wait)
                    continue
                await self._return_to_queue(delivery, delay=wait, reason="rate limited")
                return False
        return True

    async def _store_result(self, result: JobResult) -> None:
        assert self.result_store is not None
        try:
            await self.result_store.set(result.job_id, result, self.result_ttl)
        except JobSerializationError as exc:
            logger.error("%s", exc)
            failure = JobResult.failure(result.job_id, "JobSerializationError", str(exc))
            await self.result_store.set(result.job_id, failure, self.result_ttl)
        except Exception:
            logger.exception("storing the result of job %s failed", result.job_id)

    async def _return_to_queue(
        self, delivery: Delivery, *, delay: float = 0.0, reason: str = "worker shutdown"
    ) -> None:
        """Give a job back without using up an attempt."""
        if delivery.job is not None:
            delivery.job.attempt -= 1
            await self._settle(self.queue.nack(delivery, requeue=True, delay=delay, reason=reason))
        self._held.pop(id(delivery), None)

    async def _settle(self, operation: Any) -> None:
        """Run an ack/nack; a failure leaves the lease to lapse, so the job is not lost."""
        try:
            await asyncio.shield(operation)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.error(
                "settling a job failed (%s: %s); it will be redelivered when its lease lapses",
                type(exc).__name__,
                exc,
            )

    # -- acks and leases -------------------------------------------------------

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_wakeup.wait()
            self._ack_wakeup.clear()
            await self._flush_acks(retries=None)

    async def _flush_acks(self, retries: int | None) -> None:
        attempt = 0
        while self._to_ack:
            batch, self._to_ack = self._to_ack, []
            try:
                await self.queue.ack_many(batch)
            except Exception as exc:
                attempt += 1
                self._to_ack[:0] = batch
                if retries is not None and attempt > retries:
                    logger.error(
                        "could not ack %d job(s) (%s); they will run again after their lease",
                        len(batch),
                        exc,
                    )
                    self._to_ack.clear()
                    return
                logger.warning("ack failed (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(min(0.1 * 2**attempt, 5.0))
                continue
            for delivery in batch:
                self._held.pop(id(delivery), None)

    async def _heartbeat_loop(self) -> None:
        interval = self.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            held = list(self._held.values())
            if not held:
                continue
            try:
                await self.queue.extend_lease(held, self.lease_seconds)
            except Exception as exc:
                logger.warning("extending %d lease(s) failed: %s", len(held), exc)

    def _describe_running(self) -> str:
        names = [job.task for job in list(self._active.values()) if job is not None]
        return ", ".join(sorted(set(names))) or "no task"


class _LoopWatchdog:
    """Warns when the event loop stops turning: a handler doing blocking work in ``async def``."""

    def __init__(self, threshold: float, describe: Callable[[], str]) -> None:
        self.threshold = threshold
        self.describe = describe
        self._loop = asyncio.get_running_loop()
        self._last = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="lexigram-watchdog", daemon=True)

    def start(self) -> None:
        self._tick()
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._timer is not None:
            self._timer.cancel()

    def _tick(self) -> None:
        self._last = time.monotonic()
        self._timer = self._loop.call_later(self.threshold / 4, self._tick)

    def _watch(self) -> None:
        warned = False
        while not self._done.wait(self.threshold / 2):
            lag = time.monotonic() - self._last
            if lag > self.threshold and not warned:
                warned = True
                try:
                    running = self.describe()
                except RuntimeError:
                    running = "unknown"
                logger.warning(
                    "the event loop has been blocked for %.1fs (running: %s). A task doing "
                    "blocking work should be a plain 'def' (it then runs in a thread) or await "
                    "non-blocking calls",
                    lag,
                    running,
                )
            elif lag <= self.threshold:
                warned = False
