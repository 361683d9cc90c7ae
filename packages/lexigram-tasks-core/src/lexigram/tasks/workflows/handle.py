"""WorkflowHandle: what ``await workflow.enqueue()`` returns."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lexigram.tasks.control import CancelOutcome, JobState
from lexigram.tasks.errors import ResultTimeoutError, TaskError
from lexigram.tasks.workflows._plan import Plan, resolve, step_job_id
from lexigram.tasks.workflows.store import CANCELLED, FAILED, SUCCEEDED, WorkflowStore

if TYPE_CHECKING:
    from lexigram.tasks.provider import TaskProvider

__all__ = [
    "StepStatus",
    "WorkflowCancelledError",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowStatus",
]

#: Longest pause between two looks at the store while waiting for the result.
_MAX_POLL = 0.1


class WorkflowFailedError(TaskError):
    """A step failed for good, so the workflow did not finish."""

    def __init__(self, workflow_id: str, failure: dict[str, Any]) -> None:
        self.workflow_id = workflow_id
        self.failure = failure
        self.step: int = failure.get("step", -1)
        self.task: str = failure.get("task", "")
        self.error_type: str = failure.get("error_type", "")
        self.error_message: str = failure.get("error_message", "")
        super().__init__(
            f"workflow {workflow_id} failed at step {self.step} ({self.task}): "
            f"{self.error_type}: {self.error_message}"
        )


class WorkflowCancelledError(TaskError):
    """The workflow was cancelled before it finished."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"workflow {workflow_id} was cancelled")
        self.workflow_id = workflow_id


@dataclass(frozen=True, slots=True)
class StepStatus:
    """One step of a workflow: its job, and its state (None: not enqueued yet)."""

    step: int
    task: str
    job_id: str
    state: JobState | None


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    """The workflow's own state and each step's (see :meth:`WorkflowHandle.status`)."""

    workflow_id: str
    #: ``running``, ``succeeded``, ``failed`` or ``cancelled``.
    state: str
    steps: list[StepStatus]


class WorkflowHandle:
    """A started workflow: ``result()`` waits for it, ``status()`` and ``cancel()`` act on it."""

    __slots__ = ("_plan", "_provider", "_store", "id")

    def __init__(
        self, workflow_id: str, plan: Plan, store: WorkflowStore, provider: TaskProvider
    ) -> None:
        self.id = workflow_id
        self._plan = plan
        self._store = store
        self._provider = provider

    def __repr__(self) -> str:
        return f"WorkflowHandle(id={self.id!r}, name={self._plan.name!r})"

    @property
    def job_ids(self) -> list[str]:
        """The job id of each step, in plan order (steps not yet enqueued included)."""
        return [step_job_id(self.id, i) for i in range(len(self._plan.steps))]

    async def result(self, timeout: float | None = None) -> Any:
        """The workflow's result: the last step's, or a list for a group at the end.

        Raises :class:`WorkflowFailedError` when a step failed for good,
        :class:`WorkflowCancelledError` when it was cancelled and
        :class:`~lexigram.tasks.ResultTimeoutError` after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.005
        while True:
            snapshot = await self._store.snapshot(self.id)
            if snapshot is None:
                raise TaskError(f"workflow {self.id} is unknown (expired, or never stored)")
            if snapshot.status == SUCCEEDED:
                results = {i: json.loads(text) for i, text in snapshot.results.items()}
                return resolve(self._plan.result, results)
            if snapshot.status == FAILED:
                raise WorkflowFailedError(self.id, json.loads(snapshot.error or "{}"))
            if snapshot.status == CANCELLED:
                raise WorkflowCancelledError(self.id)
            if deadline is not None and time.monotonic() + pause > deadline:
                raise ResultTimeoutError(f"workflow {self.id} did not finish within {timeout}s")
            await asyncio.sleep(pause)
            pause = min(pause * 2, _MAX_POLL)

    async def status(self) -> WorkflowStatus:
        """The workflow's state and each step's, from the store and ``provider.get_job``."""
        snapshot = await self._store.snapshot(self.id)
        if snapshot is None:
            raise TaskError(f"workflow {self.id} is unknown (expired, or never stored)")
        steps: list[StepStatus] = []
        for index, step in enumerate(self._plan.steps):
            job_id = step_job_id(self.id, index)
            state: JobState | None = None
            if index in snapshot.done:
                state = JobState.SUCCEEDED
            elif index in snapshot.enqueued:
                info = await self._provider.get_job(job_id)
                state = info.state if info is not None else JobState.QUEUED
            steps.append(StepStatus(index, step.task, job_id, state))
        return WorkflowStatus(self.id, snapshot.status, steps)

    async def forget(self) -> None:
        """Delete the workflow's state from its store now (it also expires after a week)."""
        await self._store.forget(self.id)

    async def cancel(self) -> list[CancelOutcome]:
        """Stop the workflow: no further step starts; queued and running steps are cancelled.

        Returns what cancelling each enqueued, unfinished step did.
        """
        steps = await self._store.cancel(self.id)
        return [await self._provider.cancel(step_job_id(self.id, i)) for i in steps]
