"""The supervisor of ``lexigram-tasks worker --processes N``: N worker processes, kept running.

Each worker is an ordinary ``lexigram-tasks worker`` process (its own leases,
heartbeats and live-worker entry). The supervisor restarts one that dies, after
an exponential backoff, and gives up on a crash loop; on SIGTERM or SIGINT it
stops them all gracefully. It runs no job and opens no backend connection.

A worker learns that it is supervised from its environment: ``LINK_VARIABLE``
names its end of a pipe from the supervisor. The supervisor asks it to stop by
closing the other end, which also happens when the supervisor dies, so a worker
never outlives its supervisor. Asking through the pipe rather than with a signal
means a worker that also gets the signal itself (Ctrl-C in a terminal reaches
the whole process group; systemd signals every process of the unit) sees one
request, not the second signal that would make it exit at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

logger = logging.getLogger("lexigram.tasks.supervisor")

#: Environment of a supervised worker: the descriptor of its end of the supervisor's pipe.
LINK_VARIABLE = "LEXIGRAM_TASKS_SUPERVISOR_FD"
#: Environment of a supervised worker: its number, 1 to N.
NUMBER_VARIABLE = "LEXIGRAM_TASKS_WORKER_NUMBER"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a dead worker is started again, and when the supervisor gives up."""

    #: Delay before the first restart; doubled for each further death in a row.
    backoff: float = 0.5
    backoff_max: float = 30.0
    #: Give up when a worker dies this many times in a row within ``window`` of its start.
    deaths: int = 5
    window: float = 60.0


@dataclass(slots=True)
class _Child:
    number: int
    process: asyncio.subprocess.Process | None = None
    link: int | None = None  # the supervisor's (write) end of the pipe
    started: float = 0.0
    #: Exit codes of its deaths in a row, each within the policy's window of its start.
    early_deaths: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def close_link(self) -> None:
        if self.link is not None:
            os.close(self.link)
            self.link = None


class Supervisor:
    """Runs ``command`` as ``processes`` worker processes until SIGTERM/SIGINT.

    :meth:`run` returns the exit status: 0 when every worker stopped cleanly,
    1 when one had to be killed or exited with an error while stopping, or
    when the supervisor gave up on a crash loop (``failures`` says why), and
    128 + N after a second signal N, on which the workers are killed (the
    "exit at once" of a single worker's second signal).
    """

    def __init__(
        self,
        command: Sequence[str],
        processes: int,
        *,
        shutdown_timeout: float,
        kill_margin: float = 10.0,
        policy: RestartPolicy | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.command = list(command)
        self.processes = processes
        self.shutdown_timeout = shutdown_timeout
        self.kill_margin = kill_margin
        self.policy = policy or RestartPolicy()
        self.env = dict(os.environ if env is None else env)
        #: One line per reason for a non-zero exit status.
        self.failures: list[str] = []
        self._children = [_Child(number) for number in range(1, processes + 1)]
        self._stop = asyncio.Event()
        self._second_signal: int | None = None

    def run(self) -> int:
        """Blocking: supervise until a signal (or a crash loop); the exit status."""
        return asyncio.run(self.serve())

    async def serve(self) -> int:
        """:meth:`run` as a coroutine; signal handlers are installed for its duration."""
        loop = asyncio.get_running_loop()
        handled = (signal.SIGTERM, signal.SIGINT)
        for signum in handled:
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            keepers = [asyncio.create_task(self._keep(child)) for child in self._children]
            try:
                await asyncio.gather(*keepers)
            finally:
                for keeper in keepers:
                    keeper.cancel()
            await self._stop_all()
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)
            for child in self._children:
                child.close_link()
        if self._second_signal is not None:
            return 128 + self._second_signal
        return 1 if self.failures else 0

    def request_stop(self) -> None:
        """Stop every worker gracefully (what the first SIGTERM/SIGINT does)."""
        self._stop.set()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self._stop.is_set():
            logger.info(
                "%s received: stopping %d worker process(es) gracefully (shutdown_timeout %gs)",
                name,
                self.processes,
                self.shutdown_timeout,
            )
            self._stop.set()
            return
        # The workers were asked through the pipe, so a signal would be their first:
        # SIGKILL is the "at once" of a second signal (unfinished jobs come back
        # when their leases lapse, as after a single worker's second signal).
        logger.warning("second %s: killing the worker processes", name)
        self._second_signal = signum
        for child in self._children:
            if child.running and child.process is not None:
                child.process.kill()

    async def _keep(self, child: _Child) -> None:
        """Start ``child``, and again each time it dies, until the stop or a crash loop."""
        while not self._stop.is_set():
            code = await self._start(child)
            if code is None:
                code = await self._exit_or_stop(child)
            if code is None:
                return  # stopping: _stop_all takes it from here
            delay = self._death(child, code)
            if delay is None:
                return
            if await self._stopped_within(delay):
                return

    async def _start(self, child: _Child) -> int | None:
        """Start the worker process; an exit status if it could not be started."""
        child.close_link()
        theirs, ours = os.pipe()
        env = {**self.env, LINK_VARIABLE: str(theirs), NUMBER_VARIABLE: str(child.number)}
        try:
            child.started = time.monotonic()
            child.process = await asyncio.create_subprocess_exec(
                *self.command, env=env, pass_fds=(theirs,)
            )
        except OSError as exc:
            os.close(ours)
            logger.error("worker %d could not be started: %s", child.number, exc)
            return 127
        finally:
            os.close(theirs)
        child.link = ours
        logger.info(
            "worker %d of %d started (pid %d)", child.number, self.processes, child.process.pid
        )
        return None

    async def _exit_or_stop(self, child: _Child) -> int | None:
        """The child's exit status, or ``None`` once the supervisor is stopping."""
        assert child.process is not None
        exited = asyncio.ensure_future(child.process.wait())
        stopping = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait((exited, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if self._stop.is_set():
            exited.cancel()
            return None
        return exited.result()

    def _death(self, child: _Child, code: int) -> float | None:
        """Record a death: the delay before the restart, or ``None`` after giving up."""
        child.close_link()
        lived = time.monotonic() - child.started
        policy = self.policy
        if lived < policy.window:
            child.early_deaths.append(code)
        else:
            child.early_deaths = []
        deaths = len(child.early_deaths)
        if deaths >= policy.deaths:
            codes = ", ".join(describe_exit(c) for c in child.early_deaths)
            message = (
                f"worker {child.number} (last pid {child.pid}) died {deaths} times in a row, "
                f"each within {policy.window:g}s of its start ({codes}): giving up, "
                "stopping the other workers"
            )
            logger.error("%s", message)
            self.failures.append(message)
            self._stop.set()
            return None
        delay = min(policy.backoff * 2.0 ** max(deaths - 1, 0), policy.backoff_max)
        logger.log(
            logging.WARNING if code == 0 else logging.ERROR,
            "worker %d (pid %d) %s after %.1fs; starting it again in %gs",
            child.number,
            child.pid,
            describe_exit(code),
            lived,
            delay,
        )
        return delay

    async def _stopped_within(self, delay: float) -> bool:
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
        except TimeoutError:
            return False
        return True

    async def _stop_all(self) -> None:
        """Ask every running worker to stop; kill those still running after the window."""
        running = [child for child in self._children if child.running]
        for child in self._children:
            child.close_link()  # the worker sees end-of-file: it stops gracefully
        window = self.shutdown_timeout + self.kill_margin
        waits = {
            asyncio.ensure_future(child.process.wait()): child
            for child in running
            if child.process is not None
        }
        if not waits:
            return
        done, late = await asyncio.wait(list(waits), timeout=window)
        for waited in done:
            child, code = waits[waited], waited.result()
            if code != 0 and self._second_signal is None:
                self._fail(
                    f"worker {child.number} (pid {child.pid}) {describe_exit(code)} after the "
                    "stop request"
                )
        for waited in late:
            child = waits[waited]
            assert child.process is not None
            child.process.kill()
            await waited
            self._fail(
                f"worker {child.number} (pid {child.pid}) was still running {window:g}s after "
                f"the stop request (shutdown_timeout {self.shutdown_timeout:g}s + "
                f"{self.kill_margin:g}s): killed"
            )

    def _fail(self, message: str) -> None:
        logger.error("%s", message)
        self.failures.append(message)


def describe_exit(code: int) -> str:
    """``exited with code 3``, ``killed by SIGKILL``, for an exit status as Popen gives it."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class _Stoppable(Protocol):
    def request_stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Supervised:
    """What a worker process knows of its supervisor, from its environment."""

    fd: int
    number: int


class SupervisorLink:
    """A provider service of a supervised worker: stops it gracefully when the
    supervisor closes its end of their pipe (asked to stop, or gone).

    It also takes over the worker's SIGTERM/SIGINT handling (``serve`` removes
    it on the way out) so that the pipe's request does not count as a first
    signal: a worker that gets both the signal and the request (the signal was
    sent to the whole process group) stops gracefully, and only a second
    *signal* makes it exit at once.
    """

    def __init__(self, provider: _Stoppable, supervised: Supervised) -> None:
        self.provider = provider
        self.supervised = supervised
        self.fd = supervised.fd
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signalled = False

    async def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        loop.add_reader(self.fd, self._readable)
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._signalled:
            logger.warning("second %s: exiting now", name)
            os._exit(128 + signum)
        self._signalled = True
        logger.info("%s received: shutting down gracefully", name)
        self.provider.request_stop()

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 512)
        except OSError:
            data = b""
        if data:
            return  # the supervisor writes nothing today; only end-of-file means stop
        self._forget()
        logger.info(
            "worker %d (pid %d): the supervisor asks it to stop (or is gone): shutting down",
            self.supervised.number,
            os.getpid(),
        )
        self.provider.request_stop()

    async def stop(self) -> None:
        self._forget()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _forget(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
            self._loop = None


def supervised_from_environment() -> Supervised | None:
    """The link to the supervisor, if this process is a supervised worker.

    The variables are removed, so that processes this one starts do not
    take themselves for supervised workers.
    """
    fd, number = os.environ.pop(LINK_VARIABLE, None), os.environ.pop(NUMBER_VARIABLE, None)
    if fd is None:
        return None
    return Supervised(int(fd), int(number or 0))
