"""Rate limits: ``"100/s"`` strings, the ``RateLimiter`` protocol and an in-process limiter.

The worker asks the limiter before running a rate-limited task. The limiter
in this module counts within one process; ``lexigram-tasks-redis`` provides
one that every worker process of a deployment shares.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

_PERIODS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*\.?\d*)\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` executions per ``period`` seconds."""

    count: float
    period: float

    @property
    def interval(self) -> float:
        """Seconds between two executions at a steady pace."""
        return self.period / self.count

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse ``"100/s"``, ``"10/m"``, ``"500/h"`` or ``"5/10s"``."""
        match = _RATE.match(text.lower())
        if match is None or match.group(3) not in _PERIODS or float(match.group(1)) <= 0:
            raise ValueError(
                f"invalid rate limit {text!r}: expected '<count>/<period>' "
                "with a period of s, m or h, e.g. '100/s'"
            )
        count, multiple, unit = match.groups()
        return cls(float(count), float(multiple or 1) * _PERIODS[unit])


@runtime_checkable
class RateLimiter(Protocol):
    """Decides whether one more execution under ``key`` fits ``rate``."""

    async def acquire(self, key: str, rate: Rate) -> float:
        """Take a slot and return 0, or return how many seconds to wait before asking again."""


class LocalRateLimiter:
    """GCRA (a token bucket without a timer) counted in this process only."""

    def __init__(self, burst: int = 1) -> None:
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.burst = burst
        self._tat: dict[str, float] = {}  # theoretical arrival time per key

    async def acquire(self, key: str, rate: Rate) -> float:
        now = time.monotonic()
        interval = rate.interval
        tat = max(self._tat.get(key, now), now)
        tolerance = interval * (self.burst - 1)
        if tat - now > tolerance:
            return tat - tolerance - now
        self._tat[key] = tat + interval
        return 0.0
