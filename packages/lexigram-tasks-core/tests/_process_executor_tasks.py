"""Module-level functions for the process-executor tests: a child imports them by name."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import time
from pathlib import Path
from typing import Any

from opentelemetry import baggage, trace

from lexigram.tasks.current import current_job

_leak: list[bytes] = []


def add(a: int, b: int) -> dict[str, Any]:
    return {"sum": a + b, "pid": os.getpid()}


async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


def whoami() -> dict[str, Any]:
    job = current_job()
    return {"id": job.id, "task": job.task, "attempt": job.attempt, "pid": os.getpid()}


async def async_whoami() -> dict[str, Any]:
    await asyncio.sleep(0)
    job = current_job()
    return {"id": job.id, "task": job.task, "attempt": job.attempt}


def echo(value: Any) -> Any:
    return value


def report_progress() -> None:
    current_job().progress_sync(0.5)


def span_parent() -> str:
    return format(trace.get_current_span().get_span_context().span_id, "016x")


def tenant() -> str | None:
    """The ``tenant`` baggage entry the job's context carries in the child."""
    value = baggage.get_baggage("tenant")
    return None if value is None else str(value)


def pid() -> int:
    return os.getpid()


def fail(message: str) -> None:
    raise LookupError(message)


def exit_now(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV
    os.kill(os.getpid(), signal.SIGSEGV)


def hang(pid_file: str) -> None:
    """Write this child's pid, then run far past any test's timeout."""
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(3600)


def hang_once(pid_file: str) -> dict[str, Any]:
    """Attempt 1 hangs; a later attempt reports whether attempt 1's child still exists."""
    path = Path(pid_file)
    if current_job().attempt == 1:
        hang(pid_file)
    first = int(path.read_text())
    try:
        os.kill(first, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    return {"first_alive": alive, "attempt": current_job().attempt}


def leak(megabytes: int) -> dict[str, int]:
    """Keep ``megabytes`` more of memory for the child's life; return the RSS after."""
    _leak.append(os.urandom(megabytes * 2**20))
    with open("/proc/self/statm", "rb") as statm:
        rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {"pid": os.getpid(), "rss": rss}


def burn(ms: float) -> int:
    """Pure-Python CPU work for about ``ms`` milliseconds."""
    end = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def hold(pid_file: str, release_file: str) -> int:
    """Write this child's pid, then keep the child busy until ``release_file`` exists."""
    Path(pid_file).write_text(str(os.getpid()))
    while not Path(release_file).exists():
        time.sleep(0.01)
    return os.getpid()


def log_run(log_file: str, name: str, seconds: float) -> int:
    """Append ``name`` and this child's pid to ``log_file`` as it starts, then take
    ``seconds``."""
    with open(log_file, "a") as log:
        log.write(f"{name} {os.getpid()}\n")
    time.sleep(seconds)
    return os.getpid()


def reverse(text: str) -> str:
    return text[::-1]


def hold_then_exit(pid_file: str, release_file: str) -> None:
    """Write this child's pid, wait for ``release_file``, then end the child at once."""
    hold(pid_file, release_file)
    os._exit(7)
