"""Running jobs for :class:`WorkerPool`: the slot loops, timeouts, threads, rate limits.

A slot is a long-lived coroutine that takes the next job in line; one
sweeper timer enforces every slot's timeout.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span

from lexigram.tasks.control import JobState
from lexigram.tasks.current import ProgressSink, seat
from lexigram.tasks.errors import JobCancelledError, TaskArgumentsError, TaskTimeoutError
from lexigram.tasks.events import TaskCompletedEvent, TaskStartedEvent
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Delivery
from lexigram.tasks.ratelimit import Rate, RateLimiter
from lexigram.tasks.results import JobResult
from lexigram.tasks.task import Task
from lexigram.tasks.worker._limits import Limiting, LimitKeyError, job_key
from lexigram.tasks.worker._support import DaemonThreads, DeadlineSweeper, Slot
from lexigram.tasks.workflows._plan import STEP_HEADER

if TYPE_CHECKING:
    from lexigram.tasks.worker._process_pool import ProcessExecutor
    from lexigram.tasks.workflows._runtime import WorkflowRuntime

logger = logging.getLogger("lexigram.tasks.worker")

GLOBAL_RATE_KEY = "lexigram:global"

#: Extra job field: when a worker first saw the job's task as unknown (Unix time).
UNKNOWN_SINCE_FIELD = "unknown_task_since"

_SUCCEEDED = JobState.SUCCEEDED  # read per job: a module global, not an enum lookup

#: Longest a job for an unknown task waits before it is offered again.
_UNKNOWN_RETRY_DELAY = 30.0


class Running(Limiting):
    """Runs the jobs in line on the pool's slots (a base of :class:`WorkerPool`)."""

    tasks: Mapping[str, Task[Any, Any]]
    rate_limiter: RateLimiter
    global_rate_limit: Rate | None
    processed: int
    _slots: list[Slot]
    _sweeper: DeadlineSweeper
    _threads: DaemonThreads | None
    _processes: ProcessExecutor | None  # created when the first process task runs
    _job_done: asyncio.Event
    _record_progress: Any  # the backend's record_progress, None without INSPECT
    _loop: asyncio.AbstractEventLoop

    async def _slot_loop(self, slot: Slot) -> None:
        """One worker coroutine: wait for a job, run it, repeat until the pool stops."""
        loop = asyncio.get_running_loop()
        ready = self._ready
        seat.set(slot)  # in this slot's own context: current_job() finds its job here
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
        if self._processes is not None and self._processes.stop_job(slot, "timeout"):
            pass  # its child is killed; the job ends once the child is gone
        elif slot.in_thread:
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
        # A workflow step back from a dead worker may have finished before it died.
        if (
            job.attempt > 1
            and job.lost_leases
            and self._workflows is not None
            and STEP_HEADER in job.headers
            and await self._skip_recorded_step(delivery)
        ):
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
        limited = task.limits.concurrent
        # Slots taken when the job was fetched (the usual case) need no call and no await.
        if (
            limited
            and id(delivery) not in self._limit_holds
            and not await self._ask_limits(task, delivery)
        ):
            return
        try:
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
        finally:
            if limited:
                giving_back = self._give_back_limits(delivery)
                if giving_back is not self._done_none:  # a limiter without release_nowait
                    await giving_back

    async def _skip_recorded_step(self, delivery: Delivery) -> bool:
        """Ack, without running it, a step whose result its killed worker recorded.

        Returns False when the step must run. When the workflow store cannot
        be reached the step is handed back for later, not run blind.
        """
        assert self._workflows is not None
        try:
            if not await self._workflows.recorded(delivery):
                return False
        except Exception as exc:
            logger.warning(
                "looking up workflow step %s failed (%s: %s); it is handed back",
                delivery.job.id if delivery.job is not None else None,
                type(exc).__name__,
                exc,
            )
            await self._return_to_queue(delivery, delay=1.0, reason="workflow store unavailable")
            return True
        delivery.outcome = _SUCCEEDED
        delivery.worker_id = self.worker_id
        self._to_ack.append(delivery)
        self._ack_wakeup.set()
        return True

    async def _ack_now(self, delivery: Delivery, workflows: WorkflowRuntime) -> None:
        """Ack a recorded final step at once, not with its batch (which then skips it)."""
        delivery.outcome = _SUCCEEDED
        delivery.worker_id = self.worker_id
        try:
            await self.queue.ack_many([delivery])
        except Exception:
            return  # acked with its batch
        workflows.acked_early.add(id(delivery))
        self._held.pop(id(delivery), None)

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
        slot.span = span
        try:
            if task.executor == "process" or (
                task.executor is None
                and not task.is_async
                and self.settings.default_executor == "process"
            ):
                from lexigram.tasks.worker._process_pool import run_in_process

                result = await run_in_process(self, slot, task, job, timeout, span)
            elif task.is_async:
                runner = slot.runner
                cancelling = runner.cancelling()
                slot.in_thread = False
                slot.timeout = timeout
                slot.deadline = deadline = started + timeout
                if deadline < self._sweeper.at:
                    self._sweeper.arm(deadline)
                stopped = False
                try:
                    result = await task.fn(*job.args, **job.kwargs)
                except asyncio.CancelledError:
                    if slot.expired or slot.cancelled:
                        left, stopped = self._undo_cancels(slot, runner)
                        if left <= cancelling:  # not also a shutdown
                            if stopped:
                                raise JobCancelledError(job.id) from None
                            raise self._timed_out(job, timeout) from None
                    raise
                finally:
                    slot.deadline = None
                    if slot.expired or slot.cancelled:  # the handler swallowed a cancellation
                        _, stopped = self._undo_cancels(slot, runner)
                if stopped:  # cancelled, whatever the handler made of it
                    raise JobCancelledError(job.id)
            else:
                result = await self._run_in_thread(slot, task, job, timeout)
        except Exception as exc:
            current = slot.current
            if current is not None and current._delivery is delivery:
                await current.flush()
            if isinstance(exc, JobCancelledError) and exc.job_id == job.id:
                slot.finished = True
                await self._settle_cancelled(job, delivery, span, time.monotonic() - started)
                slot.finished = False
                return
            if isinstance(exc, TypeError) and not isinstance(exc, TaskArgumentsError):
                problem = task.argument_problem(job.args, job.kwargs)
                if problem is not None:
                    exc = TaskArgumentsError(
                        f"task {job.task!r} cannot take the job's arguments: {problem}"
                    )
            await self._failed(job, task, delivery, span, exc, time.monotonic() - started)
            return
        finally:
            slot.span = None  # the job is over: current_job() no longer builds one
        slot.finished = True
        current = slot.current
        if current is not None and current._delivery is delivery:
            await asyncio.shield(current.flush())
        if self.result_store is not None and task.store_result:
            # Shielded: a job that finished is acked, so its result must be stored.
            await asyncio.shield(self._store_result(JobResult.success(job.id, result)))
        workflows = self._workflows
        if workflows is not None and STEP_HEADER in job.headers:
            finishing = workflows.returned(delivery, result)
            if finishing is not None and await finishing:
                await self._ack_now(delivery, workflows)
        if events.wants(TaskCompletedEvent):
            duration = time.monotonic() - started
            await events.emit(
                TaskCompletedEvent(job, job.queue, self.worker_id, duration=duration, result=result)
            )
        slot.finished = False
        self.jobs_done += 1
        delivery.outcome = _SUCCEEDED
        delivery.worker_id = self.worker_id
        self._to_ack.append(delivery)
        self._ack_wakeup.set()

    @staticmethod
    def _undo_cancels(slot: Slot, runner: asyncio.Task[None]) -> tuple[int, bool]:
        """Undo the runner cancellations the pool made for this job (a timeout, a
        cancellation asked for); returns the cancellations left and whether it was asked."""
        asked = slot.cancelled
        left = runner.cancelling()
        if slot.expired:
            slot.expired = False
            left = runner.uncancel()
        if slot.cancelled:
            slot.cancelled = False
            left = runner.uncancel()
        return left, asked

    def progress_sink(self, delivery: Delivery, span: Span) -> ProgressSink:
        """Where a running job's progress goes (built on its first report)."""
        record = self._record_progress
        write = functools.partial(record, delivery) if record is not None else None
        return ProgressSink(
            write, self.telemetry.record_progress, span, self.settings.progress_interval, self._loop
        )

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
        job = delivery.job
        assert job is not None
        limits = []
        if task.rate_limit:
            key_fn = task.limits.rate_limit_key
            try:
                name = f"task:{task.name}" + (
                    f":key:{job_key(task, job, key_fn, 'rate_limit_key')}" if key_fn else ""
                )
            except LimitKeyError as exc:
                await self._limit_key_failed(delivery, exc)
                return False
            limits.append((name, task.rate_limit))
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
