"""Job visibility and control: the states of a job, what a backend reports, cancellation.

Core builds status, listing, cancellation, progress and the live-worker list
once; a backend supplies the primitives of :class:`JobControlProtocol` and
declares them with :attr:`~lexigram.tasks.Capability.INSPECT`,
:attr:`~lexigram.tasks.Capability.CANCEL` and
:attr:`~lexigram.tasks.Capability.WORKERS`. State changes ride on the calls a
job's life already makes (enqueue, lease, ack, nack): the worker marks how a
job ended on its :class:`~lexigram.tasks.protocol.Delivery` (``outcome``,
``error``) before settling it, so recording the state costs no extra round
trip.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from lexigram.tasks.protocol import Delivery


class JobState(enum.StrEnum):
    """Where a job is in its life."""

    #: Waiting in line to run now.
    QUEUED = "queued"
    #: Waiting for its ``run_at`` (a delayed job).
    SCHEDULED = "scheduled"
    #: Leased by a worker, which is running it.
    RUNNING = "running"
    #: An attempt failed; waiting for its next attempt.
    RETRYING = "retrying"
    #: Its task returned.
    SUCCEEDED = "succeeded"
    #: Its task raised (or timed out) on its last allowed attempt; set aside for replay.
    FAILED = "failed"
    #: Cancelled before it started, or stopped by a cancellation while running.
    CANCELLED = "cancelled"
    #: Set aside without its task failing: not a valid job, no worker has its
    #: task, or its workers kept dying (lost leases).
    DEAD = "dead"

    @property
    def finished(self) -> bool:
        """True for the states a job does not leave (on its own)."""
        return self in _FINISHED

    @property
    def pending(self) -> bool:
        """True for the states of a job that may still run."""
        return not self.finished


_FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.DEAD})


@dataclass(frozen=True, slots=True)
class JobError:
    """An error of a job: its exception type and message (and traceback, in attempt records)."""

    type: str
    message: str
    #: The formatted traceback, cut to its last ``MAX_TRACEBACK_CHARS`` characters.
    traceback: str | None = None


class AttemptOutcome(enum.StrEnum):
    """How one attempt of a job ended (see :class:`JobAttempt`)."""

    #: It is running now.
    RUNNING = "running"
    #: Its task returned.
    COMPLETED = "completed"
    #: Its task raised; the job runs again.
    RETRYING = "retrying"
    #: Its task raised and the job has no attempt left (or the error is not retried).
    FAILED = "failed"
    #: Its task exceeded its timeout (``will_retry`` says whether another attempt follows).
    TIMED_OUT = "timed_out"
    #: It was stopped by a cancellation.
    CANCELLED = "cancelled"
    #: Its worker stopped responding (killed, crashed or stalled) and its lease lapsed.
    LEASE_LOST = "lease_lost"
    #: The job was set aside without its task running (unknown task, too many lost leases).
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class JobAttempt:
    """One attempt of a job: who ran it, when, and how it ended.

    :attr:`JobInfo.attempts` lists them oldest first, at most the last
    ``MAX_ATTEMPTS_KEPT``. Times are Unix timestamps; a lost attempt may
    lack its worker and times (the worker died before reporting them).
    """

    number: int
    outcome: AttemptOutcome
    worker_id: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    error: JobError | None = None
    #: Another attempt follows this failed one.
    will_retry: bool = False

    @property
    def duration(self) -> float | None:
        """Seconds from start to end, when both are known."""
        if self.started_at is None or self.ended_at is None:
            return None
        return max(0.0, self.ended_at - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping: the record backends store (see docs/jobs.md)."""
        error = self.error
        return {
            "number": self.number,
            "outcome": self.outcome.value,
            "worker_id": self.worker_id,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "error": None
            if error is None
            else {"type": error.type, "message": error.message, "traceback": error.traceback},
            "will_retry": self.will_retry,
        }


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What is known about one job, as :meth:`JobHandle.status` returns it.

    Times are Unix timestamps (seconds). ``result`` is filled from the result
    store when one is configured and holds the job's outcome (``has_result``
    tells a ``None`` result from no result).
    """

    id: str
    queue: str
    task: str
    state: JobState
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: The attempt running or last run (1 for the first); 0 before the first.
    attempt: int = 0
    #: How many attempts it may have in all (``max_retries + 1``).
    max_attempts: int = 1
    priority: int = 0
    enqueued_at: float | None = None
    #: When it is due (delayed jobs and retries).
    run_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    #: The worker running it, or that ran it last.
    worker_id: str | None = None
    error: JobError | None = None
    #: Fraction done, 0.0 to 1.0, as the task last reported it.
    progress: float | None = None
    progress_message: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    #: A cancellation was asked for while it ran; the worker is stopping it.
    cancel_requested: bool = False
    result: Any = None
    has_result: bool = False
    trace_id: str | None = None
    #: Its attempts, oldest first (the last ``MAX_ATTEMPTS_KEPT``), on a backend
    #: declaring ``Capability.ATTEMPTS``; empty otherwise.
    attempts: Sequence[JobAttempt] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (``state`` as its string, ``error`` as a mapping or None)."""
        return {
            "id": self.id,
            "queue": self.queue,
            "task": self.task,
            "state": self.state.value,
            "args": self.args,
            "kwargs": self.kwargs,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "priority": self.priority,
            "enqueued_at": self.enqueued_at,
            "run_at": self.run_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "worker_id": self.worker_id,
            "error": (
                None
                if self.error is None
                else {"type": self.error.type, "message": self.error.message}
            ),
            "attempts": [attempt.to_dict() for attempt in self.attempts],
            "progress": self.progress,
            "progress_message": self.progress_message,
            "meta": dict(self.meta),
            "cancel_requested": self.cancel_requested,
            "result": self.result,
            "has_result": self.has_result,
            "trace_id": self.trace_id,
        }


#: How many attempts a job's history keeps (the oldest are dropped first).
MAX_ATTEMPTS_KEPT = 25
#: A recorded traceback keeps its last this many characters (where the error was raised).
MAX_TRACEBACK_CHARS = 4000
#: A recorded error message keeps its first this many characters.
MAX_ERROR_MESSAGE_CHARS = 1000


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of a job listing; pass ``cursor`` back for the next (None: no more)."""

    jobs: list[JobInfo]
    cursor: str | None = None


class CancelOutcome(enum.StrEnum):
    """What :meth:`TaskProvider.cancel` did."""

    #: It was queued or delayed: it will never start.
    CANCELLED = "cancelled"
    #: It is running: its worker was told to stop it (it ends ``cancelled``).
    REQUESTED = "requested"
    #: It had already finished: nothing changed.
    FINISHED = "finished"
    #: No job with that id is known.
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress report from inside a task, as the worker hands it to the backend."""

    fraction: float | None = None
    message: str | None = None
    #: Merged into the job's metadata (keys given here replace earlier values).
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One live worker process, as it registers itself."""

    id: str
    host: str
    pid: int
    version: str
    backends: list[str]
    concurrency: int
    started_at: float
    heartbeat_at: float
    #: Ids of the jobs it is running now.
    running: list[str] = field(default_factory=list)
    done: int = 0
    failed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "version": self.version,
            "backends": list(self.backends),
            "concurrency": self.concurrency,
            "started_at": self.started_at,
            "heartbeat_at": self.heartbeat_at,
            "running": list(self.running),
            "done": self.done,
            "failed": self.failed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerInfo:
        return cls(
            id=str(data["id"]),
            host=str(data["host"]),
            pid=int(data["pid"]),
            version=str(data["version"]),
            backends=[str(b) for b in data.get("backends", [])],
            concurrency=int(data["concurrency"]),
            started_at=float(data["started_at"]),
            heartbeat_at=float(data["heartbeat_at"]),
            running=[str(r) for r in data.get("running", [])],
            done=int(data.get("done", 0)),
            failed=int(data.get("failed", 0)),
        )


#: Called by a backend's control channel with the id of a job to cancel.
CancelCallback = Callable[[str], None]


@runtime_checkable
class JobControlProtocol(Protocol):
    """The primitives behind status, listing, cancellation, progress and workers.

    A backend implements the groups it declares: ``get_job``, ``list_jobs``
    and ``record_progress`` with ``Capability.INSPECT``; ``cancel``,
    ``watch_cancellations`` and ``cancel_requested`` with
    ``Capability.CANCEL``; the three worker methods with ``Capability.WORKERS``.
    The contract suite (``lexigram.tasks.testing``) proves each group.

    How a job ended reaches the backend on the calls that exist already: before
    ``ack``/``ack_many``/``nack``, the worker sets ``delivery.outcome`` (and
    ``delivery.error``): ``ack`` with ``SUCCEEDED``, ``CANCELLED``, ``FAILED``
    or ``DEAD`` (the last two when a dead letter queue took the job),
    ``nack(requeue=True)`` with ``RETRYING`` (or ``None`` when the job is only
    handed back, e.g. at shutdown, and is simply ``queued`` again),
    ``nack(requeue=False)`` with ``FAILED`` or ``DEAD``.

    A backend declaring ``Capability.ATTEMPTS`` also keeps, on the same calls,
    ``delivery.worker_id`` as the job's ``worker_id`` and appends
    ``delivery.attempt_record`` (when set) to the job's history, keeping the
    last ``MAX_ATTEMPTS_KEPT``; ``get_job`` returns them as ``attempts``,
    oldest first. The provider completes the history (the attempt running or
    that succeeded, lost ones) from the job's own fields.
    """

    async def get_job(self, job_id: str) -> JobInfo | None:
        """The job's state and details; None if this backend does not know the id.

        A finished job stays visible as long as the backend keeps finished jobs.
        """

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        task: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobPage:
        """A page of jobs, filtered by state and task name, with a cursor for the next.

        Never an OFFSET scan: each page costs about the same however deep it is.
        """

    async def record_progress(self, delivery: Delivery, progress: Progress) -> None:
        """Store a running job's progress and metadata (the worker coalesces the calls)."""

    async def cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a job: a pending one never starts; a running one is signalled.

        A running job's cancellation is recorded where the job lives (so a
        worker that dies before hearing it does not lose it: the job is not
        run again), then published on the control channel.
        """

    async def watch_cancellations(self, on_cancel: CancelCallback) -> None:
        """Call ``on_cancel(job_id)`` for each cancellation published, until cancelled.

        Runs for the worker's lifetime; it reconnects by itself after a broken
        connection. Once the channel listens, and again after each reconnect,
        it calls :func:`listening` with ``on_cancel``: the worker then asks
        :meth:`cancel_requested` for the jobs it holds, so a cancellation
        published before the subscription took is not missed. The heartbeat's
        :meth:`cancel_requested` covers the rest.
        """

    async def cancel_requested(self, deliveries: Sequence[Delivery]) -> set[str]:
        """Ids of the given running jobs whose cancellation was asked for (the fallback path)."""

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        """Add or refresh a worker's entry; it disappears ``ttl`` seconds after the last refresh."""

    async def deregister_worker(self, worker_id: str) -> None:
        """Remove a worker's entry (its clean exit)."""

    async def list_workers(self) -> list[WorkerInfo]:
        """The workers whose entries have not expired."""


def listening(on_cancel: CancelCallback) -> None:
    """Tell the worker behind ``on_cancel`` that the control channel listens (now, or again).

    A backend's ``watch_cancellations`` calls it once subscribed and after each
    reconnect; the worker catches up on cancellations sent before then. A
    plain callback (no ``listening`` method) ignores it.
    """
    notify = getattr(on_cancel, "listening", None)
    if notify is not None:
        notify()


def encode_cursor(parts: Sequence[Any]) -> str:
    """An opaque, URL-safe listing cursor holding ``parts`` (JSON values)."""
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    """The parts :func:`encode_cursor` put in ``cursor``; ``ValueError`` for anything else."""
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        decoded = None
    if not isinstance(decoded, list) or not decoded:
        raise ValueError(f"not a cursor of this listing: {cursor!r}")
    return decoded


def position_cursor(cursor: str | None, start: int = 0) -> int:
    """The integer position a cursor of a sequence-ordered listing holds (``start`` without one)."""
    if cursor is None:
        return start
    try:
        return int(cursor)
    except ValueError:
        raise ValueError(f"not a cursor of this listing: {cursor!r}") from None


def require(backend: object, method: str, capability: str) -> Any:
    """``backend.method``, or a clear error if the backend does not offer it."""
    from lexigram.tasks.errors import CapabilityNotSupportedError

    declared: frozenset[str] = getattr(backend, "capabilities", frozenset())
    found = getattr(backend, method, None)
    if capability not in declared or found is None:
        name = getattr(backend, "queue_name", "?")
        raise CapabilityNotSupportedError(
            f"{type(backend).__name__} (queue {name!r}) does not support {method}() "
            f"(capability {capability!r} is not declared)"
        )
    return found
