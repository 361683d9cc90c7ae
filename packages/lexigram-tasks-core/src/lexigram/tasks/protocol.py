"""The backend seam: what a task queue must do, and nothing more.

A backend implements job-level primitives (enqueue, lease, ack, nack);
tracing, events, retry policy and dead-lettering decisions live once in the
worker and provider, and the checks of an enqueue and the parsing of a
leased message once in :class:`BaseTaskQueue`, so a custom backend cannot
forget them. Delivery is at
least once: a leased job is settled by exactly one ``ack`` or ``nack``, and a
job whose lease lapses (its worker died) becomes available again.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from lexigram.tasks.control import JobAttempt, JobError, JobState
from lexigram.tasks.errors import CapabilityNotSupportedError, JobTooLargeError, MalformedJobError
from lexigram.tasks.job import DEFAULT_MAX_JOB_BYTES, Job


class Capability(enum.StrEnum):
    """Optional features a backend declares in ``capabilities``."""

    #: Jobs with ``run_at`` in the future wait until then.
    DELAY = "delay"
    #: Higher ``priority`` jobs are delivered before lower ones.
    PRIORITY = "priority"
    #: A ``dedup_key`` is unique among pending and running jobs.
    UNIQUE = "unique"
    #: Jobs can be enqueued inside the caller's own database transaction.
    TRANSACTIONAL = "transactional"
    #: Jobs can be looked up and listed by state, and report progress
    #: (``get_job``, ``list_jobs``, ``record_progress`` of
    #: :class:`~lexigram.tasks.control.JobControlProtocol`).
    INSPECT = "inspect"
    #: Jobs can be cancelled, and running ones hear it on a control channel
    #: (``cancel``, ``watch_cancellations``, ``cancel_requested``).
    CANCEL = "cancel"
    #: Worker processes register themselves and can be listed
    #: (``register_worker``, ``deregister_worker``, ``list_workers``).
    WORKERS = "workers"
    #: Each job keeps its attempt history (``JobInfo.attempts``): the backend
    #: stores ``Delivery.attempt_record`` and ``Delivery.worker_id`` on ack and nack.
    ATTEMPTS = "attempts"


@dataclass(slots=True)
class Delivery:
    """A message leased to one consumer, to be settled by ack or nack.

    ``job`` is ``None`` when the message is not a valid job; ``problem`` then
    says why, and the consumer dead-letters it (``nack(requeue=False)``).
    ``token`` is the backend's own handle for the lease. Before settling it,
    the worker sets ``outcome`` (how the job ended, or ``RETRYING``) and
    ``error``, so a backend that keeps job states records them on the ack or
    nack itself (see :class:`~lexigram.tasks.control.JobControlProtocol`).
    It also sets ``worker_id`` (its own id) and, for an attempt that did not
    succeed, ``attempt_record``: a backend declaring ``Capability.ATTEMPTS``
    stores the first as the job's worker and appends the second to the job's
    attempt history. ``slots`` is set by a backend whose lease took the
    concurrency slots named in the job's ``lexigram-slots`` header (``True``)
    or found one of them full (``False``); ``None``: the worker takes them.
    """

    job: Job | None
    raw: bytes
    token: Any
    problem: str | None = None
    outcome: JobState | None = None
    error: JobError | None = None
    worker_id: str | None = None
    attempt_record: JobAttempt | None = None
    slots: bool | None = None

    @property
    def job_id(self) -> str | None:
        return self.job.id if self.job is not None else None


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """How many jobs a queue holds, by state."""

    ready: int
    delayed: int
    running: int
    failed: int

    @property
    def pending(self) -> int:
        """Jobs not yet finished: ready, delayed and running."""
        return self.ready + self.delayed + self.running


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the backend set aside, with the reason."""

    payload: bytes
    reason: str
    job_id: str | None
    failed_at: float


@runtime_checkable
class TaskQueueProtocol(Protocol):
    """What every backend implements. :class:`BaseTaskQueue` supplies defaults."""

    #: The queue this instance reads and writes.
    queue_name: str
    #: OpenTelemetry ``messaging.system`` value, e.g. ``"redis"``.
    system: str
    #: Optional features this backend honours.
    capabilities: frozenset[Capability]

    async def connect(self) -> None:
        """Open connections. Calling it again while connected does nothing."""

    async def disconnect(self) -> None:
        """Close connections. Calling it again, or before connect, does nothing."""

    async def enqueue(self, job: Job) -> str:
        """Store one job; return the id of the job holding its dedup key (usually ``job.id``)."""

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        """Store many jobs in as few round trips as the backend allows."""

    async def dequeue(
        self, *, max_jobs: int = 1, lease_seconds: float = 30.0, wait: float = 0.0
    ) -> list[Delivery]:
        """Lease up to ``max_jobs`` ready jobs, waiting up to ``wait`` seconds for the first.

        Each returned job has ``attempt`` already incremented. Higher priority
        first, then FIFO. A lease that is not settled or extended within
        ``lease_seconds`` lapses and the job is delivered again.
        """

    async def ack(self, delivery: Delivery) -> None:
        """The job is done: remove it (and release its dedup key)."""

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several deliveries at once."""

    async def nack(
        self, delivery: Delivery, *, requeue: bool, delay: float = 0.0, reason: str = ""
    ) -> None:
        """Settle a failed delivery.

        ``requeue=True`` stores ``delivery.job`` as it is now (the worker may
        have changed it) to run again after ``delay`` seconds. ``requeue=False``
        dead-letters the message with ``reason``; it is kept, never dropped.
        """

    async def extend_lease(self, deliveries: Sequence[Delivery], lease_seconds: float) -> None:
        """Push the lease of running jobs ``lease_seconds`` into the future."""

    async def counts(self) -> QueueCounts:
        """Ready, delayed, running and failed (dead-lettered) counts."""

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Messages this backend dead-lettered, oldest first."""


class BaseTaskQueue:
    """Base for backends: the shared work done once, around the backend's primitives.

    The public ``enqueue`` and ``enqueue_many`` check and encode every job
    with :meth:`encode_job` (capabilities, JSON, ``max_job_bytes``), all of a
    batch before the first write, then hand the bytes to the backend's
    :meth:`_enqueue_encoded` / :meth:`_enqueue_many_encoded`. A backend's
    ``dequeue`` turns each leased message into a :class:`Delivery` with
    :meth:`parse_delivery`. Subclasses implement those hooks and the other
    primitives of :class:`TaskQueueProtocol`; override ``ack_many`` (and
    ``_enqueue_many_encoded``) where the backend can batch.
    """

    queue_name: str
    system: str = "unknown"
    capabilities: frozenset[Capability] = frozenset()
    #: Largest encoded job :meth:`encode_job` accepts (the provider sets it
    #: from its ``max_job_bytes`` setting).
    max_job_bytes: int = DEFAULT_MAX_JOB_BYTES

    async def connect(self) -> None:
        raise NotImplementedError

    async def disconnect(self) -> None:
        raise NotImplementedError

    async def dequeue(
        self, *, max_jobs: int = 1, lease_seconds: float = 30.0, wait: float = 0.0
    ) -> list[Delivery]:
        raise NotImplementedError

    async def ack(self, delivery: Delivery) -> None:
        raise NotImplementedError

    async def nack(
        self, delivery: Delivery, *, requeue: bool, delay: float = 0.0, reason: str = ""
    ) -> None:
        raise NotImplementedError

    async def extend_lease(self, deliveries: Sequence[Delivery], lease_seconds: float) -> None:
        raise NotImplementedError

    async def counts(self) -> QueueCounts:
        raise NotImplementedError

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        raise NotImplementedError

    async def enqueue(self, job: Job) -> str:
        """Check and encode ``job`` (:meth:`encode_job`), then store it.

        Returns the id of the job holding its dedup key (usually ``job.id``).
        """
        return await self._enqueue_encoded(job, self.encode_job(job))

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        """Check and encode every job, then store them: a refused job stores nothing."""
        if not jobs:
            return []
        return await self._enqueue_many_encoded([(job, self.encode_job(job)) for job in jobs])

    async def _enqueue_encoded(self, job: Job, data: bytes) -> str:
        """Store one job, already checked, as ``data`` (its wire bytes).

        Return the id of the job holding ``job.dedup_key`` (``job.id`` when
        this one was stored).
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement _enqueue_encoded(job, data) "
            "(or override enqueue and enqueue_many)"
        )

    async def _enqueue_many_encoded(self, encoded: Sequence[tuple[Job, bytes]]) -> list[str]:
        """Store jobs already checked, as ``(job, data)`` pairs; by default one by one."""
        return [await self._enqueue_encoded(job, data) for job, data in encoded]

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            await self.ack(delivery)

    def parse_delivery(
        self, raw: bytes, token: Any, *, attempt: int | None = None, stored_as: str | None = None
    ) -> Delivery:
        """The :class:`Delivery` of a leased message: its job, or ``job=None`` and the problem.

        ``attempt`` is the backend's own count of deliveries, which replaces
        the document's. ``stored_as`` is the job id the backend filed the
        message under, when it keeps one apart from the document; a document
        naming another id is a problem. It never raises for a bad message:
        one bad message must not fail the batch it was leased with.
        """
        try:
            job = Job.from_json(raw)
        except MalformedJobError as exc:
            return Delivery(None, raw, token, str(exc))
        except Exception as exc:  # a decoder bug: still only this message's problem
            return Delivery(None, raw, token, f"cannot be decoded: {type(exc).__name__}: {exc}")
        if stored_as is not None and job.id != stored_as:
            problem = f"job id {job.id!r} does not match the id it is stored under, {stored_as!r}"
            return Delivery(None, raw, token, problem)
        if attempt is not None:
            job.attempt = attempt
        return Delivery(job, raw, token)

    def encode_job(self, job: Job) -> bytes:
        """The wire bytes of a job being enqueued, after every check an enqueue needs.

        Raises :class:`CapabilityNotSupportedError` for an undeclared feature,
        :class:`JobSerializationError` when the job cannot be written as JSON,
        and :class:`JobTooLargeError` when it is over ``max_job_bytes``.
        """
        self.check_supported(job)
        data = job.to_bytes()
        if len(data) > self.max_job_bytes:
            raise JobTooLargeError(
                f"job {job.id} of task {job.task!r} is {len(data):,} bytes, over the limit of "
                f"{self.max_job_bytes:,} (max_job_bytes): pass a reference to large data "
                "(a key in object storage, a database id) instead of the data itself"
            )
        return data

    def check_supported(self, job: Job) -> None:
        """Raise :class:`CapabilityNotSupportedError` if ``job`` needs an undeclared capability."""
        if job.run_at is not None and Capability.DELAY not in self.capabilities:
            self._unsupported(Capability.DELAY, "run_at / delay")
        if job.priority and Capability.PRIORITY not in self.capabilities:
            self._unsupported(Capability.PRIORITY, "priority")
        if job.dedup_key is not None and Capability.UNIQUE not in self.capabilities:
            self._unsupported(Capability.UNIQUE, "dedup_key")

    def _unsupported(self, capability: Capability, what: str) -> None:
        raise CapabilityNotSupportedError(
            f"{type(self).__name__} does not support {what} "
            f"(capability {capability.value!r} is not declared)"
        )

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()
