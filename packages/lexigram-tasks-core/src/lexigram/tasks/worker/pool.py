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
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any, Unpack

from opentelemetry.trace import Span

from lexigram.tasks._otel import Telemetry
from lexigram.tasks.concurrency import ConcurrencyLimiter
from lexigram.tasks.control import require
from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.events import EventBus
from lexigram.tasks.protocol import Capability, Delivery, TaskQueueProtocol
from lexigram.tasks.ratelimit import LocalRateLimiter, Rate, RateLimiter
from lexigram.tasks.results import ResultStore
from lexigram.tasks.task import Task
from lexigram.tasks.worker._cancelling import Cancelling
from lexigram.tasks.worker._process_pool import ProcessExecutor, check_process_tasks
from lexigram.tasks.worker._running import GLOBAL_RATE_KEY, UNKNOWN_SINCE_FIELD
from lexigram.tasks.worker._settings import SettingsView, WorkerSettings, WorkerSettingsKeywords
from lexigram.tasks.worker._support import (
    AcksRide,
    DaemonThreads,
    DeadLetterSink,
    DeadlineSweeper,
    LoopWatchdog,
    Slot,
)

logger = logging.getLogger("lexigram.tasks.worker")

__all__ = ["GLOBAL_RATE_KEY", "UNKNOWN_SINCE_FIELD", "WorkerPool", "new_worker_id"]


def new_worker_id() -> str:
    """A worker id: ``host:pid:suffix``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class WorkerPool(Cancelling, SettingsView):
    """Runs jobs from ``queue`` with the handlers in ``tasks``.

    ``settings`` (or its fields as keywords: ``WorkerPool(q, tasks,
    worker_count=4)``) says how it runs; see :class:`WorkerSettings`. A job whose worker
    died (its lease lapsed) runs again alone, up to ``lost_lease_retries``
    times, before it is dead-lettered as ``LeaseExpired``. A job for a task
    this worker does not have goes back to the queue for other workers, and is
    dead-lettered once no worker has run it for ``unknown_task_grace`` seconds.

    On a backend declaring ``Capability.CANCEL`` it watches for cancellations
    while it runs (see ``worker/_cancelling.py``); on one declaring
    ``Capability.INSPECT`` it writes the progress its tasks report. The
    :class:`~lexigram.tasks.TaskProvider` registers its pools in the
    live-worker list. ``jobs_done`` counts the jobs whose task returned,
    ``jobs_failed`` the runs that raised or timed out (retried or not).
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
        concurrency_limiter: ConcurrencyLimiter | None = None,
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
        self.concurrency_limiter = concurrency_limiter
        self.worker_id = worker_id or new_worker_id()
        self._system = queue.system
        self._can_delay = Capability.DELAY in queue.capabilities
        self._record_progress = (
            require(queue, "record_progress", Capability.INSPECT)
            if Capability.INSPECT in queue.capabilities
            else None
        )
        self._ending: set[asyncio.Task[None]] = set()  # jobs cancelled while in line
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
        self._acks_ride: AcksRide | None = None
        self._linger_until: float | None = None
        self._fetch_parked = False
        self._suspect: Delivery | None = None
        self._own_limiter = False
        self._job_done = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._stopping = False
        self._started = False
        self._stopped = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._fetcher: asyncio.Task[None] | None = None
        self._threads: DaemonThreads | None = None
        self._processes: ProcessExecutor | None = None
        self._watchdog: LoopWatchdog | None = None
        self.processed = 0
        self.jobs_done = 0
        self.jobs_failed = 0

    def __repr__(self) -> str:
        return f"WorkerPool(queue={self.queue!r}, worker_count={self.settings.worker_count})"

    @property
    def running(self) -> int:
        """Jobs being executed right now."""
        return self._busy

    def running_ids(self) -> list[str]:
        """Ids of the jobs running on the slots now."""
        return [
            slot.delivery.job.id
            for slot in self._slots
            if slot.delivery is not None and slot.delivery.job is not None
        ]

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
        chosen = self.concurrency_limiter
        self._prepare_limits(list(self.tasks.values()))
        # A limiter picked here (on the queue's own connection) is this pool's to close.
        self._own_limiter = chosen is None and self.concurrency_limiter is not None
        check_process_tasks(self.tasks.values(), self.settings.default_executor)
        self._started = True
        self._acks_closing = False
        self._acks_ride = (
            getattr(self.queue, "dequeue_after_ack", None)
            if getattr(self.queue, "acks_ride_with_lease", False)
            else None
        )
        self._linger_until = None
        self._stopping = False
        self._stopped.clear()
        span = self._worker_span("start")
        self._threads = DaemonThreads("lexigram-task")
        self._slots[:] = [Slot(self) for _ in range(self.settings.worker_count)]
        self._ready.clear()
        self._idle = []
        self._waking = 0
        self._busy = 0
        self._loop = asyncio.get_running_loop()
        for number, slot in enumerate(self._slots, 1):
            slot.runner = asyncio.create_task(self._slot_loop(slot), name=f"lexigram-slot-{number}")
        self._fetcher = asyncio.create_task(self._fetch_loop(), name="lexigram-fetch")
        self._background = [
            asyncio.create_task(self._ack_loop(), name="lexigram-ack"),
            asyncio.create_task(self._heartbeat_loop(), name="lexigram-heartbeat"),
        ]
        if Capability.CANCEL in self.queue.capabilities:
            watch = require(self.queue, "watch_cancellations", Capability.CANCEL)
            self._background.append(
                asyncio.create_task(self._watch_cancellations(watch), name="lexigram-cancellations")
            )
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
        if self._processes is not None:
            await self._processes.close()
            self._processes = None
        if self._ending:  # jobs cancelled in line: their acks join the last flush
            await asyncio.wait(list(self._ending), timeout=5.0)
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
        if self._own_limiter:
            # Its last releases go now: once the provider closes the queue's
            # connection, a late one would open a connection nobody closes.
            limiter, self.concurrency_limiter = self.concurrency_limiter, None
            closer = getattr(limiter, "disconnect", None)
            if closer is not None:
                await closer()
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
