"""What each child of the process executor holds: the job it runs and the next one,
already in its pipe, sent and taken back; a child's messages and its end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from lexigram.tasks.worker._process_child import read_reply
from lexigram.tasks.worker._process_handle import Child

logger = logging.getLogger("lexigram.tasks.worker")

#: Jobs a child holds at most: the one it runs and the next, already in its pipe, so
#: it goes on without waiting for the worker to read its reply and send another.
DEPTH = 2

#: A job's reply when it was taken back from a child before it started: placed again.
AGAIN: Any = object()
#: The reply of a job in line that may start a child (one has gone) or was stopped
#: there: it is placed again, first in line. A job sent to a child from the line is
#: not woken: it waits on for its reply.
TURN: Any = object()
#: In a child's ``sent`` line, a job taken back whose ``SKIPPED`` answer is still due.
TAKEN_BACK: Any = object()


class HeldJob:
    """One job of the executor, from its arrival to its child's reply."""

    __slots__ = ("answered", "child", "data", "reply", "slot", "started", "stopped")

    def __init__(
        self,
        slot: object,
        data: bytes,
        started: Callable[[bool], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.slot = slot
        self.data = data
        self.started = started  # True: its child starts it now; False: taken back after all
        self.child: Child | None = None  # once sent to one
        self.reply: asyncio.Future[Any] = loop.create_future()
        self.answered = False  # its child replied, though it was being stopped
        self.stopped = False  # cancelled before it started


class Holding:
    """The children of a :class:`ProcessExecutor` and the jobs each one holds (a base
    of it): sending a job, reading a child's reply and sending it the next, taking
    back a job that has not started, and a child's end."""

    _children: list[Child]  # started and counted
    _idle: list[Child]  # of those, the ones holding no job
    _alive: int  # children started and not yet gone
    _waiting: deque[HeldJob]  # jobs in line for a child, first come first
    _queued: dict[object, HeldJob]  # slot -> its job, not held by a child
    _running: dict[object, HeldJob]  # slot -> its job, held by a child
    max_jobs: int
    max_memory: int

    @property
    def waiting(self) -> int:
        """Jobs waiting for a child: in line, or in a child's pipe behind its running job."""
        ahead = 0
        for child in self._children:
            sent = child.sent
            if len(sent) > 1 and sent[-1] is not TAKEN_BACK:
                ahead += 1
        return len(self._waiting) + ahead

    def _idle_child(self) -> Child | None:
        while self._idle:
            child = self._idle.pop()
            if child.usable:
                return child
        return None

    def _roomy_child(self) -> Child | None:
        for child in self._children:
            if len(child.sent) == 1 and self._takes(child):
                return child
        return None

    def _takes(self, child: Child) -> bool:
        """Whether ``child`` can be sent another job now."""
        sent = child.sent
        return (
            len(sent) < DEPTH
            and child.usable
            and (not sent or sent[-1] is not TAKEN_BACK)  # its token must be the child's next
            and (not self.max_jobs or child.jobs + len(sent) < self.max_jobs)
        )

    def _send(self, child: Child, job: HeldJob) -> None:
        self._queued.pop(job.slot, None)
        self._running[job.slot] = job
        job.child = child
        starts = not child.sent
        child.sent.append(job)
        child.send(job.data)
        if starts:
            job.started(True)

    def _again(self, job: HeldJob) -> None:
        """``job`` was taken back from its child before it started: placed again
        (unless its task is being cancelled too, at shutdown)."""
        self._running.pop(job.slot, None)
        job.child = None
        job.started(False)
        if job.reply.done():
            return
        if not job.stopped:
            self._queued[job.slot] = job
        job.reply.set_result(AGAIN)

    def _received(self, child: Child, message: bytes | None) -> None:
        """A child's message (None: it has gone), read from its pipe: the child's next
        job is started, and another sent behind it, before the reply is handed to
        this job's task."""
        if message is None:
            self._ended(child)
            return
        if not child.sent:
            return
        job: HeldJob = child.sent.popleft()
        if job is TAKEN_BACK:  # SKIPPED: the job taken back
            self._carry_on(child)
            return
        if job.reply.done():  # its task was cancelled, and has stopped the child
            return
        if child.killed_for is job:
            job.answered = True
            job.reply.set_result(None)
            return
        ok, value, rss = read_reply(message)
        child.jobs += 1
        if child.stopped_for is None:
            if self.max_memory and rss > self.max_memory:
                # The child starts nothing more, nor answers a job taken back: what it
                # holds is placed again.
                self._retire(child, f"uses {rss / 2**20:.0f} MB (max_memory_per_child)")
                sent = child.sent
                while sent and (sent[-1] is TAKEN_BACK or child.withdraw()):
                    held = sent.pop()
                    if held is not TAKEN_BACK:
                        self._again(held)
            elif self.max_jobs and child.jobs >= self.max_jobs:
                self._retire(child, f"ran {child.jobs} jobs (max_jobs_per_child)")
            self._carry_on(child)
        job.reply.set_result((ok, value))

    def _carry_on(self, child: Child) -> None:
        """``child`` has finished a job: the next it holds starts, and it is sent more."""
        sent = child.sent
        if sent:
            head = sent[0]
            if head is not TAKEN_BACK:
                head.started(True)
        if child.retiring:
            if not sent and not child.gone:
                self._gone(child)
                child.retire()
            return
        self._fill(child)

    def _fill(self, child: Child) -> None:
        """Send ``child`` jobs in line while it has room; idle if none."""
        waiting = self._waiting
        while waiting and self._takes(child):
            job = waiting.popleft()
            if not job.reply.done():  # else its task was cancelled while in line
                self._send(child, job)
        if not child.sent and child.usable:
            self._idle.append(child)

    def _retire(self, child: Child, why: str) -> None:
        logger.info("replacing child process %d: it %s", child.pid, why)
        child.retiring = True

    def _ended(self, child: Child) -> None:
        """``child`` has gone. The last job it started (if unanswered) failed with it;
        the ones it had not started are placed again."""
        jobs = [job for job in child.sent if job is not TAKEN_BACK]
        child.sent.clear()
        owner = None
        for job in reversed(jobs):
            if job.reply.done():
                continue
            if owner is None and child.withdraw():
                self._again(job)  # never started
            else:
                owner = job
                job.reply.set_result(None)  # its task reaps the child
        if owner is None:
            self._gone(child)
            child.retire()

    def _abandon(self, job: HeldJob) -> None:
        """``job``'s task is cancelled while its child holds it."""
        child = job.child
        assert child is not None
        sent = child.sent
        if len(sent) > 1 and sent[-1] is job and child.withdraw():
            sent[-1] = TAKEN_BACK  # never started: the child goes on with the job before it
            return
        if (
            len(sent) > 1
            and sent[-1] is not job
            and sent[-1] is not TAKEN_BACK
            and child.withdraw()
        ):
            self._again(sent.pop())
        child.killed_for = job
        self._gone(child)
        child.kill("shutdown")
        child.retire()

    def _gone(self, child: Child) -> None:
        """``child`` no longer counts: the first job in line may start another."""
        if child.gone:
            return
        child.gone = True
        self._children.remove(child)
        with contextlib.suppress(ValueError):
            self._idle.remove(child)
        self._alive -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            reply = self._waiting.popleft().reply
            if not reply.done():
                reply.set_result(TURN)
                return
