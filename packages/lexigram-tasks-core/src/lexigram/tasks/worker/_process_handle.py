"""The worker's handle on one child process of the process executor: starting it,
sending it jobs and hearing its replies or its death, stopping and reaping it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any

from lexigram.tasks.worker._process_child import READY, STOP, Messages, child_main, write_message

#: Seconds between SIGTERM and SIGKILL when a child's job is stopped.
KILL_GRACE = 1.0

#: Not "fork" (it would copy the worker's threads and connections), nor "forkserver":
#: its children hold the server open, so they would outlive a worker killed by SIGKILL.
START_METHOD = "spawn"

#: Called with the child and each message it sends, in order, then once with None
#: when it has gone (its pipe closed, or the process exited).
OnMessage = Callable[["Child", bytes | None], None]


class Child:
    """One child process and the parent's end of its pipe.

    The loop watches the pipe and the process sentinel for as long as the child
    lives (not per job: registering and removing readers costs four system calls
    a job). Each message is read as soon as it is readable and passed, in that
    same callback, to ``receive``, so the executor can send the child more work
    before anything else runs; the child's end passes None, once.

    Each job sent comes with a token, released on a semaphore shared with the
    child: the child takes it before starting the job, and a job whose token
    the parent took back first (:meth:`withdraw`) is skipped. Exactly one of the
    two gets it, so a job sent ahead while the child still runs another one can
    be taken back with the certainty that it never started.
    """

    def __init__(
        self, context: BaseContext, number: int, modules: list[str], max_memory: int
    ) -> None:
        parent_end, child_end = context.Pipe()
        self.tokens = context.Semaphore(0)
        self.process = context.Process(  # type: ignore[attr-defined]
            target=child_main,
            args=(child_end, modules, self.tokens, max_memory),
            name=f"lexigram-child-{number}",
            daemon=True,
        )
        self.process.start()
        child_end.close()
        self.conn: Connection = parent_end
        self.pid: int = self.process.pid
        self.jobs = 0  # jobs answered
        # Jobs sent, in order: the first runs (or is about to), the others wait in the
        # pipe. The executor's entries; it may put a marker in place of one taken back.
        self.sent: deque[Any] = deque()
        self.stopped_for: str | None = None  # "timeout", "cancel", "shutdown" once killed
        self.killed_for: object = None  # the job it was killed for
        self.retiring = False  # takes no more jobs: replaced once the ones it has are done
        self.gone = False  # no longer counted by the executor
        self.closing = False  # its end was seen: nothing more can be sent
        self.receive: OnMessage | None = None
        self._loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[None] = self._loop.create_future()
        self._fd = parent_end.fileno()
        self._messages = Messages(self._fd)
        self._sentinel: int = self.process.sentinel
        self._reading = True  # the pipe is watched
        self._ended = False  # None was passed on
        self._loop.add_reader(self._fd, self._readable)
        self._loop.add_reader(self._sentinel, self._exited)

    @property
    def usable(self) -> bool:
        return not (self.closing or self.retiring or self.gone) and self.stopped_for is None

    async def ready(self) -> bool:
        """Wait until the child has imported the tasks' modules; False if it died first."""
        ready: asyncio.Future[bytes | None] = self._loop.create_future()
        self.receive = lambda _, message: _settle(ready, message)
        if self._ended:
            ready.set_result(None)
        try:
            answer = await ready
        finally:
            self.receive = None
        if answer is None:
            await self.reap()
        return answer == READY

    def send(self, data: bytes) -> None:
        """Send a job with its token. If the child has died, its end (seen by the
        loop) finds the token still there: the job never started."""
        self.tokens.release()
        self._write(data)

    def _write(self, data: bytes) -> None:
        if not self.conn.closed:  # once closed, its descriptor may be another file's
            with contextlib.suppress(OSError):
                write_message(self._fd, data)

    def withdraw(self) -> bool:
        """Take back the token of the last job sent: True if the child had not taken
        it (it will skip that job, or has died without starting it)."""
        return self.tokens.acquire(False)

    def _readable(self) -> None:
        """The pipe has data (or its end): each whole message is passed on."""
        try:
            more = self._messages.read()
        except OSError:
            more = False
        self._pass_on()
        if not more:
            self._stop_reading()
            self._end()

    def _pass_on(self) -> None:
        messages = self._messages
        while (message := messages.next()) is not None:
            receive = self.receive
            if receive is not None:
                receive(self, message)

    def _exited(self) -> None:
        """The process is gone: messages it wrote before exiting still count."""
        self._loop.remove_reader(self._sentinel)
        self.closing = True
        if self._reading:
            self._stop_reading()
            with contextlib.suppress(OSError):
                while self.conn.poll() and self._messages.read():
                    pass
            self._pass_on()
        self._end()
        _settle(self._exit, None)

    def _end(self) -> None:
        self.closing = True
        if not self._ended:
            self._ended = True
            receive = self.receive
            if receive is not None:
                receive(self, None)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def discard(self) -> None:
        """Forget a child that has exited."""
        self._stop_reading()
        if not self._exit.done():
            self._loop.remove_reader(self._sentinel)
            _settle(self._exit, None)
        self.conn.close()

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
        while self.process.exitcode is None:
            if self._exit.done():  # its end was seen (or it was discarded): it exits soon
                await asyncio.sleep(0.05)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exit), 0.5)
        self.discard()

    def how_it_ended(self) -> str:
        code = self.process.exitcode
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by signal {signal.Signals(-code).name}"
            return f"killed by signal {-code}"
        return f"exit code {code}"

    def retire(self) -> None:
        """Ask the child to exit once it has read what was sent before; reaped in the
        background."""
        self.retiring = True
        self._write(STOP)
        task = self._loop.create_task(self.reap())
        reaping.add(task)
        task.add_done_callback(reaping.discard)


reaping: set[asyncio.Task[None]] = set()


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
