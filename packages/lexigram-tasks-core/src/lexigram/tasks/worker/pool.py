"""WorkerPool: runs jobs from one queue with bounded concurrency.

One fetch loop leases as many jobs as there are free slots and puts them in
line; a slot is a long-lived coroutine that takes the next job in line when
it is done with one (plain functions run in daemon threads), so a job costs
no asyncio task of its own, and one sweeper timer enforces every slot's
timeout instead of a timer per job. Finished jobs are acked in batches by
one ack loop, and a heartbeat extends the leases of every job still held. A
job that was running when a worker died (a "suspect") runs alone, so that a
job that kills its worker takes no innocent job with it. Retry policy,
events, tracing and dead-lettering live here, once, so every backend gets
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any, Unpack

from opentelemetry.trace import Span

from lexigram.tasks._otel import Telemetry
from lexigram.tasks.errors import (
    ConfigurationError,
    TaskArgumentsError,
    TaskTimeoutError,
)
from lexigram.tasks.events import (
    EventBus,
    TaskCompletedEvent,
    TaskStartedEvent,
)
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Capability, Delivery, TaskQueueProtocol
from lexigram.tasks.ratelimit import LocalRateLimiter, Rate, RateLimiter
from lexigram.tasks.results import JobResult, ResultStore
from lexigram.tasks.task import Task
from lexigram.tasks.worker._settings import SettingsView, WorkerSettings, WorkerSettingsKeywords
from lexigram.tasks.worker._settling import Settling
from lexigram.tasks.worker._support import (
    DaemonThreads,
    DeadLetterSink,
    DeadlineSweeper,
    LoopWatchdog,
    Slot,
)

logger = logging.getLogger("lexigram.tasks.worker")

GLOBAL_RATE_KEY = "lexigram:global"

#: Extra job field: when a worker first saw the job's task as unknown (Unix time).
UNKNOWN_SINCE_FIELD = "unknown_task_since"

#: Longest a job for an unknown task waits before it is offered again.
_UNKNOWN_RETRY_DELAY = 30.0


class WorkerPool(Settling, SettingsView):
    """Runs jobs from ``queue`` with the handlers in ``tasks``.

    ``settings`` (or its fields as keywords: ``WorkerPool(q, tasks,
    worker_count=4)``) says how it runs; see :class:`WorkerSettings`. A job whose worker
    died (its lease lapsed) runs again alone, up to ``lost_lease_retries``
    times, before it is dead-lettered as ``LeaseExpired``. A job for a task
    this worker does not have goes back to the queue for other workers, and is
    dead-lettered once no worker has run it for ``unknown_task_grace`` seconds.
    """

    def __init__(
        self,
        queue: TaskQueueProtocol,
        tasks: Mapping[str, Task[Any, Any]],
        *,
        settings: WorkerSettings | None = None,
        result_store: ResultStore | None = None,
        result_ttl: float | None = None,
        events: EventBus | None = None,
        telemetry: Telemetry | None = None,
        dead_letter: DeadLetterSink | None = None,
        rate_limiter: RateLimiter | None = None,
        global_rate_limit: Rate | None = None,
        worker_id: str | None = None,
        **worker_settings: Unpack[WorkerSettingsKeywords],
    ) -> None:
        self.settings = WorkerSettings.merged(settings, worker_settings, "WorkerPool")
        self.queue = queue
        self.tasks = tasks
        self.result_store = result_store
        self.result_ttl = result_ttl
        self.events = events or EventBus()
        self.telemetry = telemetry or Telemetry()
        self.dead_letter = dead_letter
        self.rate_limiter = rate_limiter or LocalRateLimiter()
        self.global_rate_limit = global_rate_limit
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._system = queue.system
        self._can_delay = Capability.DELAY in queue.capabilities
        self._slots: list[Slot] = []
        self._ready: deque[Delivery] = deque()  # leased, waiting for a slot
        self._idle: list[Slot] = []  # slots waiting for a job
        self._waking = 0  # idle slots woken that have not looked at _ready yet
        self._wake_planned = False
        self._busy = 0  # jobs leased and not done: in line or running
        self._sweeper = DeadlineSweeper(self._slots, self._expire)
        self._held: dict[int, Delivery] = {}
        self._to_ack: list[Delivery] = []
        self._ack_wakeup = asyncio.Event()
        self._ack_lock = asyncio.Lock()
        self._acks_closing = False
        self._suspect: Delivery | None = None
        self._job_done = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._stopping = False
        self._started = False
        self._stopped = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._fetcher: asyncio.Task[None] | None = None
        self._threads: DaemonThreads | None = None
        self._watchdog: LoopWatchdog | None = None
        self.processed = 0

    def __repr__(self) -> str:
        return f"WorkerPool(queue={self.queue!r}, worker_count={self.settings.worker_count})"

    @property
    def running(self) -> int:
        """Jobs being executed right now."""
        return self._busy

    async def start(self) -> None:
        """Start fetching and running jobs (the queue must be connected).

        Raises :class:`ConfigurationError` when no task is registered: such a
        worker could only hand every job back.
        """
        if self._started:
            return
        if not self.tasks:
            raise ConfigurationError(
                f"the worker for {self.queue!r} has no tasks registered, so it cannot run any "
                "job. Register tasks with @provider.task in a module the worker imports: pass "
                "--tasks-module MODULE to 'lexigram-tasks worker', or list the modules under "
                "tasks.modules in lexigram.yaml"
            )
        self._started = True
        self._acks_closing = False
        self._stopping = False
        self._stopped.clear()
        span = self._worker_span("start")
        self._threads = DaemonThreads("lexigram-task")
        self._slots[:] = [Slot() for _ in range(self.settings.worker_count)]
        self._ready.clear()
        self._idle = []
        self._waking = 0
        self._busy = 0
        for number, slot in enumerate(self._slots, 1):
            slot.runner = asyncio.create_task(self._slot_loop(slot), name=f"lexigram-slot-{number}")
        self._fetcher = asyncio.create_task(self._fetch_loop(), name="lexigram-fetch")
        self._background = [
            asyncio.create_task(self._ack_loop(), name="lexigram-ack"),
            asyncio.create_task(self._heartbeat_loop(), name="lexigram-heartbeat"),
        ]
        if self.settings.blocked_loop_warning > 0:
            self._watchdog = LoopWatchdog(
                self.settings.blocked_loop_warning, self._describe_running
            )
            self._watchdog.start()
        span.end()
        logger.debug("worker %s started on %r", self.worker_id, self.queue)

    async def stop(self) -> None:
        """Stop taking jobs, let running ones finish within ``shutdown_timeout``,
        return the rest to the queue, and ack every job that finished.

        A plain ``def`` task still running in its thread at the deadline is
        returned to the queue like any other: its thread cannot be stopped and
        goes on in the background, its result is discarded, and it dies with
        the process.
        """
        if not self._started:
            return  # never started (or start() refused): nothing to stop
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._slot_free.set()
        span = self._worker_span("stop")
        if self._fetcher is not None:
            # The fetch loop returns what it leases once stopping; cancelling it is a
            # last resort (a dequeue that hangs), its in-flight leases then lapse.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fetcher, self.settings.poll_interval + 5)
        # Jobs in line have not started: they go back at once, as the fetch
        # loop's last batch did. Idle slots end now, busy ones after their job.
        await self._return_line()
        self._wake(len(self._idle))
        runners = [s.runner for s in self._slots if not s.runner.done()]
        if runners:
            _, pending = await asyncio.wait(runners, timeout=self.settings.shutdown_timeout)
            for task in pending:
                task.cancel()
            if pending:
                logger.warning(
                    "shutdown timeout (%gs) reached: returning %d running job(s) to the queue",
                    self.settings.shutdown_timeout,
                    len(pending),
                )
                await asyncio.gather(*pending, return_exceptions=True)
        self._sweeper.close()
        # The ack loop is asked to stop, not cancelled: cancelling it inside
        # ack_many would drop the batch it is sending.
        self._acks_closing = True
        self._ack_wakeup.set()
        ack_loop, *others = self._background
        for task in others:
            task.cancel()
        # Bounded: on Python 3.11 a library's asyncio.wait_for can swallow a
        # cancellation (CPython gh-86296), and an unbounded wait would hang stop().
        _, pending_loops = await asyncio.wait(self._background, timeout=5.0)
        if ack_loop in pending_loops:
            ack_loop.cancel()  # ack_many hangs; _flush_acks keeps its batch for the last try
            await asyncio.wait([ack_loop], timeout=1.0)
        async with self._ack_lock:
            await self._flush_acks(retries=3)
        if self._watchdog is not None:
            self._watchdog.stop()
        if self._threads is not None:
            self._threads.shutdown()
        self._started = False
        self._stopped.set()
        span.end()
        logger.debug("worker %s stopped after %d jobs", self.worker_id, self.processed)

    def _worker_span(self, operation: str) -> Span:
        return self.telemetry.worker_span(
            operation,
            self._system,
            self.queue.queue_name,
            self.worker_id,
            self.settings.worker_count,
        )

    async def wait_stopped(self) -> None:
        """Return once :meth:`stop` has finished."""
        await self._stopped.wait()

    # -- fetching --------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        failures = 0
        while not self._stopping:
            free = self.settings.worker_count - self._busy
            if free <= 0 or self._suspect is not None:
                # A suspect runs alone: lease nothing more until it is done.
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                deliveries = await self.queue.dequeue(
                    max_jobs=free,
                    lease_seconds=self.settings.lease_seconds,
                    wait=self.settings.poll_interval,
                )
            except Exception as exc:
                failures += 1
                pause = min(self.settings.poll_interval * 2**failures, 10.0)
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
                # Shielded: a cancellation must not leave some of them to lapse.
                await asyncio.shield(self._return_all(deliveries))
                break
            suspect = None
            for delivery in deliveries:
                if self._is_suspect(delivery):
                    if suspect is None:
                        suspect = delivery
                        continue
                    # One suspect at a time; the others wait in the queue, unharmed
                    # if this one kills the worker.
                    await self._return_to_queue(delivery, reason="another suspect runs alone")
                    continue
                self._busy += 1
                self._ready.append(delivery)
            if suspect is not None:
                # Started last, it waits for the jobs leased with it to finish first.
                self._suspect = suspect
                self._busy += 1
                self._ready.append(suspect)
            if self._ready:
                self._start_slots()
            if deliveries:
                # Let the new jobs start before going back for more: fetching
                # again first would delay every job by the cost of a dequeue.
                await asyncio.sleep(0)

    def _start_slots(self) -> None:
        """Get idle slots onto the jobs in line: one now, the others one turn later.

        The slot woken now may run several jobs (one that does not wait for
        anything is done before the next turn); only the jobs still in line
        then wake more slots, so no slot wakes to an empty line.
        """
        if self._waking == 0:
            self._wake(1)
        if not self._wake_planned:
            self._wake_planned = True
            asyncio.get_running_loop().call_soon(self._wake_for_line)

    def _wake_for_line(self) -> None:
        self._wake_planned = False
        self._wake(len(self._ready) - self._waking)

    def _wake(self, count: int) -> None:
        """Wake up to ``count`` idle slots."""
        while count > 0 and self._idle:
            waiter = self._idle.pop().waiter
            if waiter is not None and not waiter.done():
                self._waking += 1
                waiter.set_result(None)
            count -= 1

    def _is_suspect(self, delivery: Delivery) -> bool:
        """Its last run ended with its worker: it may be what killed it."""
        job = delivery.job
        # attempt > 1 first: a cheap test that most jobs fail.
        return (
            job is not None
            and job.attempt > 1
            and 0 < job.lost_leases <= self.settings.lost_lease_retries
        )

    async def _return_line(self) -> None:
        """Give back the jobs leased and not started yet."""
        line = list(self._ready)
        self._ready.clear()
        self._busy -= len(line)
        if self._suspect in line:
            self._suspect = None
        if line:
            await asyncio.shield(self._return_all(line))

    async def _return_all(self, deliveries: list[Delivery]) -> None:
        await asyncio.gather(*(self._return_to_queue(d) for d in deliveries))

    # -- running jobs ----------------------------------------------------------

    async def _slot_loop(self, slot: Slot) -> None:
        """One worker coroutine: wait for a job, run it, repeat until the pool stops."""
        loop = asyncio.get_running_loop()
        ready = self._ready
        while True:
            if not ready:
                if self._stopping:
                    return
                waiter = slot.waiter = loop.create_future()
                self._idle.append(slot)
                await waiter
                self._waking -= 1
                continue
            delivery = slot.delivery = ready.popleft()
            try:
                await self._handle(slot, delivery)
            except asyncio.CancelledError:
                if self._stopping:
                    if slot.finished:
                        self._to_ack.append(delivery)  # the final flush acks it
                    elif id(delivery) in self._held:
                        await self._return_to_queue(delivery)
                raise
            except Exception:
                logger.exception("job runner crashed")
            finally:
                if self._suspect is delivery:
                    self._suspect = None
                slot.delivery = None
                slot.finished = False
                self._busy -= 1
                self.processed += 1
                self._slot_free.set()
                if self._suspect is not None:
                    self._job_done.set()  # the suspect waits to run alone

    def _expire(self, slot: Slot) -> None:
        """The sweeper found ``slot`` past its deadline."""
        if slot.in_thread:
            slot.overran = True
            job = slot.delivery.job if slot.delivery is not None else None
            logger.warning(
                "task %r (job %s) exceeded its timeout of %gs; it runs in a thread, which cannot "
                "be stopped: it keeps its worker slot, and its retry waits until it returns",
                job.task if job is not None else None,
                job.id if job is not None else None,
                slot.timeout,
            )
        else:
            # As asyncio.timeout does: cancel the task, turn the cancellation into a timeout.
            slot.expired = True
            slot.runner.cancel()

    async def _handle(self, slot: Slot, delivery: Delivery) -> None:
        job = delivery.job
        if job is None:
            reason = f"malformed: {delivery.problem}"
            await self._dead_letter(delivery, "MalformedJobError", delivery.problem or "", "", None)
            logger.warning("dead-lettered a message that is not a valid job: %s", reason)
            return
        # A job whose worker died comes back with a lost lease. It runs again,
        # alone, ``lost_lease_retries`` times, so a killed worker's job still
        # runs while a job that kills every worker stops, and takes no other job with it.
        if job.attempt > 1 and job.lost_leases > self.settings.lost_lease_retries:
            message = (
                f"gave up after {job.attempt - 1} attempt(s): the workers running it "
                f"stopped responding {job.lost_leases} time(s) (killed, crashed or lost "
                "their lease)"
            )
            await self._dead_letter(delivery, "LeaseExpired", message, "", None)
            return
        task = self.tasks.get(job.task)
        if task is None:
            await self._unknown_task(delivery, job)
            return
        if self._suspect is delivery:
            await self._wait_alone()
            if self._stopping:
                await self._return_to_queue(delivery)
                return
        if (task.rate_limit or self.global_rate_limit) and not await self._within_rate_limit(
            task, delivery
        ):
            return
        with self.telemetry.process(job, self._system, self.worker_id) as span:
            try:
                await self._run(slot, job, task, delivery, span)
            except asyncio.CancelledError:
                if self._stopping and not slot.finished:
                    self.telemetry.record_outcome(span, "requeued")
                raise

    async def _wait_alone(self) -> None:
        """Wait until no other job of this pool runs and every finished one is acked."""
        while self._busy > 1:
            self._job_done.clear()
            await self._job_done.wait()
        async with self._ack_lock:
            await self._flush_acks(retries=3)

    async def _unknown_task(self, delivery: Delivery, job: Job) -> None:
        """Hand the job back for a worker that has its task, until the grace period ends."""
        now = time.time()
        since = job.extra.get(UNKNOWN_SINCE_FIELD)
        if isinstance(since, bool) or not isinstance(since, int | float) or since > now:
            since = job.extra[UNKNOWN_SINCE_FIELD] = now
        registered = ", ".join(sorted(self.tasks))
        if now - since >= self.settings.unknown_task_grace:
            message = (
                f"no worker ran task {job.task!r} within unknown_task_grace "
                f"({self.settings.unknown_task_grace:g}s) after a worker first found it unknown; "
                f"is it registered on any worker? (this worker has: {registered})"
            )
            logger.error("job %s dead-lettered: %s", job.id, message)
            await self._dead_letter(delivery, "UnknownTaskError", message, "", None)
            return
        delay = min(_UNKNOWN_RETRY_DELAY, self.settings.unknown_task_grace / 10)
        logger.warning(
            "job %s is for task %r, which this worker does not have (it has: %s); returned "
            "to the queue for other workers, dead-lettered if none runs it within %.0fs",
            job.id,
            job.task,
            registered,
            since + self.settings.unknown_task_grace - now,
        )
        if not self._can_delay:
            # No delayed requeue: hold it briefly instead, so it does not bounce back at once.
            await asyncio.sleep(min(delay, 1.0))
            delay = 0.0
        await self._return_to_queue(delivery, delay=delay, reason=f"unknown task {job.task!r}")

    async def _run(
        self, slot: Slot, job: Job, task: Task[Any, Any], delivery: Delivery, span: Span
    ) -> None:
        events = self.events
        if events.wants(TaskStartedEvent):
            await events.emit(TaskStartedEvent(job, job.queue, self.worker_id))
        started = time.monotonic()
        timeout = job.timeout or task.timeout or self.settings.default_timeout
        try:
            if task.is_async:
                runner = slot.runner
                cancelling = runner.cancelling()
                slot.in_thread = False
                slot.timeout = timeout
                slot.deadline = deadline = started + timeout
                if deadline < self._sweeper.at:
                    self._sweeper.arm(deadline)
                try:
                    result = await task.fn(*job.args, **job.kwargs)
                except asyncio.CancelledError:
                    if slot.expired:
                        slot.expired = False
                        if runner.uncancel() <= cancelling:
                            raise self._timed_out(job, timeout) from None
                    raise
                finally:
                    slot.deadline = None
                    if slot.expired:  # the handler swallowed the sweeper's cancellation
                        slot.expired = False
                        runner.uncancel()
            else:
                result = await self._run_in_thread(slot, task, job, timeout)
        except Exception as exc:
            if isinstance(exc, TypeError) and not isinstance(exc, TaskArgumentsError):
                problem = task.argument_problem(job.args, job.kwargs)
                if problem is not None:
                    exc = TaskArgumentsError(
                        f"task {job.task!r} cannot take the job's arguments: {problem}"
                    )
            await self._failed(job, task, delivery, span, exc, time.monotonic() - started)
            return
        slot.finished = True
        if self.result_store is not None and task.store_result:
            # Shielded: a job that finished is acked, so its result must be stored.
            await asyncio.shield(self._store_result(JobResult.success(job.id, result)))
        if events.wants(TaskCompletedEvent):
            duration = time.monotonic() - started
            await events.emit(
                TaskCompletedEvent(job, job.queue, self.worker_id, duration=duration, result=result)
            )
        slot.finished = False
        self._to_ack.append(delivery)
        self._ack_wakeup.set()

    @staticmethod
    def _timed_out(job: Job, timeout: float) -> TaskTimeoutError:
        return TaskTimeoutError(f"task {job.task!r} exceeded its timeout of {timeout:g}s")

    async def _run_in_thread(
        self, slot: Slot, task: Task[Any, Any], job: Job, timeout: float
    ) -> Any:
        """Run a plain function in a thread; past its timeout, wait for the thread to end.

        A thread cannot be cancelled. Until it ends, the job keeps its slot and
        its lease, and is neither retried nor reported as failed, so two runs
        of one job never overlap. The sweeper logs the overrun at the deadline.
        """
        assert self._threads is not None
        call = functools.partial(contextvars.copy_context().run, task.fn, *job.args, **job.kwargs)
        future = self._threads.run(call)
        slot.in_thread = True
        slot.overran = False
        slot.timeout = timeout
        slot.deadline = deadline = time.monotonic() + timeout
        if deadline < self._sweeper.at:
            self._sweeper.arm(deadline)
        try:
            # Not awaited directly: cancelling the slot (shutdown) must not cancel the
            # future, whose thread goes on and sets it.
            await asyncio.wait([future])
        finally:
            slot.deadline = None
        if not slot.overran:
            return future.result()
        slot.overran = False
        logger.warning(
            "task %r (job %s) returned %.2fs after its timeout of %gs; its result is discarded",
            job.task,
            job.id,
            time.monotonic() - deadline,
            timeout,
        )
        raise self._timed_out(job, timeout)

    async def _within_rate_limit(self, task: Task[Any, Any], delivery: Delivery) -> bool:
        """Wait for a rate-limit slot, or hand the job back if the wait is long."""
        limits = [(f"task:{task.name}", task.rate_limit)] if task.rate_limit else []
        if self.global_rate_limit is not None:
            limits.append((GLOBAL_RATE_KEY, self.global_rate_limit))
        for key, rate in limits:
            while (wait := await self.rate_limiter.acquire(key, rate)) > 0:
                if wait <= self.settings.poll_interval or not self._can_delay:
                    await asyncio.sleep(wait)
                    continue
                await self._return_to_queue(delivery, delay=wait, reason="rate limited")
                return False
        return True

    def _describe_running(self) -> str:
        names = [
            slot.delivery.job.task
            for slot in list(self._slots)
            if slot.delivery is not None and slot.delivery.job is not None
        ]
        return ", ".join(sorted(set(names))) or "no task"
