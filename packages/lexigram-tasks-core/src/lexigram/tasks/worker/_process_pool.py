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
from functools import partial
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


class _Job:
    """One job of the executor, from its arrival to its child's reply."""

    __slots__ = ("answered", "child", "data", "reply", "slot", "started", "stopped", "turn")

    def __init__(
        self,
        slot: object,
        data: bytes,
        started: Callable[[], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.slot = slot
        self.data = data
        self.started = started
        self.child: Child | None = None  # once sent to one
        self.turn: asyncio.Future[None] | None = None  # while in line: done when it leaves it
        self.reply: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        self.answered = False  # its child replied, though it was being stopped
        self.stopped = False  # cancelled before it reached a child


class ProcessExecutor:
    """At most ``size`` child processes running process-executor jobs of one pool.

    A job arriving while every child is busy waits in line with its encoded
    request; the callback that reads a child's reply sends that child the next
    job in line at once, so a child is not left idle while the loop gets round
    to the job's own task.
    """

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
        self._waiting: deque[_Job] = deque()  # jobs in line for a child, first come first
        self._queued: dict[object, _Job] = {}  # slot -> its job, not yet sent to a child
        self._running: dict[object, _Job] = {}  # slot -> its job, sent to a child
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
        job = self._queued.pop(slot, None)
        if job is not None:
            job.stopped = True
            with contextlib.suppress(ValueError):
                self._waiting.remove(job)
            if job.turn is not None and not job.turn.done():
                job.turn.set_result(None)
            return True
        job = self._running.get(slot)
        if job is None:
            return False
        child = job.child
        # Already answered: it ends at once anyway.
        if child is not None and child.stopped_for is None and not job.reply.done():
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
        job = _Job(slot, data, started, asyncio.get_running_loop())
        self._queued[slot] = job
        try:
            if not await self._place(job):
                raise JobCancelledError(request["id"])  # cancelled while waiting for a child
            answer = await job.reply
        except BaseException:
            child = job.child
            if child is not None and (job.reply.cancelled() or not job.reply.done()):
                # The slot is cancelled (shutdown past its window): the job goes back
                # to the queue, so its run must not go on.
                self._lose()
                child.kill("shutdown")
                child.retire()
            raise
        finally:
            self._queued.pop(slot, None)
            self._running.pop(slot, None)
        if answer is not None:
            if answer["ok"]:
                return answer["result"]
            raise rebuild(answer)
        child = job.child
        assert child is not None
        try:
            if not job.answered:
                await child.reap()
        finally:
            self._lose()
            if job.answered:  # it answered as it was being stopped: not reused
                child.retire()
        if child.stopped_for == "cancel":
            raise JobCancelledError(request["id"])
        if child.stopped_for == "timeout":
            raise timed_out()
        raise WorkerProcessCrashed(
            f"the child process running task {request['task']!r} (pid {child.pid}) died "
            f"before answering: {child.how_it_ended()}"
        )

    async def _place(self, job: _Job) -> bool:
        """Send ``job`` to an idle child, a new one, or the first to free up (which gets
        it in the callback reading its reply); False if the job was stopped first."""
        first = False  # woken for a free place: back at the head of the line if it is taken
        while True:
            child = self._idle_child()
            if child is not None:
                self._send(child, job)
                return True
            if self._alive < self.size:
                child = await self._start()
                if job.stopped:  # cancelled while its child started
                    self._release(child, 0)
                    return False
                self._send(child, job)
                return True
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            job.turn = turn
            if first:
                self._waiting.appendleft(job)
            else:
                self._waiting.append(job)
            try:
                await turn
            except BaseException:
                if not turn.done() or turn.cancelled():
                    with contextlib.suppress(ValueError):
                        self._waiting.remove(job)  # counted by ``waiting`` otherwise
                elif job.child is None and not job.stopped:
                    self._wake()  # pass the turn on
                raise
            finally:
                job.turn = None
            if job.child is not None:
                return True
            if job.stopped:
                return False
            first = True

    def _idle_child(self) -> Child | None:
        while self._idle:
            child = self._idle.pop()
            if child.process.exitcode is None:
                return child
            self._lose()  # died while idle (killed from outside): replaced by the caller
            child.discard()
        return None

    async def _start(self) -> Child:
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

    def _send(self, child: Child, job: _Job) -> None:
        self._queued.pop(job.slot, None)
        self._running[job.slot] = job
        job.child = child
        child.send(job.data, partial(self._replied, job))
        job.started()

    def _replied(self, job: _Job, reply: bytes | None) -> None:
        """A child's reply (None: it died), read from its pipe: the child's next job
        is sent before the reply is handed to this job's task."""
        child = job.child
        assert child is not None
        if job.reply.done():  # its task was cancelled, and has stopped the child
            return
        if reply is None or child.stopped_for is not None:
            job.answered = reply is not None
            job.reply.set_result(None)
            return
        answer = json.loads(reply)
        child.jobs += 1
        self._release(child, answer["rss"])
        job.reply.set_result(answer)

    def _release(self, child: Child, rss: int) -> None:
        """``child`` is free: it gets the next job in line, or waits for one, unless
        it has run its share (it is replaced)."""
        if self.max_jobs and child.jobs >= self.max_jobs:
            why = f"ran {child.jobs} jobs (max_jobs_per_child)"
        elif self.max_memory and rss > self.max_memory:
            why = f"uses {rss / 2**20:.0f} MB (max_memory_per_child)"
        else:
            waiting = self._waiting
            while waiting:
                job = waiting.popleft()
                turn = job.turn
                if turn is not None and not turn.done():
                    self._send(child, job)
                    turn.set_result(None)
                    return
            self._idle.append(child)
            return
        logger.info("replacing child process %d: it %s", child.pid, why)
        self._lose()
        child.retire()

    def _lose(self) -> None:
        """A child is gone: the first job in line may start another."""
        self._alive -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft().turn
            if turn is not None and not turn.done():
                turn.set_result(None)
                return

    async def close(self) -> None:
        """Stop every idle child and wait for them (running ones were stopped by the pool)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for child in idle:
            child.retire()
        for job in list(self._running.values()):
            if job.child is not None:
                job.child.kill("shutdown")
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
