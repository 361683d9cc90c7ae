"""Plain functions that the Redis process-executor tests register as tasks: a child
process imports them by module name."""

from __future__ import annotations

import time
from pathlib import Path


def add(a: int, b: int) -> int:
    return a + b


def busy(seconds: float) -> float:
    """Keep the child busy for ``seconds`` (a CPU-bound job's stand-in)."""
    time.sleep(seconds)
    return seconds


def total(values: list[float]) -> float:
    return round(sum(values), 6)


def hold(started: str, release: str) -> str:
    """Mark ``started``, then wait (at most a minute) until ``release`` exists."""
    Path(started).touch()
    deadline = time.monotonic() + 60
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "released"
