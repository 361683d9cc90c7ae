"""The job records of :class:`~lexigram.tasks.memory.MemoryTaskQueue`: states, listing, eviction."""

from __future__ import annotations

import bisect
import itertools
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lexigram.tasks.control import JobAttempt, JobError, JobInfo, JobPage, JobState, position_cursor
from lexigram.tasks.errors import MalformedJobError
from lexigram.tasks.job import Job

_QUEUED = JobState.QUEUED


@dataclass(slots=True)
class MemoryJob:
    """One job of a memory queue: its bytes, its place in line and its record."""

    id: str
    payload: bytes
    priority: int
    run_at: float
    dedup_key: str | None
    attempt: int
    task: str
    enqueued_at: float
    lease_token: int = 0
    lease_deadline: float = 0.0
    #: Stored state; it reads RUNNING while leased, and SCHEDULED when QUEUED
    #: with its ``run_at`` ahead.
    state: JobState = _QUEUED
    #: Position in the listing (enqueue order).
    seq: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: JobError | None = None
    progress: float | None = None
    progress_message: str | None = None
    meta: Mapping[str, Any] | None = None
    cancel_requested: bool = False
    #: The worker that settled its last attempt.
    worker_id: str | None = None
    #: Records of its attempts that did not succeed (the last MAX_ATTEMPTS_KEPT).
    attempts: Sequence[JobAttempt] = ()
    #: Forgotten (evicted, or replaced by a job enqueued again with its id).
    gone: bool = False

    def current_state(self, now: float) -> JobState:
        if self.lease_token:
            return JobState.RUNNING
        if self.state is _QUEUED and self.run_at > now:
            return JobState.SCHEDULED
        return self.state


class JobBook:
    """Every job of one queue in enqueue order, and the last ``max_finished`` finished ones.

    A listing's cursor is the position (``seq``) of the last job of the page,
    found again by bisection, so a deep page costs what the first one does.
    """

    def __init__(self, queue_name: str, max_finished: int) -> None:
        self.queue_name = queue_name
        self.max_finished = max_finished
        self.finished: dict[str, MemoryJob] = {}
        #: Finished jobs, oldest first (the queue appends them as it settles them);
        #: trimmed to ``max_finished`` once it passes ``limit``.
        self.finished_order: deque[MemoryJob] = deque()
        self.limit = max_finished + max(1, max_finished // 16)
        self._order: list[MemoryJob] = []
        self._gone = 0
        self._seq = itertools.count()

    def add(self, entry: MemoryJob) -> None:
        entry.seq = next(self._seq)
        self._order.append(entry)
        if self.finished:
            earlier = self.finished.pop(entry.id, None)
            if earlier is not None:  # the same id enqueued again: the new job replaces it
                self._forget(earlier)

    def trim(self) -> None:
        """Forget the oldest finished jobs down to ``max_finished`` (in batches: cheaper)."""
        order, finished = self.finished_order, self.finished
        while len(order) > self.max_finished:
            oldest = order.popleft()
            if finished.get(oldest.id) is oldest:
                del finished[oldest.id]
            self._forget(oldest)

    def _forget(self, entry: MemoryJob) -> None:
        if entry.gone:
            return
        entry.gone = True
        self._gone += 1
        if self._gone > 1024 and self._gone * 2 > len(self._order):
            self._order = [e for e in self._order if not e.gone]
            self._gone = 0

    def page(
        self, *, state: JobState | None, task: str | None, limit: int, cursor: str | None
    ) -> JobPage:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        after = position_cursor(cursor, start=-1)
        now = time.time()
        order = self._order
        found: list[MemoryJob] = []
        more = False
        for index in range(bisect.bisect_right(order, after, key=_seq_of), len(order)):
            entry = order[index]
            if entry.gone or (task is not None and entry.task != task):
                continue
            if state is not None and entry.current_state(now) is not state:
                continue
            if len(found) == limit:
                more = True
                break
            found.append(entry)
        jobs = [self.info(entry, now, attempts=False) for entry in found]
        return JobPage(jobs, str(found[-1].seq) if more else None)

    def info(self, entry: MemoryJob, now: float, *, attempts: bool = True) -> JobInfo:
        """The job's :class:`JobInfo`; a listing leaves the attempt records out."""
        try:
            job: Job | None = Job.from_json(entry.payload)
        except MalformedJobError:
            job = None
        state = entry.current_state(now)
        return JobInfo(
            id=entry.id,
            queue=self.queue_name,
            task=entry.task if job is None else job.task,
            state=state,
            args=[] if job is None else job.args,
            kwargs={} if job is None else job.kwargs,
            attempt=entry.attempt,
            max_attempts=1 if job is None else job.max_retries + 1,
            priority=entry.priority,
            enqueued_at=entry.enqueued_at,
            run_at=entry.run_at or None,
            started_at=entry.started_at,
            finished_at=entry.finished_at,
            worker_id=None if state is JobState.RUNNING else entry.worker_id,
            error=entry.error,
            progress=entry.progress,
            progress_message=entry.progress_message,
            meta=dict(entry.meta or {}),
            cancel_requested=entry.cancel_requested,
            trace_id=None if job is None else job.trace_id,
            attempts=tuple(entry.attempts) if attempts else (),
        )


def _seq_of(entry: MemoryJob) -> int:
    return entry.seq
