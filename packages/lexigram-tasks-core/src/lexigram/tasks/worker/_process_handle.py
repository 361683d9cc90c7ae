"""The worker's handle on one child process of the process executor: starting it,
sending it a job and hearing its reply or its death, stopping and reaping it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext

from lexigram.tasks.worker._process_child import READY, STOP, child_main

#: Seconds between SIGTERM and SIGKILL when a child's job is stopped.
KILL_GRACE = 1.0

#: Not "fork" (it would copy the worker's threads and connections), nor "forkserver":
#: its children hold the server open, so they would outlive a worker killed by SIGKILL.
START_METHOD = "spawn"

#: Called with a child's reply, or None if it died first.
OnReply = Callable[[bytes | None], None]


class Child:
    """One child process and the parent's end of its pipe.

    The loop watches the pipe and the process sentinel for as long as the child
    lives (not per job: registering and removing readers costs four system calls
    a job). A reply is read as soon as it is readable and passed, in that same
    callback, to the ``on_reply`` given with the job, so the executor can send
    the child its next job before anything else runs; the child's death passes
    None.
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
        self._on_reply: OnReply | None = None
        self._watched = True
        self._loop.add_reader(self._fd, self._readable)
        self._loop.add_reader(self._sentinel, self._exited)

    async def ready(self) -> bool:
        """Wait until the child has imported the tasks' modules; False if it died first."""
        ready: asyncio.Future[bytes | None] = self._loop.create_future()
        if self._watched:
            self._on_reply = lambda answer: _settle(ready, answer)
        else:
            ready.set_result(None)
        try:
            answer = await ready
        finally:
            self._on_reply = None
        if answer is None:
            await self.reap()
        return answer == READY

    def send(self, data: bytes, on_reply: OnReply) -> None:
        """Send a job; ``on_reply`` gets its reply, or None if the child dies first
        (then :meth:`reap` it)."""
        if self._watched:  # else it died while idle and was not reaped yet
            self._on_reply = on_reply
            try:
                self.conn.send_bytes(data)
                return
            except OSError:  # it died while idle: as a crash
                self._on_reply = None
        self._loop.call_soon(on_reply, None)

    def _readable(self) -> None:
        """The pipe has a reply (or the end of the child's pipe)."""
        on_reply = self._on_reply
        if on_reply is None:
            self._unwatch()  # nothing was asked: the child closed its end, or died
            return
        self._on_reply = None
        try:
            answer: bytes | None = self.conn.recv_bytes()
        except (EOFError, OSError):
            self._unwatch()
            answer = None
        on_reply(answer)

    def _exited(self) -> None:
        """The process is gone: a reply it wrote before exiting still counts."""
        on_reply, self._on_reply = self._on_reply, None
        answer = None
        if on_reply is not None:
            with contextlib.suppress(EOFError, OSError):
                if self.conn.poll():
                    answer = self.conn.recv_bytes()
        self._unwatch()
        if on_reply is not None:
            on_reply(answer)

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
        self._on_reply = None
        loop = self._loop
        while self.process.exitcode is None:
            gone: asyncio.Future[bytes | None] = loop.create_future()
            loop.add_reader(self._sentinel, _settle, gone, None)
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
        self._on_reply = None
        with contextlib.suppress(OSError):
            self.conn.send_bytes(STOP)
        task = self._loop.create_task(self.reap())
        reaping.add(task)
        task.add_done_callback(reaping.discard)


reaping: set[asyncio.Task[None]] = set()


def _settle(future: asyncio.Future[bytes | None], value: bytes | None) -> None:
    if not future.done():
        future.set_result(value)
