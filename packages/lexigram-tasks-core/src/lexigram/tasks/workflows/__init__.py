"""Workflows: chains, groups and chords of tasks, durable across worker crashes.

Build a workflow from signatures (``task.s(...)``) with :func:`chain`,
:func:`group` and :func:`chord`, then ``handle = await workflow.enqueue()``.
Its state lives in a :class:`WorkflowStore` (Redis, PostgreSQL, or memory),
where the fan-in of a chord is one atomic claim (see ``docs/workflows.md``).
"""

from __future__ import annotations

from lexigram.tasks.workflows._canvas import (
    Chain,
    Chord,
    Group,
    Signature,
    Workflow,
    chain,
    chord,
    group,
)
from lexigram.tasks.workflows._resolve import store_for, use_workflow_store
from lexigram.tasks.workflows.handle import (
    StepStatus,
    WorkflowCancelledError,
    WorkflowFailedError,
    WorkflowHandle,
    WorkflowStatus,
)
from lexigram.tasks.workflows.store import (
    DEFAULT_WORKFLOW_TTL,
    Claim,
    MemoryWorkflowStore,
    StepOutcome,
    WorkflowSnapshot,
    WorkflowStore,
)

__all__ = [
    "DEFAULT_WORKFLOW_TTL",
    "Chain",
    "Chord",
    "Claim",
    "Group",
    "MemoryWorkflowStore",
    "Signature",
    "StepOutcome",
    "StepStatus",
    "Workflow",
    "WorkflowCancelledError",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowSnapshot",
    "WorkflowStatus",
    "WorkflowStore",
    "chain",
    "chord",
    "group",
    "store_for",
    "use_workflow_store",
]
