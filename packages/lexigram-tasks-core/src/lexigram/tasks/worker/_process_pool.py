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
import signal
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
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
from lexigram.tasks.worker._process_child import READY, STOP, child_main
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

#: Seconds between SIGTERM and SIGKILL when a child's job is stopped.
KILL_GRACE = 1.0

#: Not "fork" (it would copy the worker's threads and connections), nor "forkserver":
#: its children hold the server open, so they would outlive a worker killed by SIGKILL.
_START_METHOD = "spawn"


class _Child:
    """One child process and the parent's end of its pipe.

    The loop watches the pipe and the process sentinel for as long as the child
    lives (not per job: registering and removing readers costs four system calls
    a job). A reply is read as soon as it is readable and handed to the caller
    waiting for it; the child's death ends that wait with None.
    """

    def __init__(
        self, context: BaseContext, number: int, modules: list[str], measure_memory: bool
    ) -> None:
        parent_end, child_end = context.Pipe()
        self.process = context.Process(  # type: ignore[attr-defined]
            target=child_main,
            args=(child_end, modules, measure_memory),
            name=f"lexigram-child-{number}",
            daemon=True,
        )
        self.process.start()
        child_end.close()
        self.conn: Connection = parent_end
        self.pid: int = self.process.pid
        self.jobs = 0
        self.stopped_for: str | None = None  # "timeout" or "cancel" once the pool kills it
        self._loop = asyncio.get_running_loop()
        self._fd = parent_end.fileno()
        self._sentinel: int = self.process.sentinel
        self._reply: asyncio.Future[bytes | None] | None = None
        self._watched = True
        self._loop.add_reader(self._fd, self._readable)
        self._loop.add_reader(self._sentinel, self._exited)

    async def ready(self) -> bool:
        """Wait until the child has imported the tasks' modules; False if it died first."""
        return await self._answer(b"") == READY

    async def call(self, data: bytes) -> bytes | None:
        """Send a job and wait for its reply; None if the child died first (it is reaped)."""
        return await self._answer(data)

    async def _answer(self, data: bytes) -> bytes | None:
        if data:
            try:
                self.conn.send_bytes(data)
            except OSError:  # it died while idle: as a crash
                await self.reap()
                return None
        if not self._watched:  # it died while idle and was not reaped yet
            await self.reap()
            return None
        reply: asyncio.Future[bytes | None] = self._loop.create_future()
        self._reply = reply
        try:
            answer = await reply
        finally:
            self._reply = None
        if answer is None:
            await self.reap()
        return answer

    def _readable(self) -> None:
        """The pipe has a reply (or the end of the child's pipe)."""
        reply = self._reply
        if reply is None or reply.done():
            if reply is None:
                self._unwatch()  # nothing was asked: the child closed its end, or died
            return
        try:
            reply.set_result(self.conn.recv_bytes())
        except (EOFError, OSError):
            self._unwatch()
            reply.set_result(None)

    def _exited(self) -> None:
        """The process is gone: a reply it wrote before exiting still counts."""
        reply = self._reply
        answer = None
        if reply is not None and not reply.done():
            with contextlib.suppress(EOFError, OSError):
                if self.conn.poll():
                    answer = self.conn.recv_bytes()
        self._unwatch()
        if reply is not None and not reply.done():
            reply.set_result(answer)

    def discard(self) -> None:
        """Forget a child that has exited."""
        self._unwatch()
        self.conn.close()

    def _unwatch(self) -> None:
        if self._watched:
            self._watched = False
            self._loop.remove_reader(self._fd)
            self._loop.remove_reader(self._sentinel)

    def kill(self, reason: str) -> None:
        """SIGTERM now, SIGKILL after the grace period if it still runs."""
        self.stopped_for = reason
        if self.process.exitcode is None:
            self.process.terminate()
            self._loop.call_later(KILL_GRACE, self._kill_now)

    def _kill_now(self) -> None:
        with contextlib.suppress(ValueError, OSError):  # already reaped and closed
            if self.process.exitcode is None:
                self.process.kill()

    async def reap(self) -> None:
        """Wait until the process has exited, then free it."""
        self._unwatch()
        loop = self._loop
        while self.process.exitcode is None:
            gone: asyncio.Future[bool] = loop.create_future()
            loop.add_reader(self._sentinel, _settle, gone, True)
            try:
                await asyncio.wait_for(gone, 0.5)
            except TimeoutError:
                pass
            finally:
                loop.remove_reader(self._sentinel)
        self.conn.close()

    def how_it_ended(self) -> str:
        code = self.process.exitcode
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by signal {signal.Signals(-code).name}"
            return f"killed by signal {-code}"
        return f"exit code {code}"

    def retire(self) -> None:
        """Ask an idle child to exit; reaped in the background."""
        with contextlib.suppress(OSError):
            self.conn.send_bytes(STOP)
        task = self._loop.create_task(self.reap())
        _reaping.add(task)
        task.add_done_callback(_reaping.discard)


_reaping: set[asyncio.Task[None]] = set()


def _settle(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


class ProcessExecutor:
    """At most ``size`` child processes running process-executor jobs of one pool."""

    def __init__(
        self, size: int, max_jobs_per_child: int, max_memory_mb: int, modules: list[str]
    ) -> None:
        self.size = size
        self.modules = modules  # imported by each child before its first job
        self.max_jobs = max_jobs_per_child
        self.max_memory = max_memory_mb * 1024 * 1024
        self._context = multiprocessing.get_context(_START_METHOD)
        self._idle: list[_Child] = []
        self._alive = 0  # children started and not yet gone
        self._started = 0
        self._waiting: deque[asyncio.Future[bool]] = deque()  # True: your turn; False: stop
        self._queued: dict[object, asyncio.Future[bool]] = {}  # slot -> its job's waiter
        self._running: dict[object, _Child] = {}  # slot -> the child running its job
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

    async def _acquire(self, slot: object) -> _Child | None:
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
                    child = _Child(self._context, self._started, self.modules, self.max_memory > 0)
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

    def _release(self, child: _Child, rss: int) -> None:
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
        if _reaping:
            await asyncio.wait(list(_reaping), timeout=KILL_GRACE + 5)


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
