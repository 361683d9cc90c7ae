"""JobHandle: what enqueueing returns."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from lexigram.tasks.control import CancelOutcome, JobInfo
from lexigram.tasks.errors import ConfigurationError, NoResultStoreError
from lexigram.tasks.results import ResultStore

R = TypeVar("R")


class JobControl(Protocol):
    """What a handle asks for status and cancellation (a ``TaskProvider`` is one)."""

    async def get_job(self, job_id: str) -> JobInfo | None: ...

    async def cancel(self, job_id: str) -> CancelOutcome: ...


class JobHandle(Generic[R]):
    """A reference to an enqueued job: ``await handle.result()`` waits for its outcome,
    ``status()`` and ``cancel()`` ask the provider that enqueued it."""

    __slots__ = ("_control", "_store", "id", "queue", "task")

    def __init__(
        self,
        job_id: str,
        task: str,
        queue: str,
        store: ResultStore | None,
        control: JobControl | None = None,
    ) -> None:
        self.id = job_id
        self.task = task
        self.queue = queue
        self._store = store
        self._control = control

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r}, task={self.task!r}, queue={self.queue!r})"

    async def result(self, timeout: float | None = None) -> R:
        """The task's return value.

        Raises :class:`~lexigram.tasks.TaskFailedError` if the job failed for
        good, :class:`~lexigram.tasks.JobCancelledError` if it was cancelled,
        :class:`~lexigram.tasks.ResultTimeoutError` after ``timeout``
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

    async def status(self) -> JobInfo | None:
        """The job's state and details (see :meth:`TaskProvider.get_job`); None if unknown."""
        return await self._controller().get_job(self.id)

    async def cancel(self) -> CancelOutcome:
        """Cancel the job (see :meth:`TaskProvider.cancel`)."""
        return await self._controller().cancel(self.id)

    def _controller(self) -> JobControl:
        if self._control is None:
            raise ConfigurationError(
                f"this handle of job {self.id} was built without a provider, so it cannot "
                "ask for status or cancel: use the handle enqueue() returns, or call "
                "provider.get_job(job_id) / provider.cancel(job_id)"
            )
        return self._control
