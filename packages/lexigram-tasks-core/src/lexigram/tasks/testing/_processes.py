"""Worker and consumer processes for tests: how they are described, started and read."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BackendSpec:
    """How another process builds a component: ``factory(**options)``.

    ``factory`` is ``"module:attribute"``, e.g. ``"lexigram.tasks.redis:RedisTaskQueue"``;
    ``options`` must be JSON-able. The process sees the test process's
    ``sys.path``, so a module the tests import (an example backend beside them) works.
    """

    factory: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        """Import the factory and call it with the options."""
        module_name, _, attribute = self.factory.partition(":")
        if not attribute:
            raise ValueError(f"factory must be 'module:attribute', got {self.factory!r}")
        factory = getattr(importlib.import_module(module_name), attribute)
        return factory(**self.options)


@dataclass(frozen=True)
class WorkerAppConfig:
    """What ``python -m lexigram.tasks.testing.worker_app CONFIG_JSON`` runs.

    ``mode="worker"`` runs a :class:`~lexigram.tasks.TaskProvider` with the
    app's tasks until SIGTERM; ``mode="consumer"`` drains the queue with the
    bare protocol (dequeue, ack), logging each delivery, until told to stop.
    """

    queue: BackendSpec
    log: str
    mode: str = "worker"
    worker_count: int = 10
    lease_seconds: float = 30.0
    shutdown_timeout: float = 30.0
    poll_interval: float = 0.2
    rate_limit: str = "20/s"
    result_store: BackendSpec | None = None
    rate_limiter: BackendSpec | None = None
    #: How often the worker refreshes its live-worker entry (it expires after 3x).
    registry_interval: float = 5.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerAppConfig:
        doc = json.loads(text)
        for key in ("queue", "result_store", "rate_limiter"):
            if doc.get(key) is not None:
                doc[key] = BackendSpec(**doc[key])
        return cls(**doc)


@dataclass(frozen=True)
class LogLine:
    """One line of an :class:`EventLog`."""

    event: str
    key: str
    pid: int
    #: When it was written (Unix time).
    at: float


class EventLog:
    """A file of ``event key pid time`` lines that several processes append to.

    Each line is one ``write`` on a file opened with ``O_APPEND``, so lines
    from different processes never interleave.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def write(self, event: str, key: str) -> None:
        with self.path.open("a") as log:
            log.write(f"{event} {key} {os.getpid()} {time.time()!r}\n")

    def lines(self) -> list[LogLine]:
        if not self.path.exists():
            return []
        found = []
        # A line another process is writing right now may be read half-written:
        # only the lines that end in a newline are complete.
        complete, _, _ = self.path.read_text().rpartition("\n")
        for text in complete.splitlines():
            event, key, pid, at = text.split(" ")
            found.append(LogLine(event, key, int(pid), float(at)))
        return found

    def count(self, event: str) -> Counter[str]:
        """How many times each key was logged with ``event``."""
        return Counter(line.key for line in self.lines() if line.event == event)

    def pids(self, event: str) -> set[int]:
        """The processes that logged ``event``."""
        return {line.pid for line in self.lines() if line.event == event}


class WorkerProcesses:
    """Starts ``worker_app`` processes on one queue; :meth:`close` kills what still runs.

    All of them append to one :class:`EventLog`, ``log``, in ``directory``.
    """

    def __init__(self, queue: BackendSpec, directory: Path, **defaults: Any) -> None:
        self.queue = queue
        self.directory = directory
        self.log = EventLog(directory / "events.log")
        self.defaults = defaults
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *, stderr: Path | None = None, **settings: Any) -> subprocess.Popen[bytes]:
        """Start one process; ``settings`` are :class:`WorkerAppConfig` fields."""
        config = WorkerAppConfig(
            queue=self.queue, log=str(self.log.path), **{**self.defaults, **settings}
        )
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        command = [sys.executable, "-m", "lexigram.tasks.testing.worker_app", config.to_json()]
        out = stderr.open("wb") if stderr is not None else None
        try:
            process = subprocess.Popen(command, env=env, stderr=out)
        finally:
            if out is not None:
                out.close()  # the child keeps its own descriptor
        self.started.append(process)
        return process

    async def ready(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` processes have started their workers (or consumers)."""
        from lexigram.tasks.testing._helpers import eventually

        await eventually(
            lambda: len(self.log.pids("ready")) >= count,
            timeout,
            message=f"{count} worker process(es) did not start",
        )

    async def stop(self, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        """SIGTERM ``process`` and check that it shut down cleanly (exit code 0)."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        code = await exited(process, timeout)
        assert code == 0, f"the worker did not shut down cleanly on SIGTERM (exit code {code})"

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


async def exited(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The exit code of ``process``, or ``None`` if it still runs after ``timeout`` seconds."""
    try:
        return await asyncio.to_thread(process.wait, timeout)
    except subprocess.TimeoutExpired:
        return None
