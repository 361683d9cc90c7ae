"""What the worker pool is built from: dead-letter types, slots and their deadlines,
daemon threads, the loop watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from opentelemetry.trace import Span

from lexigram.tasks.current import CurrentJob, ProgressHost
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Delivery

logger = logging.getLogger("lexigram.tasks.worker")


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFailure:
    """A job (or a message that is not a valid job) that failed for good.

    The worker gives one to its dead-letter sink. The DLQ's ``FailureRecord``
    is this shape too, plus what keeping it adds (an id, a revision, where it
    came from). ``job`` is the job as it last ran, None for a message that is
    not a valid job; ``payload`` the message's bytes as received (a record
    keeps them only when there is no ``job`` to hold them; ``raw`` gives the
    bytes either way). ``reason`` is ``"{error_type}: {error_message}"`` or a
    backend's reason; ``attempts`` how many times the job ran; ``worker_id``
    ``host:pid:suffix``. ``trace_context`` holds the job's trace headers
    (the worker passes the job's headers; a record, the failed run's W3C
    context). ``failed_at`` is Unix epoch seconds.
    """

    job: Job | None
    queue: str
    reason: str
    error_type: str
    error_message: str
    traceback: str
    attempts: int
    worker_id: str
    failed_at: float = field(default_factory=time.time)
    trace_context: dict[str, str] = field(default_factory=dict)
    payload: bytes | None = None

    @property
    def task(self) -> str | None:
        """The task name, or None for a message that was not a valid job."""
        return self.job.task if self.job is not None else None

    @property
    def raw(self) -> bytes:
        """The message bytes: the job's JSON document, or the bytes of one that is not a job."""
        if self.job is not None:
            return self.job.to_bytes()
        return self.payload or b""

    @property
    def failed_datetime(self) -> datetime:
        """``failed_at`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.failed_at, UTC)


@runtime_checkable
class DeadLetterSink(Protocol):
    """Receives jobs that exhausted their retries and messages that are not valid jobs.

    ``lexigram-tasks-dlq``'s ``DeadLetterQueue`` is one. Without a sink the
    backend keeps such messages itself (``queue.dead_letters()``).
    """

    async def add(self, failure: JobFailure) -> None: ...


class AcksRide(Protocol):
    """A queue's ``dequeue_after_ack``: a lease as ``dequeue`` makes it, with ``acks``
    acked in the same write. Returns the deliveries and whether the ack went
    through (if not, the worker acks them again: an ack is idempotent)."""

    async def __call__(
        self, acks: list[Delivery], *, max_jobs: int, lease_seconds: float, wait: float
    ) -> tuple[list[Delivery], bool]: ...


class Slot:
    """One of the pool's long-lived worker coroutines, and the job it runs.

    ``deadline`` (``time.monotonic()``) is set only while the handler runs, so the
    sweeper cancels nothing but the handler. ``expired`` marks a cancellation
    the sweeper made (undone with ``Task.uncancel`` when the job ends);
    ``overran`` a thread that passed its deadline; ``finished`` a job whose
    handler returned (on cancellation it is acked, not returned). It is the
    :class:`~lexigram.tasks.current.Seat` of ``current_job()``: ``span`` is
    the running job's span, ``current`` its
    :class:`~lexigram.tasks.current.CurrentJob` once built (it belongs to the
    job only while its ``delivery`` is the slot's), ``host`` the pool.
    ``cancelled`` marks a cancellation of the runner made because the job's
    cancellation was asked for (undone like ``expired``).
    """

    __slots__ = (
        "cancelled",
        "current",
        "deadline",
        "delivery",
        "expired",
        "finished",
        "host",
        "in_thread",
        "overran",
        "runner",
        "span",
        "timeout",
        "waiter",
    )

    runner: asyncio.Task[None]  # the coroutine's task, set when the pool starts it

    def __init__(self, host: ProgressHost) -> None:
        self.host = host
        self.span: Span | None = None
        self.delivery: Delivery | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.deadline: float | None = None
        self.timeout = 0.0
        self.in_thread = False
        self.expired = False
        self.overran = False
        self.finished = False
        self.cancelled = False
        self.current: CurrentJob | None = None


class DeadlineSweeper:
    """One timer for the deadlines of every slot, set for the nearest one.

    Starting a job only writes its slot's deadline; the timer moves only when
    that deadline comes before the one it is set for (with one timeout for
    every task, almost never). When it fires, it hands each slot past its
    deadline to ``expire`` and sets itself for the next.
    """

    def __init__(self, slots: list[Slot], expire: Callable[[Slot], None]) -> None:
        self._slots = slots
        self._expire = expire
        self._timer: asyncio.TimerHandle | None = None
        self.at = math.inf  # when the timer fires

    def arm(self, deadline: float) -> None:
        """Fire no later than ``deadline`` (``time.monotonic()``; the caller checks ``at``)."""
        if self._timer is not None:
            self._timer.cancel()
        self.at = deadline
        # Deadlines are on the monotonic clock, which the job already reads; a loop's
        # own clock may differ (uvloop), so the timer is set by the time left.
        delay = deadline - time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(delay, self._sweep)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self.at = math.inf

    def _sweep(self) -> None:
        self._timer = None
        self.at = math.inf
        now = time.monotonic()
        nearest = math.inf
        for slot in self._slots:
            deadline = slot.deadline
            if deadline is None:
                continue
            if deadline <= now:
                slot.deadline = None
                self._expire(slot)
            elif deadline < nearest:
                nearest = deadline
        if nearest < math.inf:
            self.arm(nearest)


class DaemonThreads:
    """Runs plain functions in daemon threads, started on demand and reused.

    Not a ``ThreadPoolExecutor``: its threads are joined at interpreter exit,
    so one task that overran would hold the process past its shutdown window.
    A thread cannot be stopped; a daemon thread at least dies with the process.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0
        self._numbers = itertools.count(1)

    def run(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Start ``fn`` in a thread; the future completes on the calling loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        # Whoever stopped waiting (a returned job) never reads it: do not log it as lost.
        future.add_done_callback(_mark_retrieved)

        def call() -> None:
            try:
                outcome: tuple[Callable[[Any], None], Any] = (future.set_result, fn())
            except Exception as exc:
                outcome = (future.set_exception, exc)
            except BaseException as exc:  # SystemExit and the like must not kill the thread
                outcome = (future.set_exception, RuntimeError(f"task raised {exc!r}"))
            # A closed loop raises RuntimeError: nobody waits for this result any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, *outcome)

        with self._lock:
            spawn = self._idle == 0
            if spawn:
                self._threads += 1
            else:
                self._idle -= 1
        if spawn:
            name = f"{self._name}-{next(self._numbers)}"
            threading.Thread(target=self._serve, name=name, daemon=True).start()
        self._work.put(call)
        return future

    def shutdown(self) -> None:
        """Let every thread exit once it has finished what it runs (does not wait)."""
        with self._lock:
            threads, self._threads, self._idle = self._threads, 0, 0
        for _ in range(threads):
            self._work.put(None)

    def _serve(self) -> None:
        while (call := self._work.get()) is not None:
            call()
            with self._lock:
                self._idle += 1


def _settle(future: asyncio.Future[Any], setter: Callable[[Any], None], value: Any) -> None:
    if not future.done():
        setter(value)


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class LoopWatchdog:
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
