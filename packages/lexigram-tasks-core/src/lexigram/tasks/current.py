"""The running job, from inside its task: ``current_job()``.

A task reads its own id and attempt, reports progress and metadata, and
learns that a cancellation was asked for::

    from lexigram.tasks.current import current_job

    @provider.task
    async def export(rows: list[int]) -> None:
        job = current_job()
        for done, row in enumerate(rows, 1):
            await write(row)
            await job.progress(done / len(rows), f"row {done}")

Progress is coalesced: the latest report and the metadata changes are kept
in memory and written to the backend at most once per ``progress_interval``
(a worker setting), with a last write before the job is settled, so a task
may report as often as it likes. Each write is also a ``progress`` span
event. Without :attr:`~lexigram.tasks.Capability.INSPECT` on the backend
nothing is written (the span events remain).

A plain ``def`` task runs in a thread, where it cannot be interrupted: it
reads :attr:`CurrentJob.cancel_requested` (or calls
:meth:`CurrentJob.raise_if_cancelled`) to stop itself, and reports with
:meth:`CurrentJob.progress_sync` and :meth:`CurrentJob.set_meta_sync`, which
are safe to call from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from lexigram.tasks.control import Progress
from lexigram.tasks.errors import JobCancelledError, TaskError

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from lexigram.tasks.job import Job
    from lexigram.tasks.protocol import Delivery

logger = logging.getLogger("lexigram.tasks.worker")

__all__ = ["CurrentJob", "NoCurrentJobError", "current_job"]


class NoCurrentJobError(TaskError, LookupError):
    """``current_job()`` was called outside a running job."""


#: Writes one coalesced report to the backend (``None``: the backend keeps no progress).
ProgressWriter = Callable[[Progress], Awaitable[None]]
#: Records one coalesced report on the job's span.
ProgressRecorder = Callable[["Span", Progress], None]


class ProgressHost(Protocol):
    """The worker side of progress reports: builds a job's sink on its first report."""

    def progress_sink(self, delivery: Delivery, span: Span) -> ProgressSink: ...


class CurrentJob:
    """The running job, as its task sees it (see :func:`current_job`)."""

    __slots__ = ("_cancel_requested", "_delivery", "_host", "_job", "_reporter", "_span")

    def __init__(self, job: Job, delivery: Delivery, span: Span, host: ProgressHost) -> None:
        self._job = job
        self._delivery = delivery
        self._span = span
        self._host = host
        self._cancel_requested = False
        self._reporter: _Reporter | None = None

    def __repr__(self) -> str:
        return f"CurrentJob(id={self.id!r}, task={self.task!r}, attempt={self.attempt})"

    @property
    def id(self) -> str:
        """The job's id."""
        return self._job.id

    @property
    def attempt(self) -> int:
        """This run's number, 1 for the first."""
        return self._job.attempt

    @property
    def task(self) -> str:
        """The task's registered name."""
        return self._job.task

    @property
    def cancel_requested(self) -> bool:
        """True once a cancellation of this job was asked for.

        An ``async def`` task is cancelled (it gets ``asyncio.CancelledError``)
        and need not look; a plain ``def`` task cannot be interrupted and
        should stop itself, e.g. with :meth:`raise_if_cancelled`. A ``def``
        task that returns normally anyway has succeeded.
        """
        return self._cancel_requested

    def raise_if_cancelled(self) -> None:
        """Raise :class:`~lexigram.tasks.JobCancelledError` if a cancellation was asked for.

        Raised out of the task, it ends the job ``cancelled`` (not failed, not retried).
        """
        if self._cancel_requested:
            raise JobCancelledError(self._job.id)

    async def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Report how far along the job is: ``fraction`` from 0.0 to 1.0 and/or a message.

        ``None`` leaves that part as it was. Coalesced (see the module): it
        returns at once, the write follows within ``progress_interval``.
        Raises ``ValueError`` for a fraction outside 0..1.
        """
        self.progress_sync(fraction, message)

    async def set_meta(self, meta: Mapping[str, Any]) -> None:
        """Merge ``meta`` (JSON-serialisable values) into the job's metadata; coalesced
        as :meth:`progress` is."""
        self.set_meta_sync(meta)

    def progress_sync(self, fraction: float | None = None, message: str | None = None) -> None:
        """:meth:`progress` for plain ``def`` tasks: callable from any thread."""
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, int | float):
                raise TypeError(f"progress fraction must be a number, got {fraction!r}")
            if math.isnan(fraction) or not 0.0 <= fraction <= 1.0:
                raise ValueError(
                    f"progress fraction must be between 0.0 and 1.0 (a share of the work "
                    f"done), got {fraction!r}"
                )
        if message is not None and not isinstance(message, str):
            raise TypeError(f"progress message must be a string, got {message!r}")
        self._reporter_for().update(
            float(fraction) if fraction is not None else None, message, None
        )

    def set_meta_sync(self, meta: Mapping[str, Any]) -> None:
        """:meth:`set_meta` for plain ``def`` tasks: callable from any thread."""
        if not isinstance(meta, Mapping):
            raise TypeError(f"job metadata must be a mapping, got {type(meta).__name__}")
        self._reporter_for().update(None, None, dict(meta))

    def _reporter_for(self) -> _Reporter:
        reporter = self._reporter
        if reporter is None:
            with _CREATE_LOCK:
                reporter = self._reporter
                if reporter is None:
                    sink = self._host.progress_sink(self._delivery, self._span)
                    reporter = self._reporter = _Reporter(sink)
        return reporter

    # -- for the worker --------------------------------------------------------

    def request_cancel(self) -> None:
        """Mark the cancellation (the worker calls it when it hears one)."""
        self._cancel_requested = True

    async def flush(self) -> None:
        """Write what is not written yet; the worker calls it before settling the job."""
        if self._reporter is not None:
            await self._reporter.close()


_CREATE_LOCK = threading.Lock()


class ProgressSink:
    """Where one job's coalesced reports go: the backend (if it keeps progress) and the span."""

    __slots__ = ("interval", "loop", "record", "span", "write")

    def __init__(
        self,
        write: ProgressWriter | None,
        record: ProgressRecorder,
        span: Span,
        interval: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.write = write
        self.record = record
        self.span = span
        self.interval = interval
        self.loop = loop


class _Reporter:
    """The latest progress of one job and the schedule of its writes (thread-safe)."""

    def __init__(self, sink: ProgressSink) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._fraction: float | None = None
        self._message: str | None = None
        self._meta: dict[str, Any] = {}  # changes not written yet
        self._dirty = False
        self._scheduled = False  # a write is planned or running
        self._closed = False
        self._last_write = -math.inf  # time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[None] | None = None

    def update(
        self, fraction: float | None, message: str | None, meta: dict[str, Any] | None
    ) -> None:
        with self._lock:
            if fraction is not None:
                self._fraction = fraction
            if message is not None:
                self._message = message
            if meta:
                self._meta.update(meta)
            self._dirty = True
            if self._scheduled or self._closed:
                return
            self._scheduled = True
        loop = self._sink.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._plan()
        else:  # a def task's thread
            # A closed loop raises RuntimeError: nobody will write it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._plan)

    def _plan(self) -> None:
        """On the loop: write now, or when ``interval`` has passed since the last write."""
        if self._closed:
            return
        wait = self._last_write + self._sink.interval - time.monotonic()
        if wait > 0:
            self._timer = self._sink.loop.call_later(wait, self._start_write)
        else:
            self._start_write()

    def _start_write(self) -> None:
        self._timer = None
        if not self._closed:
            self._writing = self._sink.loop.create_task(self._write_pending())

    def _take(self) -> Progress | None:
        with self._lock:
            if not self._dirty:
                self._scheduled = False
                return None
            report = Progress(self._fraction, self._message, self._meta)
            self._meta = {}
            self._dirty = False
            return report

    async def _write_pending(self) -> None:
        report = self._take()
        if report is None:
            return
        self._last_write = time.monotonic()
        await self._send(report)
        with self._lock:
            self._scheduled = self._dirty and not self._closed
            again = self._scheduled
        if again:
            self._plan()

    async def _send(self, report: Progress) -> None:
        sink = self._sink
        sink.record(sink.span, report)
        if sink.write is None:
            return
        try:
            await sink.write(report)
        except Exception as exc:
            logger.warning("recording progress failed: %s: %s", type(exc).__name__, exc)

    async def close(self) -> None:
        """Stop the schedule and write the last report, if any is pending."""
        with self._lock:
            self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        writing = self._writing
        if writing is not None and not writing.done():
            await asyncio.wait([writing])
        with self._lock:
            dirty = self._dirty
        if dirty:
            report = self._take()
            if report is not None:
                await self._send(report)


class Seat(Protocol):
    """Where jobs run one after another (a worker slot): its job now, and the job's span."""

    delivery: Delivery | None
    current: CurrentJob | None
    span: Span | None
    host: ProgressHost


#: The seat of the code running here: set once per slot, copied into what the
#: slot's jobs start (tasks, a ``def`` task's thread), so a job costs no
#: context-variable write; the :class:`CurrentJob` is built on first use.
seat: ContextVar[Seat | None] = ContextVar("lexigram_tasks_seat", default=None)


def current_job() -> CurrentJob:
    """The job whose task is running here: in the task, in what it awaits, in the
    asyncio tasks it starts and in a plain ``def`` task's thread.

    A task the job starts that outlives it keeps the object it got (``job =
    current_job()`` while the job runs) rather than calling this later.
    Raises :class:`NoCurrentJobError` outside a job run by a worker.
    """
    found = seat.get()
    if found is not None:
        current = found.current
        delivery = found.delivery
        if current is not None and current._delivery is delivery:
            return current
        if delivery is not None and delivery.job is not None and found.span is not None:
            return job_of(found, delivery)
    raise NoCurrentJobError(
        "current_job() was called outside a running job: it works only inside a task "
        "while a worker runs it (called directly, the task function has no job)"
    )


def job_of(found: Seat, delivery: Delivery) -> CurrentJob:
    """The :class:`CurrentJob` of ``delivery``, running on ``found``; built once (any thread)."""
    with _CREATE_LOCK:
        current = found.current
        if current is None or current._delivery is not delivery:
            job, span = delivery.job, found.span
            assert job is not None  # the callers checked both
            assert span is not None
            current = found.current = CurrentJob(job, delivery, span, found.host)
        return current
