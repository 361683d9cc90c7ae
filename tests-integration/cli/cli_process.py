"""A ``lexigram-tasks worker`` process (alone or supervising others) for the CLI tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from lexigram.tasks.testing import eventually

COMMAND = [sys.executable, "-m", "lexigram.tasks.cli", "worker"]


class Running:
    """A worker command's process, its output collected line by line."""

    def __init__(
        self, args: list[str], cwd: Path, env: dict[str, str], *, group: bool = False
    ) -> None:
        self.process = subprocess.Popen(
            [*COMMAND, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=group,  # its own process group, for signals to the group
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def started(self) -> dict[int, int]:
        """Worker number -> pid of its latest start."""
        found: dict[int, int] = {}
        for number, pid in re.findall(r"worker (\d+) of \d+ started \(pid (\d+)\)", self.output):
            found[int(number)] = int(pid)
        return found

    async def workers_ready(self, count: int, timeout: float = 60) -> None:
        """Wait until ``count`` worker start-up lines (all pools running) were printed."""
        await eventually(
            lambda: len(re.findall(r"worker \d+ started: app", self.output)) >= count,
            timeout,
            message=f"{count} workers did not start:\n{self.output}",
        )

    async def ready(self, workers: int) -> None:
        """Wait until ``workers`` start-up lines, numbered (supervised) or not, were printed."""
        await eventually(
            lambda: len(re.findall(r"worker( \d+)? started: app", self.output)) >= workers,
            60,
            message=f"{workers} worker(s) did not start:\n{self.output}",
        )

    async def exit_code(self, timeout: float) -> int:
        try:
            code = await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s:\n{self.output}") from None
        await asyncio.to_thread(self._reader.join, 10)
        return code

    def close(self) -> None:
        """Kill what is left (a failed test): the supervisor, then its workers."""
        pids = list(self.started().values())
        if self.process.poll() is None:
            self.process.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)
        self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    async def stop(self) -> int:
        """SIGTERM, then its exit code (a test failure when it outlives 30 s)."""
        self.process.send_signal(signal.SIGTERM)
        return await self.exit_code(30)
