"""A workflow compiled to a flat plan of steps, and the jobs its steps become.

Each step is one task call. A step's *input* is a reference to results: a
step number, a list of references (a group's results), or None (no input).
A step waits for the steps that end what comes before it (``deps``): those
its input refers to, also when it is immutable and ignores them, and, after
an empty group, the steps before that group. The plan stores the reverse
edges (``dependents``) so that recording a result can lower the counters of
exactly the steps waiting for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lexigram.tasks.errors import TaskArgumentsError
from lexigram.tasks.job import Job
from lexigram.tasks.task import EnqueueOptions
from lexigram.tasks.workflows._canvas import Chain, Chord, Group, Signature, Workflow

if TYPE_CHECKING:
    from lexigram.tasks.provider import TaskProvider

#: Job header of a step: ``<workflow id>:<step>``.
STEP_HEADER = "lexigram-workflow"
#: Job header of a step that waited for others: their spans' traceparents, comma separated.
LINKS_HEADER = "lexigram-workflow-links"
#: Job header of a final step that waited for others (a chord's callback) or of the
#: error handler: recorded as soon as it returns, not with its ack batch.
FINAL_HEADER = "lexigram-workflow-final"

PLAN_VERSION = 1

Ref = int | list["Ref"] | None


@dataclass(slots=True)
class Step:
    """One task call of a plan."""

    task: str
    job: dict[str, Any]
    receives: bool
    input: Ref
    deps: list[int] = field(default_factory=list)
    dependents: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "job": self.job,
            "receives": self.receives,
            "input": self.input,
            "deps": self.deps,
            "dependents": self.dependents,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Step:
        return cls(
            doc["task"], doc["job"], doc["receives"], doc["input"], doc["deps"], doc["dependents"]
        )


@dataclass(slots=True)
class Plan:
    """The steps of a workflow; ``handler`` (error handler) is step ``len(steps)``."""

    name: str
    steps: list[Step]
    result: Ref
    handler: Step | None = None
    traceparent: str | None = None
    #: Whether the queue honours dedup keys (Capability.UNIQUE).
    unique: bool = False

    @property
    def handler_index(self) -> int:
        return len(self.steps)

    def step(self, index: int) -> Step:
        if index == len(self.steps) and self.handler is not None:
            return self.handler
        return self.steps[index]

    def pending(self) -> list[int]:
        counts = [len(s.deps) for s in self.steps]
        return [*counts, 0] if self.handler is not None else counts

    def initial(self) -> list[int]:
        return [i for i, s in enumerate(self.steps) if not s.deps]

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": PLAN_VERSION,
                "name": self.name,
                "steps": [s.to_dict() for s in self.steps],
                "result": self.result,
                "handler": self.handler.to_dict() if self.handler is not None else None,
                "traceparent": self.traceparent,
                "unique": self.unique,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        doc = json.loads(text)
        handler = doc.get("handler")
        return cls(
            doc["name"],
            [Step.from_dict(s) for s in doc["steps"]],
            doc["result"],
            Step.from_dict(handler) if handler is not None else None,
            doc.get("traceparent"),
            bool(doc.get("unique")),
        )


def step_job_id(workflow_id: str, step: int) -> str:
    """The job id of a step: the same whoever enqueues it, so a second enqueue is found."""
    return f"{workflow_id}-{step}"


def compile_plan(shape: Workflow, provider: TaskProvider) -> Plan:
    """Flatten ``shape`` into steps, checking every step's arguments against its task.

    Walking a shape gives two things to what follows it: its result (a
    reference) and the steps that must finish first (``after``). They differ
    for an empty group, whose result is ``[]`` but which is over only when
    what came before it is, and for immutable steps, which ignore the result
    but still wait.
    """
    steps: list[Step] = []

    def add(sig: Signature[Any], prev: Ref, after: list[int]) -> int:
        index = len(steps)
        steps.append(_step(sig, prev, after, provider))
        for dep in after:
            steps[dep].dependents.append(index)
        return index

    def walk(node: Workflow, prev: Ref, after: list[int]) -> tuple[Ref, list[int]]:
        if node is not shape and node.error_handler is not None:
            raise ValueError(
                f"on_error applies to a whole workflow: set it on the outermost shape, "
                f"not on {node!r}"
            )
        if isinstance(node, Signature):
            index = add(node, prev, after)
            return index, [index]
        if isinstance(node, Chain):
            ref, waits = prev, after
            for child in node.steps:
                ref, waits = walk(child, ref, waits)
            return ref, waits
        if isinstance(node, Group):
            if not node.steps:
                return [], after
            parts = [walk(child, prev, after) for child in node.steps]
            return [ref for ref, _ in parts], _union(waits for _, waits in parts)
        if isinstance(node, Chord):
            return walk(node.body, *walk(node.header, prev, after))
        raise TypeError(f"not a workflow shape: {node!r}")

    result, _ = walk(shape, None, [])
    if not steps:
        raise ValueError("a workflow needs at least one step")
    handler_sig = shape.error_handler
    handler = _step(handler_sig, None, [], provider, failure=True) if handler_sig else None
    return Plan(_name(shape), steps, result, handler)


def _step(
    sig: Signature[Any],
    prev: Ref,
    after: list[int],
    provider: TaskProvider,
    failure: bool = False,
) -> Step:
    task = sig.task
    if task.provider is not provider:
        raise ValueError(
            f"task {task.name!r} is registered on another provider: every step of a "
            "workflow must come from the same TaskProvider"
        )
    receives = not sig.immutable and (prev is not None or failure)
    leading: list[Any] = [None] if receives else []
    try:
        job = provider.build_job(
            task.name, [*leading, *sig.args], dict(sig.kwargs), EnqueueOptions()
        )
    except TaskArgumentsError as exc:
        got = "the previous step's result, then " if receives and not failure else ""
        got = "the failure, then " if receives and failure else got
        raise TaskArgumentsError(
            f"workflow step {sig!r} (it gets {got}its own arguments): {exc}"
        ) from None
    doc = job.to_dict()
    doc["args"] = list(sig.args)
    for key in ("id", "enqueued_at", "attempt", "failures", "dedup_key"):
        doc.pop(key, None)
    return Step(task.name, doc, receives, prev if not sig.immutable else None, list(after))


def _union(lists: Iterable[list[int]]) -> list[int]:
    return list(dict.fromkeys(i for items in lists for i in items))


def _name(shape: Workflow) -> str:
    if isinstance(shape, Signature):
        return shape.task.name
    return type(shape).__name__.lower()


def resolve(ref: Ref, results: dict[int, Any]) -> Any:
    """The value of ``ref`` given the decoded results of the steps it names."""
    if ref is None:
        return None
    if isinstance(ref, int):
        return results[ref]
    return [resolve(item, results) for item in ref]


def build_step_job(plan: Plan, workflow_id: str, index: int, given: Any, links: list[str]) -> Job:
    """The job of step ``index``; ``given`` is its input (ignored unless it receives one)."""
    step = plan.step(index)
    doc = dict(step.job)
    args = list(doc.get("args", []))
    doc["args"] = [given, *args] if step.receives else args
    doc["id"] = step_job_id(workflow_id, index)
    headers = dict(doc.get("headers") or {})
    headers[STEP_HEADER] = f"{workflow_id}:{index}"
    if plan.traceparent:
        headers["traceparent"] = plan.traceparent
    if links:
        headers[LINKS_HEADER] = ",".join(links)
    if (step.deps and not step.dependents) or index == len(plan.steps):
        headers[FINAL_HEADER] = "1"
    doc["headers"] = headers
    if plan.unique:
        doc["dedup_key"] = f"lexigram-workflow:{doc['id']}"
    return Job.from_dict(doc)


def parse_step_header(value: str) -> tuple[str, int] | None:
    """``(workflow id, step)`` from a step's header, None if malformed."""
    workflow_id, _, index = value.rpartition(":")
    if not workflow_id or not index.isdigit():
        return None
    return workflow_id, int(index)
