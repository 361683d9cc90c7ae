"""Concurrency limits: the ``ConcurrencyLimiter`` protocol and an in-process limiter.

A limiter is a lease-based semaphore per name: a worker takes a slot under
each limit of a job before running it (all or none), extends the slots with
the job's lease while it runs, and releases them when it ends. A slot whose
holder died frees itself when its lease lapses. A limiter may also offer
``release_nowait(names, holder)``, a :meth:`~ConcurrencyLimiter.release` that
needs no await (it queues the release); the worker calls it after each job
when it is there. ``lexigram-tasks-redis`` and
``lexigram-tasks-postgres`` provide limiters shared by every worker process
of a deployment; :class:`LocalConcurrencyLimiter` counts in one process.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.plugins import CONCURRENCY_LIMITERS

#: One limit of a job: the semaphore's name and how many holders it admits.
Limit = tuple[str, int]

#: The header in which a job enqueued on a backend whose lease can take its slots (see
#: :func:`slots_hint`) names them: the tab-separated name and limit of each. A hint
#: only: the worker computes the job's limits itself and gives back slots taken under
#: another name (a key function or limit changed since the enqueue).
SLOTS_HEADER = "lexigram-slots"

#: ``queue.system`` -> the limiter type that keeps its semaphores on the same server.
_LIMITER_OF_SYSTEM = {"memory": "local", "redis": "redis", "postgresql": "postgres"}


@runtime_checkable
class ConcurrencyLimiter(Protocol):
    """Lease-based semaphores, one per name."""

    #: False when the slots are counted in this process only.
    shared: bool

    async def acquire(self, limits: Sequence[Limit], holder: str, lease_seconds: float) -> bool:
        """Take a slot of every limit for ``holder``, or none of them; True if taken."""

    async def acquire_many(
        self, requests: Sequence[tuple[Sequence[Limit], str]], lease_seconds: float
    ) -> list[bool]:
        """:meth:`acquire` for each ``(limits, holder)``, in order (the worker asks once
        per fetched batch); a shared limiter answers them in one round trip."""

    async def release(self, names: Sequence[str], holder: str) -> None:
        """Give back ``holder``'s slots of ``names`` (a slot not held is ignored)."""

    async def extend(self, held: Sequence[tuple[str, str]], lease_seconds: float) -> None:
        """Push the leases of these ``(name, holder)`` slots ``lease_seconds`` from now."""


class LocalConcurrencyLimiter:
    """Slots counted in this process: right for the memory backend or a single worker process."""

    shared = False

    def __init__(self) -> None:
        self._slots: dict[str, dict[str, float]] = {}  # name -> holder -> expiry (monotonic)

    def __repr__(self) -> str:
        return "LocalConcurrencyLimiter()"

    @classmethod
    def for_queue(cls, queue: Any) -> LocalConcurrencyLimiter:
        """The limiter of a memory queue (any queue: this one keeps nothing in it)."""
        return cls()

    async def acquire(self, limits: Sequence[Limit], holder: str, lease_seconds: float) -> bool:
        now = time.monotonic()
        for name, limit in limits:
            holders = self._slots.get(name)
            if holders is None:
                continue
            for other in [h for h, expiry in holders.items() if expiry <= now]:
                del holders[other]
            if holder not in holders and len(holders) >= limit:
                return False
        for name, _ in limits:
            self._slots.setdefault(name, {})[holder] = now + lease_seconds
        return True

    async def acquire_many(
        self, requests: Sequence[tuple[Sequence[Limit], str]], lease_seconds: float
    ) -> list[bool]:
        return [await self.acquire(limits, holder, lease_seconds) for limits, holder in requests]

    async def release(self, names: Sequence[str], holder: str) -> None:
        self.release_nowait(names, holder)

    def release_nowait(self, names: Sequence[str], holder: str) -> None:
        """:meth:`release`, done at once."""
        for name in names:
            holders = self._slots.get(name)
            if holders is not None:
                holders.pop(holder, None)
                if not holders:
                    del self._slots[name]

    async def extend(self, held: Sequence[tuple[str, str]], lease_seconds: float) -> None:
        expiry = time.monotonic() + lease_seconds
        for name, holder in held:
            holders = self._slots.get(name)
            if holders is not None and holder in holders:
                holders[holder] = expiry


def slots_hint(limits: Sequence[Limit]) -> str | None:
    """``limits`` as the :data:`SLOTS_HEADER` text, or None when a name holds a tab, a
    newline or ``%`` (the lease then leaves the job's slots to the worker)."""
    text = "\t".join(f"{name}\t{limit}" for name, limit in limits)
    if "%" in text or "\n" in text or text.count("\t") != 2 * len(limits) - 1:
        return None
    return text


def limiter_for(queue: Any) -> ConcurrencyLimiter | None:
    """The limiter that keeps its slots where ``queue`` keeps its jobs, or None if there is none.

    Redis and PostgreSQL queues share their server (and connections) with it;
    the memory queue gets a :class:`LocalConcurrencyLimiter`. A backend with no
    such store (RabbitMQ) needs ``concurrency_limiter`` set.
    """
    name = _LIMITER_OF_SYSTEM.get(getattr(queue, "system", ""))
    if name is None or name not in CONCURRENCY_LIMITERS.entry_points():
        return None
    factory = CONCURRENCY_LIMITERS.load(name)
    limiter: ConcurrencyLimiter = factory.for_queue(queue)
    return limiter


def local_limit_refused(queue_name: str, system: str, tasks: Sequence[str]) -> ConfigurationError:
    """The error of a worker whose limits would be counted per process on a shared backend."""
    return ConfigurationError(
        f"task(s) {', '.join(tasks)} declare max_concurrency or max_concurrency_per_key, "
        f"but the {system} backend of queue {queue_name!r} keeps no semaphores, so the limit "
        "would be counted in each worker process, not across them: set concurrency_limiter "
        "(tasks.concurrency_limiter in YAML, e.g. type: redis or type: postgres)"
    )
