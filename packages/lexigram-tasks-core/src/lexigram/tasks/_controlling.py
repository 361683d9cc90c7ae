"""Job visibility and control on :class:`~lexigram.tasks.TaskProvider`: status, listing,
cancellation, live workers.

Each call asks the backends declaring the capability it needs
(``INSPECT``, ``CANCEL``, ``WORKERS``; see :mod:`lexigram.tasks.control`),
and the result store for what only it knows: a finished job's result.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lexigram.tasks._enqueueing import Enqueueing
from lexigram.tasks.attempts import complete_history
from lexigram.tasks.control import (
    CancelOutcome,
    JobError,
    JobInfo,
    JobPage,
    JobState,
    WorkerInfo,
    require,
)
from lexigram.tasks.errors import CapabilityNotSupportedError
from lexigram.tasks.handle import JobControl
from lexigram.tasks.protocol import Capability, TaskQueueProtocol
from lexigram.tasks.results import JobResult

_RESULT_STATES = {
    "succeeded": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "cancelled": JobState.CANCELLED,
}


class Controlling(Enqueueing):
    """Status, listing, cancellation and workers (a base of ``TaskProvider``)."""

    async def get_job(self, job_id: str) -> JobInfo | None:
        """The job's state and details, or None if no backend and no result knows it.

        Asks each backend declaring ``Capability.INSPECT``; a finished job's
        ``result`` (and ``has_result``) comes from the result store. A job no
        backend knows any more (it forgot finished jobs) but whose result is
        stored is returned from the result alone: state ``succeeded``,
        ``failed`` or ``cancelled``, ``finished_at``, ``error`` and ``result``,
        with empty ``task`` and ``queue``. A running job's ``worker_id``, when
        its backend does not record it, is the live worker listing it as
        running (its list is as fresh as ``registry_interval``). On a backend
        declaring ``Capability.ATTEMPTS``, ``attempts`` lists every attempt
        (the last ``MAX_ATTEMPTS_KEPT``), including the one running now. Raises
        :class:`~lexigram.tasks.CapabilityNotSupportedError` when no backend
        declares ``INSPECT`` and no stored result answers.
        """
        await self._connect_for_control()
        inspecting = self._declaring(Capability.INSPECT)
        for queue in inspecting:
            info: JobInfo | None = await require(queue, "get_job", Capability.INSPECT)(job_id)
            if info is not None:
                if info.state.finished and self.result_store is not None:
                    stored = await self.result_store.get(job_id)
                    if stored is not None:
                        info = _with_result(info, stored)
                elif info.state is JobState.RUNNING and info.worker_id is None:
                    info = await self._with_worker(info)
                if Capability.ATTEMPTS in queue.capabilities:
                    info = complete_history(info)
                return info
        stored = await self.result_store.get(job_id) if self.result_store is not None else None
        if stored is not None:
            return _with_result(
                JobInfo(id=job_id, queue="", task="", state=_RESULT_STATES[stored.status]),
                stored,
            )
        if not inspecting:
            raise CapabilityNotSupportedError(
                f"no backend of this provider can look jobs up ({self._backend_list()} "
                f"declare no {Capability.INSPECT.value!r} capability), and no stored result "
                f"knows job {job_id}"
            )
        return None

    async def jobs(
        self,
        *,
        state: JobState | str | None = None,
        task: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        backend: str | None = None,
    ) -> JobPage:
        """A page of the jobs of one backend (default: the primary), filtered by state and task.

        Pass the page's ``cursor`` back for the next page (None: no more).
        Raises :class:`~lexigram.tasks.CapabilityNotSupportedError` for a
        backend without ``Capability.INSPECT``.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive whole number, got {limit!r}")
        wanted = JobState(state) if state is not None else None
        queue = self._backend_named(backend)
        await self._connect_for_control()
        listing = require(queue, "list_jobs", Capability.INSPECT)
        page: JobPage = await listing(state=wanted, task=task, limit=limit, cursor=cursor)
        return page

    async def cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a job: a queued or delayed one never starts, a running one is stopped.

        Asks each backend declaring ``Capability.CANCEL`` until one knows the
        job. ``CANCELLED``: it was pending and will never run (a configured
        result store gets a cancelled result, so ``handle.result()`` raises
        :class:`~lexigram.tasks.JobCancelledError`); ``REQUESTED``: it is
        running and its worker stops it; ``FINISHED``: it had finished,
        nothing changed; ``NOT_FOUND``: no backend (and no stored result)
        knows it. Raises :class:`~lexigram.tasks.CapabilityNotSupportedError`
        when no backend declares ``CANCEL``.
        """
        await self._connect_for_control()
        cancelling = self._declaring(Capability.CANCEL)
        if not cancelling:
            raise CapabilityNotSupportedError(
                f"no backend of this provider can cancel jobs ({self._backend_list()} "
                f"declare no {Capability.CANCEL.value!r} capability)"
            )
        for queue in cancelling:
            outcome = CancelOutcome(await require(queue, "cancel", Capability.CANCEL)(job_id))
            if outcome is CancelOutcome.NOT_FOUND:
                continue
            if outcome is CancelOutcome.CANCELLED and self.result_store is not None:
                await self.result_store.set(job_id, JobResult.cancelled(job_id), self.result_ttl)
            return outcome
        if self.result_store is not None and await self.result_store.get(job_id) is not None:
            return CancelOutcome.FINISHED
        return CancelOutcome.NOT_FOUND

    async def workers(self) -> list[WorkerInfo]:
        """The live workers of every backend declaring ``Capability.WORKERS``, by id.

        A worker serving several backends is listed once. Raises
        :class:`~lexigram.tasks.CapabilityNotSupportedError` when no backend
        keeps a worker list.
        """
        await self._connect_for_control()
        registries = self._declaring(Capability.WORKERS)
        if not registries:
            raise CapabilityNotSupportedError(
                f"no backend of this provider keeps a list of workers ({self._backend_list()} "
                f"declare no {Capability.WORKERS.value!r} capability)"
            )
        found: dict[str, WorkerInfo] = {}
        for queue in registries:
            listed: list[WorkerInfo] = await require(queue, "list_workers", Capability.WORKERS)()
            for info in listed:
                known = found.get(info.id)
                if known is None or info.heartbeat_at > known.heartbeat_at:
                    found[info.id] = info
        return [found[worker_id] for worker_id in sorted(found)]

    # -- helpers ----------------------------------------------------------------

    async def _with_worker(self, info: JobInfo) -> JobInfo:
        """``info`` with the id of the live worker that lists it as running, if one does."""
        for queue in self._declaring(Capability.WORKERS):
            try:
                listed: list[WorkerInfo] = await require(
                    queue, "list_workers", Capability.WORKERS
                )()
            except Exception:
                return info  # the worker is a detail: the state is what was asked for
            for worker in listed:
                if info.id in worker.running:
                    return dataclasses.replace(info, worker_id=worker.id)
        return info

    def _job_control(self) -> JobControl:
        return self

    async def _connect_for_control(self) -> None:
        if not self._connected:
            await self.connect()

    def _declaring(self, capability: Capability) -> list[TaskQueueProtocol]:
        """The backends declaring ``capability``, the primary first, each queue once."""
        ordered = [self.backends[self.primary]] + [
            q for n, q in self.backends.items() if n != self.primary
        ]
        seen: set[int] = set()
        found = []
        for queue in ordered:
            if capability in queue.capabilities and id(queue) not in seen:
                seen.add(id(queue))
                found.append(queue)
        return found

    def _backend_named(self, name: str | None) -> TaskQueueProtocol:
        name = self.primary if name is None else name
        queue = self.backends.get(name)
        if queue is None:
            raise ValueError(f"unknown backend {name!r} (backends: {', '.join(self.backends)})")
        return queue

    def _backend_list(self) -> str:
        return ", ".join(f"{n} ({type(q).__name__})" for n, q in self.backends.items())


def _with_result(info: JobInfo, stored: JobResult) -> JobInfo:
    """``info`` completed from a stored result: the value, or the error, and the end time."""
    changes: dict[str, Any] = {}
    if stored.status == "succeeded":
        changes.update(result=stored.value, has_result=True)
    elif stored.status == "failed" and info.error is None:
        changes["error"] = JobError(stored.error_type or "", stored.error_message or "")
    if info.finished_at is None and stored.finished_at:
        changes["finished_at"] = stored.finished_at
    return dataclasses.replace(info, **changes) if changes else info
