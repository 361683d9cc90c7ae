"""MemoryTaskQueue: an in-process backend for tests and local development.

It keeps jobs as JSON bytes, exactly as a broker would, so code that works
here meets the same wire format, leases and dead-lettering on a real
backend. Everything is lost when the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

from lexigram.tasks.job import Job, new_job_id
from lexigram.tasks.protocol import (
    BaseTaskQueue,
    Capability,
    DeadLetter,
    Delivery,
    QueueCounts,
)


@dataclass(slots=True)
class _Entry:
    id: str
    payload: bytes
    priority: int
    run_at: float
    dedup_key: str | None
    attempt: int
    lease_token: int = 0
    lease_deadline: float = 0.0


class MemoryTaskQueue(BaseTaskQueue):
    """An ``asyncio``-based queue living in this process.

    Honours delays, priorities (0-9, higher first), dedup keys and leases
    like the persistent backends. Jobs are lost on restart, so the provider
    warns when it is used outside development or testing.
    """

    system = "memory"
    capabilities = frozenset({Capability.DELAY, Capability.PRIORITY, Capability.UNIQUE})

    def __init__(self, queue_name: str = "default") -> None:
        self.queue_name = queue_name
        self._entries: dict[str, _Entry] = {}
        self._ready: list[tuple[int, int, str]] = []  # (-priority, seq, id)
        self._delayed: list[tuple[float, int, str]] = []  # (run_at, seq, id)
        self._leases: list[tuple[float, int, str]] = []  # (deadline, token, id)
        self._running: dict[str, _Entry] = {}
        self._dedup: dict[str, str] = {}
        self._dead: list[DeadLetter] = []
        self._seq = itertools.count()
        self._tokens = itertools.count(1)
        self._wakeup = asyncio.Event()
        self._wakeup_loop: asyncio.AbstractEventLoop | None = None
        self._connected = False

    def __repr__(self) -> str:
        return f"MemoryTaskQueue(queue_name={self.queue_name!r})"

    async def connect(self) -> None:
        self._connected = True

    async def disconnect(self) -> None:
        self._connected = False

    async def _enqueue_encoded(self, job: Job, data: bytes) -> str:
        return self._store(job, data)

    async def _enqueue_many_encoded(self, encoded: Sequence[tuple[Job, bytes]]) -> list[str]:
        return [self._store(job, data) for job, data in encoded]

    def _store(self, job: Job, payload: bytes) -> str:
        if job.dedup_key is not None:
            holder = self._dedup.get(job.dedup_key)
            if holder is not None:
                return holder
            self._dedup[job.dedup_key] = job.id
        entry = _Entry(
            id=job.id,
            payload=payload,
            priority=job.priority,
            run_at=job.run_at or 0.0,
            dedup_key=job.dedup_key,
            attempt=job.attempt,
        )
        self._entries[job.id] = entry
        self._schedule(entry)
        return job.id

    def push_raw(self, payload: bytes) -> str:
        """Store bytes as they are, as a foreign producer would; for tests of bad input."""
        entry = _Entry(new_job_id(), payload, 0, 0.0, None, 0)
        self._entries[entry.id] = entry
        self._schedule(entry)
        return entry.id

    async def dequeue(
        self, *, max_jobs: int = 1, lease_seconds: float = 30.0, wait: float = 0.0
    ) -> list[Delivery]:
        deadline = time.monotonic() + wait
        while True:
            deliveries = self._take(max_jobs, lease_seconds)
            remaining = deadline - time.monotonic()
            if deliveries or remaining <= 0:
                return deliveries
            wakeup = self._wakeup_event()
            wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), min(remaining, self._next_due_in()))

    async def ack(self, delivery: Delivery) -> None:
        entry = self._owned(delivery)
        if entry is not None:
            self._forget(entry)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            entry = self._owned(delivery)
            if entry is not None:
                self._forget(entry)

    async def nack(
        self, delivery: Delivery, *, requeue: bool, delay: float = 0.0, reason: str = ""
    ) -> None:
        entry = self._owned(delivery)
        if entry is None:
            return
        del self._running[entry.id]
        entry.lease_token = 0
        if requeue and delivery.job is not None:
            entry.payload = delivery.job.to_bytes()
            entry.attempt = delivery.job.attempt
            entry.priority = delivery.job.priority
            entry.run_at = time.time() + delay if delay > 0 else 0.0
            self._schedule(entry)
            return
        self._forget(entry)
        self._dead.append(DeadLetter(entry.payload, reason, delivery.job_id, time.time()))

    async def extend_lease(self, deliveries: Sequence[Delivery], lease_seconds: float) -> None:
        deadline = time.monotonic() + lease_seconds
        for delivery in deliveries:
            entry = self._owned(delivery)
            if entry is not None:
                entry.lease_deadline = deadline
                heapq.heappush(self._leases, (deadline, entry.lease_token, entry.id))

    async def counts(self) -> QueueCounts:
        self._expire_leases()
        self._promote_delayed()
        delayed = sum(1 for _, _, i in self._delayed if self._is_waiting(i))
        ready = sum(1 for _, _, i in self._ready if self._is_waiting(i))
        return QueueCounts(
            ready=ready, delayed=delayed, running=len(self._running), failed=len(self._dead)
        )

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return self._dead[:limit]

    # -- internals -------------------------------------------------------------

    def _schedule(self, entry: _Entry) -> None:
        if entry.run_at > time.time():
            heapq.heappush(self._delayed, (entry.run_at, next(self._seq), entry.id))
        else:
            heapq.heappush(self._ready, (-entry.priority, next(self._seq), entry.id))
        self._wakeup.set()

    def _wakeup_event(self) -> asyncio.Event:
        """The wake-up event of the running loop.

        An ``asyncio.Event`` binds to the first loop that waits on it, and a
        module-level queue outlives loops (one per test, or per ``asyncio.run``).
        """
        loop = asyncio.get_running_loop()
        if loop is not self._wakeup_loop:
            self._wakeup = asyncio.Event()
            self._wakeup_loop = loop
        return self._wakeup

    def _is_waiting(self, job_id: str) -> bool:
        entry = self._entries.get(job_id)
        return entry is not None and entry.lease_token == 0

    def _take(self, max_jobs: int, lease_seconds: float) -> list[Delivery]:
        self._expire_leases()
        self._promote_delayed()
        deliveries: list[Delivery] = []
        deadline = time.monotonic() + lease_seconds
        while self._ready and len(deliveries) < max_jobs:
            _, _, job_id = heapq.heappop(self._ready)
            entry = self._entries.get(job_id)
            if entry is None or entry.lease_token:
                continue  # stale heap item: already settled or leased
            entry.attempt += 1
            entry.lease_token = next(self._tokens)
            entry.lease_deadline = deadline
            self._running[entry.id] = entry
            heapq.heappush(self._leases, (deadline, entry.lease_token, entry.id))
            token = (entry.id, entry.lease_token)
            deliveries.append(self.parse_delivery(entry.payload, token, attempt=entry.attempt))
        return deliveries

    def _owned(self, delivery: Delivery) -> _Entry | None:
        """The entry if ``delivery`` still holds its lease (it may have lapsed)."""
        entry_id, lease_token = delivery.token
        entry = self._running.get(entry_id)
        if entry is None or entry.lease_token != lease_token:
            return None
        return entry

    def _forget(self, entry: _Entry) -> None:
        self._entries.pop(entry.id, None)
        self._running.pop(entry.id, None)
        if entry.dedup_key is not None and self._dedup.get(entry.dedup_key) == entry.id:
            del self._dedup[entry.dedup_key]

    def _promote_delayed(self) -> None:
        now = time.time()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, job_id = heapq.heappop(self._delayed)
            entry = self._entries.get(job_id)
            if entry is not None and not entry.lease_token and entry.run_at <= now:
                heapq.heappush(self._ready, (-entry.priority, next(self._seq), job_id))

    def _expire_leases(self) -> None:
        now = time.monotonic()
        while self._leases and self._leases[0][0] <= now:
            _deadline, token, job_id = heapq.heappop(self._leases)
            entry = self._running.get(job_id)
            if entry is None or entry.lease_token != token or entry.lease_deadline > now:
                continue  # settled, re-leased or extended since
            del self._running[job_id]
            entry.lease_token = 0
            entry.run_at = 0.0
            heapq.heappush(self._ready, (-entry.priority, next(self._seq), job_id))

    def _next_due_in(self) -> float:
        """Seconds until a delayed job or a lease needs attention."""
        due = 3600.0
        if self._delayed:
            due = min(due, self._delayed[0][0] - time.time())
        if self._leases:
            due = min(due, self._leases[0][0] - time.monotonic())
        return max(due, 0.001)
