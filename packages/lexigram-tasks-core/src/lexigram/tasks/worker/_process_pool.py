"""The process executor: tasks run in child processes that can be killed.

Children are started on demand (``spawn``), at most ``size`` of them, each running one job at a time
sent over its own pipe as JSON. The loop waits on a child's pipe and on its
process sentinel at once, so a child that dies mid-job is seen at once. A
job past its timeout or cancelled has its child sent SIGTERM, then SIGKILL
after :data:`KILL_GRACE` seconds; the job ends only once that child is gone,
so its retry never overlaps it. Children are recycled after
``max_jobs_per_child`` jobs or once their resident memory passes
``max_memory_mb``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from opentelemetry import propagate
from opentelemetry.trace import Span

from lexigram.tasks.errors import (
    JobCancelledError,
    JobSerializationError,
    WorkerProcessCrashed,
)
from lexigram.tasks.job import Job
from lexigram.tasks.task import Task
from lexigram.tasks.worker._process_handle import KILL_GRACE, START_METHOD, Child, reaping
from lexigram.tasks.worker._process_support import (
    check_process_tasks,
    importable_problem,
    rebuild,
    runs_in_process,
)

__all__ = [
    "KILL_GRACE",
    "ProcessExecutor",
    "check_process_tasks",
    "importable_problem",
    "run_in_process",
]

logger = logging.getLogger("lexigram.tasks.worker")


class ProcessExecutor:
    """At most ``size`` child processes running process-executor jobs of one pool."""

    def __init__(
        self, size: int, max_jobs_per_child: int, max_memory_mb: int, modules: list[str]
    ) -> None:
        self.size = size
        self.modules = modules  # imported by each child before its first job
        self.max_jobs = max_jobs_per_child
        self.max_memory = max_memory_mb * 1024 * 1024
        self._context = multiprocessing.get_context(START_METHOD)
        self._idle: list[Child] = []
        self._alive = 0  # children started and not yet gone
        self._started = 0
        self._waiting: deque[asyncio.Future[bool]] = deque()  # True: your turn; False: stop
        self._queued: dict[object, asyncio.Future[bool]] = {}  # slot -> its job's waiter
        self._running: dict[object, Child] = {}  # slot -> the child running its job
        self._closed = False

    @property
    def waiting(self) -> int:
        """Jobs waiting for a child (every child is busy)."""
        return len(self._waiting)

    def holds(self, slot: object) -> bool:
        return slot in self._running

    def stop_job(self, slot: object, reason: str) -> bool:
        """Kill the child running ``slot``'s job (``"timeout"`` or ``"cancel"``); a job
        still waiting for a child ends at once (:class:`JobCancelledError`)."""
        waiter = self._queued.get(slot)
        if waiter is not None:
            if not waiter.done():
                self._waiting.remove(waiter)
                waiter.set_result(False)
            return True
        child = self._running.get(slot)
        if child is None or child.stopped_for is not None:
            return child is not None
        child.kill(reason)
        return True

    async def run(
        self,
        slot: object,
        request: dict[str, Any],
        started: Callable[[], None],
        timed_out: Callable[[], Exception],
    ) -> Any:
        """Run one job in a child; ``started`` is called once a child has it."""
        try:
            data = json.dumps(request).encode()
        except (TypeError, ValueError) as exc:
            raise JobSerializationError(
                f"the arguments of task {request['task']!r} cannot travel as JSON: {exc}"
            ) from None
        child = await self._acquire(slot)
        if child is None:
            raise JobCancelledError(request["id"])  # cancelled while waiting for a child
        self._running[slot] = child
        started()
        try:
            reply = await child.call(data)
        except BaseException:
            # The slot is cancelled (shutdown past its window): the job goes back
            # to the queue, so its run must not go on.
            del self._running[slot]
            self._lose()
            child.kill("shutdown")
            child.retire()
            raise
        del self._running[slot]
        if reply is None or child.stopped_for is not None:
            self._lose()
            if reply is not None:  # it answered as it was being stopped: not reused
                child.retire()
            if child.stopped_for == "cancel":
                raise JobCancelledError(request["id"])
            if child.stopped_for == "timeout":
                raise timed_out()
            raise WorkerProcessCrashed(
                f"the child process running task {request['task']!r} (pid {child.pid}) died "
                f"before answering: {child.how_it_ended()}"
            )
        answer = json.loads(reply)
        child.jobs += 1
        self._release(child, answer["rss"])
        if answer["ok"]:
            return answer["result"]
        raise rebuild(answer)

    async def _acquire(self, slot: object) -> Child | None:
        """A child for ``slot``'s job; None if the job was stopped while waiting."""
        while True:
            while self._idle:
                child = self._idle.pop()
                if child.process.exitcode is None:
                    return child
                self._lose()  # died while idle (killed from outside): replaced below
                child.discard()
            if self._alive < self.size:
                self._alive += 1
                self._started += 1
                try:
                    child = Child(self._context, self._started, self.modules, self.max_memory > 0)
                except BaseException:
                    self._lose()
                    raise
                try:
                    ready = await child.ready()
                except BaseException:
                    self._lose()
                    child.kill("shutdown")
                    child.retire()
                    raise
                if ready:
                    return child
                self._lose()
                raise WorkerProcessCrashed(
                    f"a child process of the process executor (pid {child.pid}) died while "
                    f"starting: {child.how_it_ended()}"
                )
            waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            self._queued[slot] = waiter
            try:
                if not await waiter:
                    return None
            except BaseException:
                if not waiter.done() or waiter.cancelled():
                    with contextlib.suppress(ValueError):
                        self._waiting.remove(waiter)  # counted by ``waiting`` otherwise
                elif waiter.result():
                    self._wake()  # pass the turn on
                raise
            finally:
                del self._queued[slot]

    def _release(self, child: Child, rss: int) -> None:
        if self.max_jobs and child.jobs >= self.max_jobs:
            why = f"ran {child.jobs} jobs (max_jobs_per_child)"
        elif self.max_memory and rss > self.max_memory:
            why = f"uses {rss / 2**20:.0f} MB (max_memory_per_child)"
        else:
            self._idle.append(child)
            self._wake()
            return
        logger.info("replacing child process %d: it %s", child.pid, why)
        self._lose()
        child.retire()

    def _lose(self) -> None:
        self._alive -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return

    async def close(self) -> None:
        """Stop every idle child and wait for them (running ones were stopped by the pool)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for child in idle:
            child.retire()
        for child in list(self._running.values()):
            child.kill("shutdown")
        if reaping:
            await asyncio.wait(list(reaping), timeout=KILL_GRACE + 5)


async def run_in_process(
    pool: Any, slot: Any, task: Task[Any, Any], job: Job, timeout: float, span: Span
) -> Any:
    """Run ``job`` on ``pool``'s process executor (started on first use), under ``timeout``.

    The trace context passed to the child is the current one: the worker's
    process span when tracing is on, else the job's own.
    """
    executor: ProcessExecutor | None = pool._processes
    if executor is None:
        settings = pool.settings
        size = settings.process_pool_size or min(settings.worker_count, os.cpu_count() or 1)
        modules = sorted(
            {
                t.fn.__module__
                for t in pool.tasks.values()
                if runs_in_process(t, settings.default_executor)
            }
        )
        executor = pool._processes = ProcessExecutor(
            size, settings.max_jobs_per_child, settings.max_memory_per_child, modules
        )
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    fn = task.fn
    request = {
        "task": job.task,
        "id": job.id,
        "attempt": job.attempt,
        "queue": job.queue,
        "module": fn.__module__,
        "qualname": fn.__qualname__,
        "args": job.args,
        "kwargs": job.kwargs,
        "trace": carrier,
    }

    def started() -> None:
        slot.in_thread = False
        slot.timeout = timeout
        slot.deadline = deadline = time.monotonic() + timeout
        if deadline < pool._sweeper.at:
            pool._sweeper.arm(deadline)

    try:
        return await executor.run(slot, request, started, lambda: pool._timed_out(job, timeout))
    finally:
        slot.deadline = None
