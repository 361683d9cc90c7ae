"""The process executor: tasks run in child processes that can be killed.

Children are started on demand (``spawn``), at most ``size`` of them, each
running one job at a time sent over its own pipe as JSON, with the next job
already in its pipe (``_process_holding``). The loop waits on a child's pipe
and on its process sentinel at once, so a child that dies mid-job is seen at
once.
A job past its timeout or cancelled has its child sent SIGTERM, then SIGKILL
after :data:`KILL_GRACE` seconds; the job ends only once that child is gone,
so its retry never overlaps it, and the job behind it in the pipe, taken
back unstarted, goes to another child. Children are recycled after
``max_jobs_per_child`` jobs or once their resident memory passes
``max_memory_mb``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from opentelemetry import propagate
from opentelemetry.trace import Span

from lexigram.tasks._otel._spans import context_to_pass_on
from lexigram.tasks.errors import (
    JobCancelledError,
    JobSerializationError,
    WorkerProcessCrashed,
)
from lexigram.tasks.job import Job
from lexigram.tasks.task import Task
from lexigram.tasks.worker._process_handle import KILL_GRACE, START_METHOD, Child, reaping
from lexigram.tasks.worker._process_holding import AGAIN, TAKEN_BACK, TURN, HeldJob, Holding
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


class ProcessExecutor(Holding):
    """At most ``size`` child processes running process-executor jobs of one pool.

    Each child holds up to :data:`DEPTH` jobs: the one it runs and the next one,
    sent ahead into its pipe, which it starts as soon as it has written the
    reply to the first (the job's clock starts when the worker reads that
    reply). A job sent ahead can be taken back until the child starts it (see
    :meth:`Child.withdraw`): it is cancelled, or placed again when its child is
    killed, crashes or is to be replaced. Jobs arriving while every child is
    full wait in line; the callback that reads a child's reply sends it the next
    job in line at once.
    """

    def __init__(
        self, size: int, max_jobs_per_child: int, max_memory_mb: int, modules: list[str]
    ) -> None:
        self.size = size
        self.modules = modules  # imported by each child before its first job
        self.max_jobs = max_jobs_per_child
        self.max_memory = max_memory_mb * 1024 * 1024
        self._context = multiprocessing.get_context(START_METHOD)
        self._children: list[Child] = []  # started and counted
        self._idle: list[Child] = []  # of those, the ones holding no job
        self._alive = 0  # children started and not yet gone
        self._started = 0
        self._waiting: deque[HeldJob] = deque()  # jobs in line for a child, first come first
        self._queued: dict[object, HeldJob] = {}  # slot -> its job, not held by a child
        self._running: dict[object, HeldJob] = {}  # slot -> its job, held by a child
        self._closed = False

    def holds(self, slot: object) -> bool:
        return slot in self._running

    def stop_job(self, slot: object, reason: str) -> bool:
        """Kill the child running ``slot``'s job (``"timeout"`` or ``"cancel"``); a job
        that has not started ends at once (:class:`JobCancelledError`)."""
        job = self._queued.pop(slot, None)
        if job is not None:
            job.stopped = True
            with contextlib.suppress(ValueError):
                self._waiting.remove(job)
            if not job.reply.done():
                job.reply.set_result(TURN)  # placed again, it finds itself stopped
            return True
        job = self._running.get(slot)
        if job is None:
            return False
        child = job.child
        if child is None or job.reply.done() or child.stopped_for is not None:
            return True  # it ends at once anyway
        sent = child.sent
        if len(sent) > 1 and sent[-1] is job:  # in the pipe behind the running job
            if child.withdraw():
                sent[-1] = TAKEN_BACK
                if reason == "cancel":
                    job.stopped = True
                self._again(job)
                return True
            # The child has just started it: the job before it has answered.
        elif len(sent) > 1 and sent[-1] is not TAKEN_BACK:
            if not child.withdraw():
                return True  # the next job has started: this one has answered
            self._again(sent.pop())
        child.killed_for = job
        child.kill(reason)
        return True

    async def run(
        self,
        slot: object,
        request: dict[str, Any],
        started: Callable[[bool], None],
        timed_out: Callable[[], Exception],
    ) -> Any:
        """Run one job in a child; ``started(True)`` is called once it starts there."""
        try:
            data = json.dumps(request).encode()
        except (TypeError, ValueError) as exc:
            raise JobSerializationError(
                f"the arguments of task {request['task']!r} cannot travel as JSON: {exc}"
            ) from None
        loop = asyncio.get_running_loop()
        job = HeldJob(slot, data, started, loop)
        self._queued[slot] = job
        try:
            first = False
            while True:
                if not await self._place(job, first):
                    raise JobCancelledError(request["id"])  # cancelled before it started
                # Sent to a child, or in line: the line's callbacks send it on.
                answer = await job.reply
                if answer is not AGAIN and answer is not TURN:
                    break
                # Taken back from its child before it started, or its turn in line to
                # start a child: placed again, first in line.
                job.child = None
                job.reply = loop.create_future()
                first = True
        except BaseException:
            reply = job.reply
            if job.child is not None and (reply.cancelled() or not reply.done()):
                # The slot is cancelled (shutdown past its window): the job goes back
                # to the queue, so its run must not go on.
                self._abandon(job)
            elif job.child is None:
                if not reply.done() or reply.cancelled():
                    with contextlib.suppress(ValueError):
                        self._waiting.remove(job)  # counted by ``waiting`` otherwise
                elif reply.result() is TURN and not job.stopped:
                    self._wake()  # pass the turn on
            raise
        finally:
            self._queued.pop(slot, None)
            self._running.pop(slot, None)
        if answer is not None:
            ok, value = answer
            if ok:
                return value
            raise rebuild(value)
        child = job.child
        assert child is not None
        try:
            if not job.answered:
                await child.reap()
        finally:
            self._gone(child)
            if job.answered:  # it answered as it was being stopped: not reused
                child.retire()
        if child.killed_for is job:
            if child.stopped_for == "cancel":
                raise JobCancelledError(request["id"])
            if child.stopped_for == "timeout":
                raise timed_out()
        raise WorkerProcessCrashed(
            f"the child process running task {request['task']!r} (pid {child.pid}) died "
            f"before answering: {child.how_it_ended()}"
        )

    async def _place(self, job: HeldJob, first: bool) -> bool:
        """Send ``job`` to an idle child, a new one, or one that runs a job and has
        room for the next; else put it in line for the first to free up (which gets
        it in the callback reading its reply). False if the job was stopped first.
        ``first``: at the head of the line."""
        if job.stopped:
            return False
        child = self._idle_child()
        if child is not None:
            self._send(child, job)
            return True
        if self._alive < self.size:
            child = await self._start()
            self._children.append(child)
            if job.stopped:  # cancelled while its child started
                self._fill(child)
                return False
            self._send(child, job)
            return True
        if first or not self._waiting:
            child = self._roomy_child()
            if child is not None:
                self._send(child, job)
                return True
        if first:
            self._waiting.appendleft(job)
        else:
            self._waiting.append(job)
        return True

    async def _start(self) -> Child:
        self._alive += 1
        self._started += 1
        try:
            child = Child(self._context, self._started, self.modules, self.max_memory)
        except BaseException:
            self._alive -= 1
            self._wake()
            raise
        try:
            ready = await child.ready()
        except BaseException:
            self._alive -= 1
            self._wake()
            child.kill("shutdown")
            child.retire()
            raise
        if ready:
            child.receive = self._received
            return child
        self._alive -= 1
        self._wake()
        raise WorkerProcessCrashed(
            f"a child process of the process executor (pid {child.pid}) died while "
            f"starting: {child.how_it_ended()}"
        )

    async def close(self) -> None:
        """Stop every child and wait for them (running jobs were stopped by the pool)."""
        self._closed = True
        for child in list(self._children):
            self._gone(child)
            if any(job is not TAKEN_BACK and not job.reply.done() for job in child.sent):
                child.kill("shutdown")
            child.retire()
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
    if context_to_pass_on():  # else there is nothing to inject (and the child skips it)
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

    def started(now: bool) -> None:
        if not now:  # taken back before it started after all: no clock yet
            slot.deadline = None
            return
        slot.in_thread = False
        slot.timeout = timeout
        slot.deadline = deadline = time.monotonic() + timeout
        if deadline < pool._sweeper.at:
            pool._sweeper.arm(deadline)

    try:
        return await executor.run(slot, request, started, lambda: pool._timed_out(job, timeout))
    finally:
        slot.deadline = None
