"""MemoryTaskQueue: an in-process backend for tests and local development.

It keeps jobs as JSON bytes, exactly as a broker would, so code that works
here meets the same wire format, leases and dead-lettering on a real
backend. Everything is lost when the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from lexigram.tasks._memory_jobs import JobBook, MemoryJob
from lexigram.tasks.attempts import append_attempt
from lexigram.tasks.control import (
    CancelCallback,
    CancelOutcome,
    JobError,
    JobInfo,
    JobPage,
    JobState,
    Progress,
    WorkerInfo,
    listening,
)
from lexigram.tasks.job import Job, new_job_id
from lexigram.tasks.protocol import (
    BaseTaskQueue,
    Capability,
    DeadLetter,
    Delivery,
    QueueCounts,
)

logger = logging.getLogger("lexigram.tasks.memory")

_SUCCEEDED = JobState.SUCCEEDED


@dataclass(slots=True)
class _Worker:
    info: WorkerInfo
    expires: float


@dataclass(slots=True)
class _Control:
    """Cancellation listeners and registered workers."""

    listeners: list[CancelCallback] = field(default_factory=list)
    workers: dict[str, _Worker] = field(default_factory=dict)


class MemoryTaskQueue(BaseTaskQueue):
    """An ``asyncio``-based queue living in this process.

    Honours delays, priorities (0-9, higher first), dedup keys and leases
    like the persistent backends, and implements job inspection,
    cancellation and the worker registry
    (:class:`~lexigram.tasks.control.JobControlProtocol`). Finished jobs stay
    visible, at least the last ``max_finished`` of them (the oldest are
    forgotten first, in batches).
    Jobs are lost on restart, so the provider warns when it is used outside
    development or testing.
    """

    system = "memory"
    capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.PRIORITY,
            Capability.UNIQUE,
            Capability.INSPECT,
            Capability.CANCEL,
            Capability.WORKERS,
            Capability.ATTEMPTS,
        }
    )

    def __init__(self, queue_name: str = "default", *, max_finished: int = 10_000) -> None:
        self.queue_name = queue_name
        self._entries: dict[str, MemoryJob] = {}
        self._ready: list[tuple[int, int, str]] = []  # (-priority, seq, id)
        self._delayed: list[tuple[float, int, str]] = []  # (run_at, seq, id)
        self._leases: list[tuple[float, int, str]] = []  # (deadline, token, id)
        self._running: dict[str, MemoryJob] = {}
        self._dedup: dict[str, str] = {}
        self._dead: list[DeadLetter] = []
        self._seq = itertools.count()
        self._tokens = itertools.count(1)
        self._wakeup = asyncio.Event()
        self._wakeup_loop: asyncio.AbstractEventLoop | None = None
        self._connected = False
        self._book = JobBook(queue_name, max_finished)
        self._control = _Control()

    def __repr__(self) -> str:
        return f"MemoryTaskQueue(queue_name={self.queue_name!r})"

    async def connect(self) -> None:
        self._connected = True

    async def disconnect(self) -> None:
        self._connected = False

    async def _enqueue_encoded(self, job: Job, data: bytes) -> str:
        return self._store(job, data)

    async def _enqueue_many_encoded(self, encoded: Sequence[tuple[Job, bytes]]) -> list[str]:
        return [self._store(job, data) for job, data in encoded]

    def _store(self, job: Job, payload: bytes) -> str:
        if job.dedup_key is not None:
            holder = self._dedup.get(job.dedup_key)
            if holder is not None:
                return holder
            self._dedup[job.dedup_key] = job.id
        entry = MemoryJob(
            job.id,
            payload,
            job.priority,
            job.run_at or 0.0,
            job.dedup_key,
            job.attempt,
            job.task,
            job.enqueued_at,
        )
        self._entries[job.id] = entry
        self._book.add(entry)
        self._schedule(entry)
        return job.id

    def push_raw(self, payload: bytes) -> str:
        """Store bytes as they are, as a foreign producer would; for tests of bad input."""
        entry = MemoryJob(new_job_id(), payload, 0, 0.0, None, 0, "", time.time())
        self._entries[entry.id] = entry
        self._book.add(entry)
        self._schedule(entry)
        return entry.id

    async def dequeue(
        self, *, max_jobs: int = 1, lease_seconds: float = 30.0, wait: float = 0.0
    ) -> list[Delivery]:
        deadline = time.monotonic() + wait
        while True:
            deliveries = self._take(max_jobs, lease_seconds)
            remaining = deadline - time.monotonic()
            if deliveries or remaining <= 0:
                return deliveries
            wakeup = self._wakeup_event()
            wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), min(remaining, self._next_due_in()))

    async def ack(self, delivery: Delivery) -> None:
        entry = self._owned(delivery)
        if entry is not None:
            _record(entry, delivery)
            self._finish(entry, delivery.outcome or _SUCCEEDED, delivery.error, time.time())

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        now = time.time()
        running = self._running
        for delivery in deliveries:  # _owned, inline: this is every job's ack
            entry_id, lease_token = delivery.token
            entry = running.get(entry_id)
            if entry is not None and entry.lease_token == lease_token:
                entry.worker_id = delivery.worker_id
                if delivery.attempt_record is not None:
                    entry.attempts = append_attempt(entry.attempts, delivery.attempt_record)
                self._finish(entry, delivery.outcome or _SUCCEEDED, delivery.error, now)

    async def nack(
        self, delivery: Delivery, *, requeue: bool, delay: float = 0.0, reason: str = ""
    ) -> None:
        entry = self._owned(delivery)
        if entry is None:
            return
        del self._running[entry.id]
        entry.lease_token = 0
        _record(entry, delivery)
        if delivery.error is not None:
            entry.error = delivery.error
        if requeue and delivery.job is not None:
            if entry.cancel_requested:  # cancelled while it ran: it must not run again
                self._finish(entry, JobState.CANCELLED, None, time.time())
                return
            entry.payload = delivery.job.to_bytes()
            entry.attempt = delivery.job.attempt
            entry.priority = delivery.job.priority
            entry.run_at = time.time() + delay if delay > 0 else 0.0
            retrying = delivery.outcome is JobState.RETRYING
            entry.state = JobState.RETRYING if retrying else JobState.QUEUED
            self._schedule(entry)
            return
        outcome = delivery.outcome
        if outcome not in (JobState.FAILED, JobState.DEAD):
            outcome = JobState.FAILED if delivery.error is not None else JobState.DEAD
        self._finish(entry, outcome, None, time.time())
        self._dead.append(DeadLetter(entry.payload, reason, delivery.job_id, time.time()))

    async def extend_lease(self, deliveries: Sequence[Delivery], lease_seconds: float) -> None:
        deadline = time.monotonic() + lease_seconds
        for delivery in deliveries:
            entry = self._owned(delivery)
            if entry is not None:
                entry.lease_deadline = deadline
                heapq.heappush(self._leases, (deadline, entry.lease_token, entry.id))

    async def counts(self) -> QueueCounts:
        self._expire_leases()
        self._promote_delayed()
        delayed = sum(1 for _, _, i in self._delayed if self._is_waiting(i))
        ready = sum(1 for _, _, i in self._ready if self._is_waiting(i))
        return QueueCounts(
            ready=ready, delayed=delayed, running=len(self._running), failed=len(self._dead)
        )

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return self._dead[:limit]

    # -- inspection (Capability.INSPECT) ------------------------------------------

    async def get_job(self, job_id: str) -> JobInfo | None:
        """The job's state and details; None for an id this queue does not know."""
        self._expire_leases()
        entry = self._entries.get(job_id) or self._book.finished.get(job_id)
        return None if entry is None else self._book.info(entry, time.time())

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        task: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs in the order they were enqueued, oldest first; the cursor is a position."""
        self._expire_leases()
        return self._book.page(state=state, task=task, limit=limit, cursor=cursor)

    async def record_progress(self, delivery: Delivery, progress: Progress) -> None:
        """Store the progress and metadata of a job this delivery still holds."""
        entry = self._owned(delivery)
        if entry is None:
            return
        if progress.fraction is not None:
            entry.progress = progress.fraction
        if progress.message is not None:
            entry.progress_message = progress.message
        if progress.meta:
            entry.meta = {**(entry.meta or {}), **progress.meta}

    # -- cancellation (Capability.CANCEL) -----------------------------------------

    async def cancel(self, job_id: str) -> CancelOutcome:
        """Remove a waiting job from line, or flag a running one and tell the listeners."""
        self._expire_leases()
        entry = self._entries.get(job_id)
        if entry is None:
            known = job_id in self._book.finished
            return CancelOutcome.FINISHED if known else CancelOutcome.NOT_FOUND
        if entry.lease_token:
            entry.cancel_requested = True
            for listener in list(self._control.listeners):
                try:
                    listener(job_id)
                except Exception:
                    logger.exception("a cancellation listener failed for job %s", job_id)
            return CancelOutcome.REQUESTED
        self._finish(entry, JobState.CANCELLED, None, time.time())
        return CancelOutcome.CANCELLED

    async def watch_cancellations(self, on_cancel: CancelCallback) -> None:
        """Call ``on_cancel(job_id)`` for each running job cancelled, until cancelled."""
        self._control.listeners.append(on_cancel)
        listening(on_cancel)
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            self._control.listeners.remove(on_cancel)

    async def cancel_requested(self, deliveries: Sequence[Delivery]) -> set[str]:
        """Ids of the given running jobs whose cancellation was asked for."""
        found = set()
        for delivery in deliveries:
            entry = self._owned(delivery)
            if entry is not None and entry.cancel_requested:
                found.add(entry.id)
        return found

    # -- workers (Capability.WORKERS) ----------------------------------------------

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        """Add or refresh a worker; it disappears ``ttl`` seconds after the last refresh."""
        self._control.workers[info.id] = _Worker(info, time.monotonic() + ttl)

    async def deregister_worker(self, worker_id: str) -> None:
        self._control.workers.pop(worker_id, None)

    async def list_workers(self) -> list[WorkerInfo]:
        now = time.monotonic()
        workers = self._control.workers
        for worker_id in [w for w, entry in workers.items() if entry.expires <= now]:
            del workers[worker_id]
        return [entry.info for entry in workers.values()]

    # -- internals -------------------------------------------------------------

    def _schedule(self, entry: MemoryJob) -> None:
        if entry.run_at > time.time():
            heapq.heappush(self._delayed, (entry.run_at, next(self._seq), entry.id))
        else:
            heapq.heappush(self._ready, (-entry.priority, next(self._seq), entry.id))
        self._wakeup.set()

    def _wakeup_event(self) -> asyncio.Event:
        """The wake-up event of the running loop.

        An ``asyncio.Event`` binds to the first loop that waits on it, and a
        module-level queue outlives loops (one per test, or per ``asyncio.run``).
        """
        loop = asyncio.get_running_loop()
        if loop is not self._wakeup_loop:
            self._wakeup = asyncio.Event()
            self._wakeup_loop = loop
        return self._wakeup

    def _is_waiting(self, job_id: str) -> bool:
        entry = self._entries.get(job_id)
        return entry is not None and entry.lease_token == 0

    def _take(self, max_jobs: int, lease_seconds: float) -> list[Delivery]:
        self._expire_leases()
        self._promote_delayed()
        deliveries: list[Delivery] = []
        if not self._ready:
            return deliveries
        deadline = time.monotonic() + lease_seconds
        started = time.time()
        while self._ready and len(deliveries) < max_jobs:
            _, _, job_id = heapq.heappop(self._ready)
            entry = self._entries.get(job_id)
            if entry is None or entry.lease_token:
                continue  # stale heap item: already settled or leased
            entry.attempt += 1
            entry.lease_token = next(self._tokens)
            entry.lease_deadline = deadline
            entry.started_at = started  # its state reads RUNNING while it holds a lease
            self._running[entry.id] = entry
            heapq.heappush(self._leases, (deadline, entry.lease_token, entry.id))
            token = (entry.id, entry.lease_token)
            deliveries.append(self.parse_delivery(entry.payload, token, attempt=entry.attempt))
        return deliveries

    def _owned(self, delivery: Delivery) -> MemoryJob | None:
        """The entry if ``delivery`` still holds its lease (it may have lapsed)."""
        entry_id, lease_token = delivery.token
        entry = self._running.get(entry_id)
        if entry is None or entry.lease_token != lease_token:
            return None
        return entry

    def _finish(
        self, entry: MemoryJob, state: JobState, error: JobError | None, now: float
    ) -> None:
        """Take the job out of line for good (releasing its dedup key) and keep its record."""
        job_id = entry.id
        del self._entries[job_id]
        self._running.pop(job_id, None)
        entry.lease_token = 0
        if entry.dedup_key is not None and self._dedup.get(entry.dedup_key) == job_id:
            del self._dedup[entry.dedup_key]
        if error is not None:
            entry.error = error
        entry.state = state
        entry.finished_at = now
        book = self._book  # JobBook.finish, inline: this is every job's ack
        book.finished[job_id] = entry
        book.finished_order.append(entry)
        if len(book.finished_order) > book.limit:
            book.trim()

    def _promote_delayed(self) -> None:
        now = time.time()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, job_id = heapq.heappop(self._delayed)
            entry = self._entries.get(job_id)
            if entry is not None and not entry.lease_token and entry.run_at <= now:
                heapq.heappush(self._ready, (-entry.priority, next(self._seq), job_id))

    def _expire_leases(self) -> None:
        now = time.monotonic()
        while self._leases and self._leases[0][0] <= now:
            _deadline, token, job_id = heapq.heappop(self._leases)
            entry = self._running.get(job_id)
            if entry is None or entry.lease_token != token or entry.lease_deadline > now:
                continue  # settled, re-leased or extended since
            if entry.cancel_requested:  # its worker died before stopping it: never again
                self._finish(entry, JobState.CANCELLED, None, time.time())
                continue
            del self._running[job_id]
            entry.lease_token = 0
            entry.run_at = 0.0
            entry.state = JobState.QUEUED
            heapq.heappush(self._ready, (-entry.priority, next(self._seq), job_id))

    def _next_due_in(self) -> float:
        """Seconds until a delayed job or a lease needs attention."""
        due = 3600.0
        if self._delayed:
            due = min(due, self._delayed[0][0] - time.time())
        if self._leases:
            due = min(due, self._leases[0][0] - time.monotonic())
        return max(due, 0.001)


def _record(entry: MemoryJob, delivery: Delivery) -> None:
    """Keep the settling worker's id and the attempt's record (Capability.ATTEMPTS)."""
    if delivery.worker_id is not None:  # None: handed back, not an attempt of a worker's
        entry.worker_id = delivery.worker_id
    if delivery.attempt_record is not None:
        entry.attempts = append_attempt(entry.attempts, delivery.attempt_record)
