"""Starting a workflow: store its plan, then send the steps that wait for nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate
from opentelemetry.trace import SpanKind

from lexigram.tasks.job import new_job_id
from lexigram.tasks.protocol import Capability
from lexigram.tasks.workflows._canvas import Chain, Chord, Group, Signature, Workflow
from lexigram.tasks.workflows._plan import Plan, build_step_job, compile_plan, resolve
from lexigram.tasks.workflows._resolve import connected_store
from lexigram.tasks.workflows.handle import WorkflowHandle
from lexigram.tasks.workflows.store import DEFAULT_WORKFLOW_TTL

if TYPE_CHECKING:
    from lexigram.tasks.provider import TaskProvider

#: Span attribute: the workflow's id.
WORKFLOW_ID_ATTRIBUTE = "lexigram.workflow.id"
#: Span attribute: how many steps it has.
WORKFLOW_STEPS_ATTRIBUTE = "lexigram.workflow.steps"


async def enqueue_workflow(shape: Workflow, workflow_id: str | None) -> WorkflowHandle:
    provider = _first_signature(shape).task.provider
    plan = compile_plan(shape, provider)
    backend = _one_backend(plan, provider)
    await provider.connect()  # returns at once when connected
    queue = provider.backends[backend]
    store = await connected_store(queue)
    plan.unique = Capability.UNIQUE in queue.capabilities
    workflow_id = workflow_id or new_job_id()
    with _workflow_span(provider, plan, workflow_id):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        plan.traceparent = carrier.get("traceparent")
        await store.create(
            workflow_id, plan.to_json(), plan.pending(), len(plan.steps), DEFAULT_WORKFLOW_TTL
        )
        initial = plan.initial()
        # A step that waits for nothing may still take an input: an empty group's [].
        jobs = [
            build_step_job(plan, workflow_id, i, resolve(plan.steps[i].input, {}), [])
            for i in initial
        ]
        await provider.enqueue_many(jobs, backend=backend)
        await store.mark_enqueued(workflow_id, initial)
    return WorkflowHandle(workflow_id, plan, store, provider)


@contextlib.contextmanager
def _workflow_span(provider: TaskProvider, plan: Plan, workflow_id: str) -> Iterator[None]:
    """The workflow's enqueue span: every step's span is its child."""
    if not provider.telemetry.tracing:
        yield
        return
    with provider.telemetry.tracer.start_as_current_span(
        f"workflow {plan.name}", kind=SpanKind.PRODUCER
    ) as span:
        if span.is_recording():
            span.set_attribute(WORKFLOW_ID_ATTRIBUTE, workflow_id)
            span.set_attribute(WORKFLOW_STEPS_ATTRIBUTE, len(plan.steps))
        yield


def _one_backend(plan: Plan, provider: TaskProvider) -> str:
    steps = [*plan.steps, *([plan.handler] if plan.handler is not None else [])]
    names = {provider.backend_name(step.task) for step in steps}
    if len(names) > 1:
        raise ValueError(
            f"the steps of a workflow must all go to one backend; these go to {sorted(names)}"
        )
    return names.pop()


def _first_signature(shape: Workflow) -> Signature[Any]:
    if isinstance(shape, Signature):
        return shape
    children: tuple[Workflow, ...] = ()
    if isinstance(shape, Chain | Group):
        children = shape.steps
    elif isinstance(shape, Chord):
        children = (shape.header, shape.body)
    for child in children:
        with contextlib.suppress(ValueError):
            return _first_signature(child)
    raise ValueError("a workflow needs at least one step (task.s(...))")
