"""The overview's numbers: queue counts now, and throughput over the last hour.

Nothing new is recorded for the dashboard. Every live worker already
publishes two counters in its registry entry (``WorkerInfo.done``: runs whose
task returned; ``failed``: runs that raised or timed out, retried or not).
The sampler reads the counts and the worker list at most once per
``refresh`` seconds for every page open (the worker list at most every
``workers_every`` seconds), and adds each worker's counter increase since the
previous read to a per-minute bucket. The hour therefore starts empty when
the dashboard starts, and a worker that stopped between two reads loses its
last increments.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lexigram.tasks.control import WorkerInfo
from lexigram.tasks.errors import CapabilityNotSupportedError
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.redact import redact_urls

MINUTES = 60


@dataclass(frozen=True, slots=True)
class Minute:
    """Runs finished in one minute: ``done`` returned, ``failed`` raised."""

    start: float
    done: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.done + self.failed

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.total if self.total else None


@dataclass(slots=True)
class Sample:
    """One reading: counts per backend (or the error reading them), and the workers."""

    at: float
    counts: dict[str, QueueCounts] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerInfo] | None = None


class Throughput:
    """Per-minute run counts of the last hour, from the workers' ``done``/``failed`` counters."""

    def __init__(self) -> None:
        self._buckets: dict[int, list[int]] = {}
        self._seen: dict[str, tuple[int, int]] = {}
        self._last_read: float | None = None

    def add(self, workers: list[WorkerInfo], now: float) -> None:
        minute = int(now // 60)
        done = failed = 0
        for worker in workers:
            previous = self._seen.get(worker.id)
            if previous is not None:
                # A counter that went down belongs to a restarted process: all of it is new.
                done += worker.done - previous[0] if worker.done >= previous[0] else worker.done
                failed += (
                    worker.failed - previous[1] if worker.failed >= previous[1] else worker.failed
                )
            elif self._last_read is not None and worker.started_at >= self._last_read:
                done, failed = done + worker.done, failed + worker.failed
            self._seen[worker.id] = (worker.done, worker.failed)
        live = {w.id for w in workers}
        self._seen = {k: v for k, v in self._seen.items() if k in live}
        self._last_read = now
        bucket = self._buckets.setdefault(minute, [0, 0])
        bucket[0] += done
        bucket[1] += failed
        for old in [m for m in self._buckets if m <= minute - MINUTES]:
            del self._buckets[old]

    def hour(self, now: float) -> list[Minute]:
        """The last 60 minutes, oldest first (minutes with no reading count zero)."""
        current = int(now // 60)
        minutes = []
        for m in range(current - MINUTES + 1, current + 1):
            done, failed = self._buckets.get(m, (0, 0))
            minutes.append(Minute(m * 60.0, done, failed))
        return minutes


class Sampler:
    """Takes at most one reading per ``refresh`` seconds, shared by every open page."""

    def __init__(
        self,
        provider: TaskProvider,
        refresh: float,
        workers_every: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.refresh = refresh
        self.workers_every = max(workers_every, refresh)
        self.clock = clock
        self.throughput = Throughput()
        self._last: Sample | None = None
        self._workers_read: float | None = None
        self._lock = asyncio.Lock()
        self.readings = 0

    async def current(self) -> Sample:
        """The latest reading, taking a new one if the last is ``refresh`` seconds old."""
        async with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last.at < self.refresh:
                return self._last
            self._last = await self._read(now)
            return self._last

    async def _read(self, now: float) -> Sample:
        sample = Sample(at=now)
        self.readings += 1
        for name, queue in self.provider.backends.items():
            try:
                await queue.connect()  # does nothing when connected
                sample.counts[name] = await queue.counts()
            except Exception as exc:  # one unreachable backend must not hide the others
                sample.errors[name] = redact_urls(f"{type(exc).__name__}: {exc}")
        previous = self._last.workers if self._last is not None else None
        if self._workers_read is None or now - self._workers_read >= self.workers_every:
            self._workers_read = now
            try:
                workers = await self.provider.workers()
            except CapabilityNotSupportedError:
                workers = []
            except Exception as exc:
                sample.errors["workers"] = redact_urls(f"{type(exc).__name__}: {exc}")
                workers = previous or []
            self.throughput.add(workers, now)
            sample.workers = workers
        else:
            sample.workers = previous
        return sample
