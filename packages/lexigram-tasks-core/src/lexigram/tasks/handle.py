"""JobHandle: what enqueueing returns."""

from __future__ import annotations

from typing import Generic, TypeVar

from lexigram.tasks.errors import NoResultStoreError
from lexigram.tasks.results import ResultStore

R = TypeVar("R")


class JobHandle(Generic[R]):
    """A reference to an enqueued job; ``await handle.result()`` waits for its outcome."""

    __slots__ = ("_store", "id", "queue", "task")

    def __init__(self, job_id: str, task: str, queue: str, store: ResultStore | None) -> None:
        self.id = job_id
        self.task = task
        self.queue = queue
        self._store = store

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r}, task={self.task!r}, queue={self.queue!r})"

    async def result(self, timeout: float | None = None) -> R:
        """The task's return value.

        Raises :class:`~lexigram.tasks.TaskFailedError` if the job failed for
        good, :class:`~lexigram.tasks.ResultTimeoutError` after ``timeout``
        seconds, :class:`~lexigram.tasks.NoResultStoreError` if no result
        store is configured.
        """
        if self._store is None:
            raise NoResultStoreError(
                "no result store is configured: pass result_store=... to TaskProvider "
                "(e.g. CacheBackendResultStore from lexigram-tasks-redis)"
            )
        outcome = await self._store.wait(self.id, timeout)
        value: R = outcome.unwrap()
        return value
