"""Where a workflow's state lives: the plan, each step's result and the fan-in counters.

A :class:`WorkflowStore` keeps, per workflow, its status (``running``,
``succeeded``, ``failed``, ``cancelled``), its plan (JSON text), and per
step: how many of the steps it waits for are still unfinished
(``pending``), whether it is done (with its result as JSON text), and
whether its job was enqueued. Every method is atomic per workflow: the call
that records a step's result also lowers the counters of the steps waiting
for it, and the one call that brings a counter to zero *claims* that step.

A step is claimed again, not freshly (``Claim.fresh`` False), when the
result of one of its inputs is recorded a second time (a step delivered
again after its worker was killed) while the step is still not marked enqueued:
that is how a crash between a claim and its enqueue is recovered. The
enqueue of a step is idempotent (a job id derived from the workflow and the
step, plus a dedup key), so a recovered claim cannot enqueue it twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "DEFAULT_WORKFLOW_TTL",
    "Claim",
    "MemoryWorkflowStore",
    "StepOutcome",
    "WorkflowSnapshot",
    "WorkflowStore",
]

#: Seconds a workflow's state is kept after it was created (a week).
DEFAULT_WORKFLOW_TTL = 7 * 24 * 3600.0

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """A step that returned: its result (JSON text) and the steps waiting for it."""

    workflow_id: str
    step: int
    result: str
    dependents: tuple[int, ...]
    #: The W3C traceparent of the step's span ("" without tracing).
    span: str = ""


@dataclass(frozen=True, slots=True)
class Claim:
    """A step whose inputs are all done: the caller enqueues it, then marks it enqueued."""

    workflow_id: str
    step: int
    #: True for the call that brought the step's counter to zero; False for a
    #: re-run of one of its inputs finding it claimed but not marked enqueued.
    fresh: bool


@dataclass(frozen=True, slots=True)
class WorkflowSnapshot:
    """Everything a store knows about one workflow."""

    status: str
    plan: str
    error: str | None = None
    results: Mapping[int, str] = field(default_factory=dict)
    enqueued: frozenset[int] = frozenset()
    done: frozenset[int] = frozenset()


@runtime_checkable
class WorkflowStore(Protocol):
    """Durable workflow state with an atomic fan-in (see the module docstring)."""

    async def connect(self) -> None:
        """Get ready to serve calls (idempotent)."""

    async def create(
        self, workflow_id: str, plan: str, pending: Sequence[int], steps: int, ttl: float
    ) -> None:
        """Store a new ``running`` workflow whose step ``i`` waits for ``pending[i]`` steps.

        The workflow succeeds once its first ``steps`` steps are done; an entry
        of ``pending`` past them is the error handler's step. The state
        expires ``ttl`` seconds after creation.
        """

    async def plan(self, workflow_id: str) -> str | None:
        """The plan (JSON text) of a workflow, None if unknown or expired."""

    async def complete(self, outcomes: Sequence[StepOutcome]) -> list[Claim]:
        """Record finished steps (idempotent per step); return the steps they make ready.

        Nothing is claimed for a workflow that is no longer ``running``. A
        workflow whose every step is done becomes ``succeeded``.
        """

    async def inputs(self, workflow_id: str, steps: Sequence[int]) -> dict[int, tuple[str, str]]:
        """Result and span of each of ``steps`` that is done."""

    async def mark_enqueued(self, workflow_id: str, steps: Sequence[int]) -> str:
        """Mark steps enqueued; return the workflow's status at that moment."""

    async def fail(self, workflow_id: str, step: int, error: str) -> Claim | None:
        """A step failed for good: a ``running`` workflow becomes ``failed`` with ``error``.

        Returns the claim of the error handler's step (``fresh`` for the call
        that failed the workflow) while it is not marked enqueued, else None.
        """

    async def cancel(self, workflow_id: str) -> list[int]:
        """A ``running`` workflow becomes ``cancelled``; return its enqueued steps not done."""

    async def snapshot(self, workflow_id: str) -> WorkflowSnapshot | None:
        """The workflow's whole state, None if unknown or expired."""

    async def forget(self, workflow_id: str) -> None:
        """Delete a workflow's state now (it also expires by itself)."""


@dataclass(slots=True)
class _Workflow:
    plan: str
    pending: list[int]
    steps: int
    remaining: int
    status: str = RUNNING
    error: str | None = None
    results: dict[int, str] = field(default_factory=dict)
    spans: dict[int, str] = field(default_factory=dict)
    enqueued: set[int] = field(default_factory=set)


class MemoryWorkflowStore:
    """Workflow state in this process (pairs with :class:`~lexigram.tasks.MemoryTaskQueue`).

    Each method runs without awaiting, so on one event loop it is atomic.
    """

    def __init__(self) -> None:
        self._workflows: dict[str, _Workflow] = {}

    def __repr__(self) -> str:
        return f"MemoryWorkflowStore({len(self._workflows)} workflows)"

    async def connect(self) -> None:
        return None

    async def create(
        self, workflow_id: str, plan: str, pending: Sequence[int], steps: int, ttl: float
    ) -> None:
        self._workflows[workflow_id] = _Workflow(plan, list(pending), steps, steps)

    async def plan(self, workflow_id: str) -> str | None:
        flow = self._workflows.get(workflow_id)
        return flow.plan if flow is not None else None

    async def complete(self, outcomes: Sequence[StepOutcome]) -> list[Claim]:
        claims: list[Claim] = []
        for outcome in outcomes:
            flow = self._workflows.get(outcome.workflow_id)
            if flow is None:
                continue
            fresh = outcome.step not in flow.results
            flow.enqueued.add(outcome.step)
            if fresh:
                flow.results[outcome.step] = outcome.result
                flow.spans[outcome.step] = outcome.span
                flow.remaining -= outcome.step < flow.steps
                if flow.remaining == 0 and flow.status == RUNNING:
                    flow.status = SUCCEEDED
            for dependent in outcome.dependents:
                if fresh:
                    flow.pending[dependent] -= 1
                if (
                    flow.status == RUNNING
                    and flow.pending[dependent] == 0
                    and dependent not in flow.enqueued
                ):
                    claims.append(Claim(outcome.workflow_id, dependent, fresh))
        return claims

    async def inputs(self, workflow_id: str, steps: Sequence[int]) -> dict[int, tuple[str, str]]:
        flow = self._workflows.get(workflow_id)
        if flow is None:
            return {}
        return {s: (flow.results[s], flow.spans.get(s, "")) for s in steps if s in flow.results}

    async def mark_enqueued(self, workflow_id: str, steps: Sequence[int]) -> str:
        flow = self._workflows.get(workflow_id)
        if flow is None:
            return CANCELLED
        flow.enqueued.update(steps)
        return flow.status

    async def fail(self, workflow_id: str, step: int, error: str) -> Claim | None:
        flow = self._workflows.get(workflow_id)
        if flow is None:
            return None
        fresh = flow.status == RUNNING
        if fresh:
            flow.status = FAILED
            flow.error = error
        handler = flow.steps
        if flow.status != FAILED or handler >= len(flow.pending) or handler in flow.enqueued:
            return None
        return Claim(workflow_id, handler, fresh)

    async def cancel(self, workflow_id: str) -> list[int]:
        flow = self._workflows.get(workflow_id)
        if flow is None:
            return []
        if flow.status == RUNNING:
            flow.status = CANCELLED
        return sorted(s for s in flow.enqueued if s not in flow.results and s < flow.steps)

    async def snapshot(self, workflow_id: str) -> WorkflowSnapshot | None:
        flow = self._workflows.get(workflow_id)
        if flow is None:
            return None
        return WorkflowSnapshot(
            flow.status,
            flow.plan,
            flow.error,
            dict(flow.results),
            frozenset(flow.enqueued),
            frozenset(flow.results),
        )

    async def forget(self, workflow_id: str) -> None:
        self._workflows.pop(workflow_id, None)
