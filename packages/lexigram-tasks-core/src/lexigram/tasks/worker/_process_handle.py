"""The worker's handle on one child process of the process executor: starting it,
sending it a job and waiting for its reply or its death, stopping and reaping it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext

from lexigram.tasks.worker._process_child import READY, STOP, child_main

#: Seconds between SIGTERM and SIGKILL when a child's job is stopped.
KILL_GRACE = 1.0

#: Not "fork" (it would copy the worker's threads and connections), nor "forkserver":
#: its children hold the server open, so they would outlive a worker killed by SIGKILL.
START_METHOD = "spawn"


class Child:
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
        reaping.add(task)
        task.add_done_callback(reaping.discard)


reaping: set[asyncio.Task[None]] = set()


def _settle(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)
