"""Settling jobs: acks in batches, retries, returns to the queue, dead letters, leases.

The state these methods share lives on :class:`Settling`; :class:`WorkerPool`
builds on it and decides which of them a job gets.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span

from lexigram.tasks._otel import Telemetry
from lexigram.tasks.attempts import bounded_error
from lexigram.tasks.control import AttemptOutcome, JobAttempt, JobError, JobState, require
from lexigram.tasks.errors import JobSerializationError, TaskArgumentsError, TaskTimeoutError
from lexigram.tasks.events import (
    EventBus,
    TaskCancelledEvent,
    TaskDeadLetteredEvent,
    TaskFailedEvent,
    TaskRetryingEvent,
)
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Capability, Delivery, TaskQueueProtocol
from lexigram.tasks.results import JobResult, ResultStore
from lexigram.tasks.task import Task
from lexigram.tasks.worker._settings import WorkerSettings
from lexigram.tasks.worker._support import AcksRide, DeadLetterSink, JobFailure
from lexigram.tasks.workflows._plan import STEP_HEADER
from lexigram.tasks.workflows._runtime import WorkflowRuntime, is_step

if TYPE_CHECKING:
    from lexigram.tasks.worker._process_pool import ProcessExecutor

logger = logging.getLogger("lexigram.tasks.worker")

#: Seconds before a workflow step whose state could not be recorded runs again.
_WORKFLOW_RETRY_DELAY = 1.0

#: At most this many seconds, acks wait to ride with the next lease (see
#: :meth:`Settling._acks_wait_for_lease`).
ACK_LINGER = 0.05


class Settling:
    """Acks, nacks and dead letters of one pool's jobs (the base of :class:`WorkerPool`)."""

    queue: TaskQueueProtocol
    events: EventBus
    telemetry: Telemetry
    dead_letter: DeadLetterSink | None
    result_store: ResultStore | None
    result_ttl: float | None
    settings: WorkerSettings
    worker_id: str
    _system: str
    _can_delay: bool
    _held: dict[int, Delivery]
    _to_ack: list[Delivery]
    _ack_wakeup: asyncio.Event
    _ack_lock: asyncio.Lock
    _acks_closing: bool
    #: The queue's ``dequeue_after_ack`` when its acks can ride with a lease, else None.
    _acks_ride: AcksRide | None
    #: Until when (loop time) the acks in hand wait for the next lease; None: they do not.
    _linger_until: float | None
    #: The fetch loop waits for a slot to free up before it leases again.
    _fetch_parked: bool
    _processes: ProcessExecutor | None  # created when the first process task runs
    _loop: asyncio.AbstractEventLoop
    jobs_done: int
    jobs_failed: int
    #: Advances the workflows of the steps this pool runs (set when the ack loop starts).
    _workflows: WorkflowRuntime | None = None

    async def _failed(
        self,
        job: Job,
        task: Task[Any, Any],
        delivery: Delivery,
        span: Span,
        exc: Exception,
        duration: float,
    ) -> None:
        error_type = type(exc).__qualname__
        policy = task.retry
        # Wrong arguments fail the same way every time: retrying them is pointless.
        # Runs lost with a worker are not the task's own (lost_lease_retries bounds
        # them): a job gets 1 + max_retries runs that end in a result or an error.
        will_retry = (
            job.failures < job.max_retries
            and policy.should_retry(exc)
            and not isinstance(exc, TaskArgumentsError)
        )
        tb = "".join(traceback.format_exception(exc))
        now = time.time()
        if isinstance(exc, TaskTimeoutError):
            outcome = AttemptOutcome.TIMED_OUT
        else:
            outcome = AttemptOutcome.RETRYING if will_retry else AttemptOutcome.FAILED
        delivery.worker_id = self.worker_id
        delivery.attempt_record = JobAttempt(
            job.attempt,
            outcome,
            self.worker_id,
            now - duration,
            now,
            bounded_error(error_type, str(exc), tb),
            will_retry,
        )
        self.jobs_failed += 1
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
            await self._dead_letter(delivery, error_type, str(exc), tb, span, JobState.FAILED)
            return
        delay = policy.delay(job.failures + 1) if self._can_delay else 0.0
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
        job.failures += 1  # written back with the job: this attempt was not a lost lease
        delivery.outcome = JobState.RETRYING
        delivery.error = JobError(error_type, str(exc))
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
        state: JobState = JobState.DEAD,
    ) -> None:
        """Set the job aside for good: ``FAILED`` when its task failed, else ``DEAD``."""
        job = delivery.job
        if job is not None and STEP_HEADER in job.headers and self._workflows is not None:
            try:
                await self._workflows.step_failed(job, error_type, message)
            except Exception:
                logger.exception("recording the failure of workflow step %s failed", job.id)
                await self._return_to_queue(delivery, delay=_WORKFLOW_RETRY_DELAY)
                return
        delivery.outcome = state
        delivery.error = JobError(error_type, message)
        delivery.worker_id = self.worker_id
        if delivery.attempt_record is None and job is not None:  # set aside without running
            error = bounded_error(error_type, message, tb)
            delivery.attempt_record = JobAttempt(
                job.attempt, AttemptOutcome.DEAD, self.worker_id, None, time.time(), error
            )
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

    async def _settle_cancelled(
        self, job: Job, delivery: Delivery, span: Span | None, duration: float
    ) -> None:
        """The job ends ``cancelled``: acked, not retried, not dead-lettered."""
        if span is not None:
            self.telemetry.record_cancelled(span)
        else:
            self.telemetry.record_cancelled_unstarted(job, self._system, self.queue.queue_name)
        logger.info("job %s (%s) cancelled", job.id, job.task)
        if self.result_store is not None:
            await asyncio.shield(self._store_result(JobResult.cancelled(job.id)))
        if self.events.wants(TaskCancelledEvent):
            await self.events.emit(
                TaskCancelledEvent(job, job.queue, self.worker_id, duration=duration)
            )
        if STEP_HEADER in job.headers and self._workflows is not None:
            try:
                await self._workflows.step_cancelled(job)
            except Exception:
                logger.exception("cancelling the workflow of step %s failed", job.id)
        delivery.outcome = JobState.CANCELLED
        delivery.error = None
        delivery.worker_id = self.worker_id
        self._to_ack.append(delivery)
        self._ack_wakeup.set()

    def _on_cancel(self, job_id: str) -> None:
        """A cancellation of ``job_id`` was heard (see ``Cancelling``)."""
        raise NotImplementedError

    async def _extend_limits(self) -> None:
        """Extend the concurrency slots of the jobs running (see ``Limiting``)."""

    async def _take_batch_limits(self, deliveries: list[Delivery]) -> None:
        """Take the concurrency slots of a fetched batch (see ``Limiting``)."""

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
        delivery.outcome = None  # simply queued again
        delivery.error = None
        delivery.attempt_record = None  # not an attempt: it did not use one up
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
        """Ack finished jobs in batches; on stop it finishes the batch in hand, then returns."""
        if self._workflows is None:
            self._workflows = WorkflowRuntime(self)
        while not self._acks_closing:
            await self._ack_wakeup.wait()
            self._ack_wakeup.clear()
            if self._acks_wait_for_lease():
                continue
            self._linger_until = None
            async with self._ack_lock:
                await self._flush_acks(retries=None)

    def _acks_wait_for_lease(self) -> bool:
        """Whether the acks in hand are left to the fetch loop's next lease, to go out
        in the same write (one round trip less for each).

        They are while the fetch loop waits for jobs in line for a child process
        to start: it leases again after the next few of those, and takes the acks
        then (:meth:`_acks_for_lease`). At most :data:`ACK_LINGER` seconds after the
        first of them: then they go on their own.
        """
        if self._acks_ride is None or self._acks_closing or not self._to_ack:
            return False
        if self._workflow_acks():
            return False
        now = self._loop.time()
        until = self._linger_until
        if until is None:
            processes = self._processes
            if not self._fetch_parked or processes is None or not processes.waiting:
                return False
            self._linger_until = until = now + ACK_LINGER
            self._loop.call_at(until, self._ack_wakeup.set)
        return now < until

    def _workflow_acks(self) -> bool:
        """Whether :meth:`_flush_acks` has workflow work to do before acks go out."""
        workflows = self._workflows
        return workflows is not None and bool(workflows.acked_early or workflows.results_waiting)

    def _acks_for_lease(self) -> list[Delivery]:
        """The acks left to this lease by the ack loop (see :meth:`_acks_wait_for_lease`)."""
        if self._linger_until is None or self._workflow_acks():
            return []  # the ack loop's, when the linger ends
        self._linger_until = None
        acks, self._to_ack = self._to_ack, []
        return acks

    def _acked(self, batch: list[Delivery]) -> None:
        for delivery in batch:
            self._held.pop(id(delivery), None)

    async def _flush_acks(self, retries: int | None) -> None:
        attempt = 0
        while self._to_ack:
            batch, self._to_ack = self._to_ack, []
            workflows = self._workflows
            if workflows is not None and workflows.acked_early:
                batch = workflows.not_acked_yet(batch)
            if workflows is not None and workflows.results_waiting:
                steps = [d for d in batch if is_step(d)]
                if steps:
                    batch = await self._advance_workflows(batch, steps)
            try:
                await self.queue.ack_many(batch)
            except asyncio.CancelledError:
                # Kept for the last flush in stop(): acking a job twice is harmless,
                # dropping an ack runs a finished job again.
                self._to_ack[:0] = batch
                raise
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
            self._acked(batch)

    async def _advance_workflows(
        self, batch: list[Delivery], steps: list[Delivery]
    ) -> list[Delivery]:
        """Record finished workflow steps before their ack; returns what to ack.

        When the store cannot be reached the steps are not acked but handed
        back to run again a little later, so no workflow is left stalled.
        """
        assert self._workflows is not None
        try:
            await self._workflows.advance(steps)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.error(
                "recording %d finished workflow step(s) failed (%s: %s); they run again",
                len(steps),
                type(exc).__name__,
                exc,
            )
            for delivery in steps:
                await self._return_to_queue(delivery, delay=_WORKFLOW_RETRY_DELAY)
            held = {id(d) for d in steps}
            return [d for d in batch if id(d) not in held]
        return batch

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.lease_seconds / 3
        # The fallback of the control channel: a cancellation it missed is found here.
        asks = (
            require(self.queue, "cancel_requested", Capability.CANCEL)
            if Capability.CANCEL in self.queue.capabilities
            else None
        )
        while True:
            await asyncio.sleep(interval)
            await self._extend_limits()
            held = list(self._held.values())
            if not held:
                continue
            try:
                await self.queue.extend_lease(held, self.settings.lease_seconds)
            except Exception as exc:
                logger.warning("extending %d lease(s) failed: %s", len(held), exc)
            if asks is None:
                continue
            try:
                cancelled: set[str] = await asks(held)
            except Exception as exc:
                logger.warning("asking for cancellations failed: %s: %s", type(exc).__name__, exc)
                continue
            for job_id in cancelled:
                self._on_cancel(job_id)
