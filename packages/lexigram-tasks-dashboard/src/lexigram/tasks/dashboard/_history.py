"""The overview's numbers: queue counts now, and throughput over the last hour.

Nothing new is recorded for the dashboard. Every live worker already
publishes two counters in its registry entry (``WorkerInfo.done``: runs whose
task returned; ``failed``: runs that raised or timed out, retried or not).
The sampler reads the counts and the worker list at most once per
``refresh`` seconds for every page open (the worker list at most every
``workers_every`` seconds), in the background, and adds each worker's counter increase since the
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
    #: No reading has finished yet (the first is under way).
    pending: bool = False
    counts: dict[str, QueueCounts] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerInfo] | None = None


def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


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
    """One reading of the backends serves every open page; pages never wait for a slow one.

    A reading is started when the last is ``refresh`` seconds old, or older
    than ten times the last reading took (so a slow count, say on a large
    PostgreSQL table, keeps the database below a tenth of one connection's
    time). It runs in the background: pages get the previous reading at once,
    and only the very first page waits, up to ``first_wait`` seconds, for the
    first one (then it says the counts are being read).
    """

    def __init__(
        self,
        provider: TaskProvider,
        refresh: float,
        workers_every: float,
        clock: Callable[[], float] = time.time,
        first_wait: float = 0.2,
    ) -> None:
        self.provider = provider
        self.refresh = refresh
        self.workers_every = max(workers_every, refresh)
        self.clock = clock
        self.first_wait = first_wait
        self.throughput = Throughput()
        self.readings = 0
        #: How long the last reading took, in seconds.
        self.last_duration = 0.0
        self._last: Sample | None = None
        self._workers_read: float | None = None
        self._reading: asyncio.Task[None] | None = None

    @property
    def interval(self) -> float:
        """Seconds between readings: ``refresh``, or ten times the last reading's time."""
        return max(self.refresh, 10 * self.last_duration)

    async def current(self) -> Sample:
        """The latest reading (a new one starts in the background when it is due)."""
        now = self.clock()
        reading = self._reading
        if reading is not None and (reading.done() or reading.get_loop() is not _loop()):
            reading = self._reading = None  # finished, or left behind by a closed loop
        if reading is None and (self._last is None or now - self._last.at >= self.interval):
            reading = self._reading = asyncio.create_task(self._take(now))
        if self._last is None and reading is not None:
            await asyncio.wait({reading}, timeout=self.first_wait)
        return self._last if self._last is not None else Sample(at=now, pending=True)

    async def _take(self, now: float) -> None:
        began = time.monotonic()
        try:
            self._last = await self._read(now)
        except Exception as exc:  # never left unretrieved in a background task
            self._last = Sample(
                at=now, errors={"read": redact_urls(f"{type(exc).__name__}: {exc}")}
            )
        finally:
            self.last_duration = time.monotonic() - began

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
