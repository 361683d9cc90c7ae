"""Job state stores: job control for a backend that cannot look inside its queue.

A broker such as RabbitMQ hands messages out but cannot list them, look one
up by id or remove one from the middle of a queue. Paired with a
:class:`JobStateStore` (on Redis or PostgreSQL), such a backend records each
job's life there as it happens, one batched call per enqueue, lease and
settle, and answers :class:`~lexigram.tasks.control.JobControlProtocol` from
it. A job cancelled before it starts is *tombstoned*: the store marks it
cancelled, and the consumer drops its message when the broker delivers it.

State rules are those of :class:`~lexigram.tasks.control.JobControlProtocol`.
Stores are registered in the ``lexigram.tasks.state_stores`` entry-point
group (:data:`lexigram.tasks.plugins.STATE_STORES`), so a backend's
configuration can name one: ``state_store: {type: redis, redis_url: ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from lexigram.tasks.control import (
    CancelOutcome,
    JobAttempt,
    JobError,
    JobInfo,
    JobPage,
    JobState,
    Progress,
    WorkerInfo,
)
from lexigram.tasks.job import Job

__all__ = [
    "DEFAULT_FINISHED_TTL",
    "JobStateStore",
    "Leased",
    "Settled",
    "create_state_store",
]

#: Seconds a finished job's record is kept by default (a week).
DEFAULT_FINISHED_TTL = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Leased:
    """A job a consumer received and is about to run."""

    job: Job
    #: The attempt about to run (1 for the first).
    attempt: int
    #: Unix time the lease lapses unless extended; the job reads ``queued`` after it.
    lease_until: float


@dataclass(frozen=True, slots=True)
class Settled:
    """How a delivery was settled: a finished state, or back in line.

    ``state`` is a finished state, ``RETRYING`` (with ``run_at``) or
    ``QUEUED`` (handed back without using an attempt).
    """

    job_id: str
    state: JobState
    error: JobError | None = None
    run_at: float | None = None
    #: The attempt that ran (unchanged for a job handed back).
    attempt: int | None = None
    #: The worker that settled it (kept as the job's ``worker_id``).
    worker_id: str | None = None
    #: The attempt's record, appended to the job's history (Capability.ATTEMPTS).
    attempt_record: JobAttempt | None = None


@runtime_checkable
class JobStateStore(Protocol):
    """Where a backend that cannot look inside its queue keeps its jobs' states.

    Records are per job id; listings are per queue name, in enqueue order,
    with a cursor. Every method taking a sequence is one round trip.
    """

    async def connect(self) -> None:
        """Open connections (and create what the store needs). Idempotent."""

    async def disconnect(self) -> None:
        """Close connections. Idempotent."""

    async def record_enqueued(self, jobs: Sequence[Job]) -> None:
        """Record jobs about to be published: ``queued``, or ``scheduled`` if ``run_at`` is ahead.

        A job enqueued again with a known id starts a new record.
        """

    async def forget(self, job_ids: Sequence[str]) -> None:
        """Remove records of jobs whose publish failed (they never reached the queue)."""

    async def record_leased(self, leased: Sequence[Leased]) -> set[str]:
        """Record jobs as ``running``; return the ids that must not run.

        Those are the jobs cancelled before delivery (tombstoned) and the
        running jobs whose cancellation was asked for before their worker
        died; their records become (or stay) ``cancelled``, finished. A job
        with no record (published by a foreign producer) gets one.
        """

    async def record_settled(self, settled: Sequence[Settled]) -> None:
        """Record how deliveries ended. A cancellation requested while the job ran
        survives a hand-back: its next :meth:`record_leased` drops it. Each
        item's ``worker_id`` becomes the job's, and its ``attempt_record`` is
        appended to the job's history (the last ``MAX_ATTEMPTS_KEPT``), which
        :meth:`get_job` returns as ``attempts``."""

    async def extend_leases(self, job_ids: Sequence[str], lease_until: float) -> None:
        """Push the lease of running jobs to ``lease_until`` (the heartbeat)."""

    async def get_job(self, job_id: str) -> JobInfo | None:
        """The job's record; None for an unknown (or expired) id."""

    async def list_jobs(
        self,
        queue: str,
        *,
        state: JobState | None = None,
        task: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobPage:
        """A page of ``queue``'s jobs in enqueue order; the cursor is a position (no OFFSET)."""

    async def record_progress(self, job_id: str, progress: Progress) -> None:
        """Store a running job's progress and merge its metadata."""

    async def cancel(self, job_id: str) -> CancelOutcome:
        """Tombstone a pending job (``CANCELLED``), flag a running one (``REQUESTED``);
        ``FINISHED`` for a finished job, ``NOT_FOUND`` for an unknown id."""

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        """Those of ``job_ids`` flagged by :meth:`cancel` while running."""

    async def register_worker(self, queue: str, info: WorkerInfo, ttl: float) -> None:
        """Add or refresh a worker of ``queue``; it expires ``ttl`` seconds later."""

    async def deregister_worker(self, queue: str, worker_id: str) -> None:
        """Remove a worker's entry."""

    async def list_workers(self, queue: str) -> list[WorkerInfo]:
        """The workers of ``queue`` whose entries have not expired."""

    async def purge_finished(self, limit: int = 1000) -> int:
        """Delete up to ``limit`` finished records older than the store's TTL; how many."""


def create_state_store(spec: JobStateStore | Mapping[str, Any]) -> JobStateStore:
    """A store given as itself, or as a configuration mapping ``{type: ..., **options}``.

    The type names an entry point of ``lexigram.tasks.state_stores``.
    """
    if not isinstance(spec, Mapping):
        return spec
    from lexigram.tasks.errors import ConfigurationError
    from lexigram.tasks.plugins import STATE_STORES

    options = dict(spec)
    type_name = options.pop("type", None)
    if not isinstance(type_name, str):
        known = ", ".join(repr(n) for n in STATE_STORES.names()) or "none installed"
        raise ConfigurationError(f"state_store needs a 'type' ({known})")
    factory = STATE_STORES.load(type_name)
    store = factory(**options)
    if not isinstance(store, JobStateStore):
        raise ConfigurationError(f"state store type {type_name!r} is not a JobStateStore")
    return store
