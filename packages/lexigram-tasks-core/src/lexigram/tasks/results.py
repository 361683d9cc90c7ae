"""Job results: the ``ResultStore`` protocol and an in-memory store."""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from lexigram.tasks.errors import (
    JobCancelledError,
    JobSerializationError,
    ResultTimeoutError,
    TaskFailedError,
)


@dataclass(frozen=True, slots=True)
class JobResult:
    """The outcome of a finished job: its return value, or its error."""

    job_id: str
    status: Literal["succeeded", "failed", "cancelled"]
    value: Any = None
    error_type: str | None = None
    error_message: str | None = None
    finished_at: float = 0.0

    def unwrap(self) -> Any:
        """The value; :class:`TaskFailedError` (the task's exception type and message) if
        it failed, :class:`JobCancelledError` if it was cancelled."""
        if self.status == "cancelled":
            raise JobCancelledError(self.job_id)
        if self.status == "failed":
            raise TaskFailedError(self.job_id, self.error_type or "", self.error_message or "")
        return self.value

    def to_json(self) -> str:
        try:
            return json.dumps(asdict(self), separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise JobSerializationError(
                f"result of job {self.job_id} is not JSON-serialisable: {exc}"
            ) from exc

    @classmethod
    def from_json(cls, data: str | bytes) -> JobResult:
        return cls(**json.loads(data))

    @classmethod
    def success(cls, job_id: str, value: Any) -> JobResult:
        return cls(job_id, "succeeded", value, finished_at=time.time())

    @classmethod
    def failure(cls, job_id: str, error_type: str, error_message: str) -> JobResult:
        return cls(job_id, "failed", None, error_type, error_message, time.time())

    @classmethod
    def cancelled(cls, job_id: str) -> JobResult:
        return cls(job_id, "cancelled", None, "JobCancelledError", "cancelled", time.time())


@runtime_checkable
class ResultStore(Protocol):
    """Where workers put results and handles read them."""

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    async def set(self, job_id: str, result: JobResult, ttl: float | None = None) -> None:
        """Store ``result``; it expires after ``ttl`` seconds (the store's default if None)."""

    async def get(self, job_id: str) -> JobResult | None:
        """The result if the job finished (and it has not expired), else None."""

    async def wait(self, job_id: str, timeout: float | None = None) -> JobResult:
        """Wait for the result; :class:`ResultTimeoutError` after ``timeout`` seconds."""


class MemoryResultStore:
    """Results kept in this process, with a TTL and a size bound (oldest evicted first).

    Values are stored as their JSON round trip, so what you read back is what
    a persistent store would give you.
    """

    def __init__(self, ttl: float = 3600.0, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._results: OrderedDict[str, tuple[float, JobResult]] = OrderedDict()
        self._waiters: dict[str, list[asyncio.Future[JobResult]]] = {}

    async def connect(self) -> None:
        return None

    async def disconnect(self) -> None:
        return None

    async def set(self, job_id: str, result: JobResult, ttl: float | None = None) -> None:
        stored = JobResult.from_json(result.to_json())
        expires = time.monotonic() + (self.ttl if ttl is None else ttl)
        self._results[job_id] = (expires, stored)
        self._results.move_to_end(job_id)
        while len(self._results) > self.max_entries:
            self._results.popitem(last=False)
        for waiter in self._waiters.pop(job_id, ()):
            if not waiter.done():
                waiter.set_result(stored)

    async def get(self, job_id: str) -> JobResult | None:
        item = self._results.get(job_id)
        if item is None:
            return None
        expires, result = item
        if expires < time.monotonic():
            del self._results[job_id]
            return None
        return result

    async def wait(self, job_id: str, timeout: float | None = None) -> JobResult:
        result = await self.get(job_id)
        if result is not None:
            return result
        waiter: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(waiter)
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise ResultTimeoutError(
                f"no result for job {job_id} within {timeout} seconds"
            ) from None
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[job_id]
