"""A workflow is one trace: each step's span is a child of the workflow's enqueue span,
and a chord's callback links to the span of every step it waited for."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from lexigram.tasks import MemoryTaskQueue, TaskProvider, chain, group
from lexigram.tasks.testing import eventually


async def test_a_workflow_is_one_trace_and_its_callback_links_to_its_inputs() -> None:
    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    provider = TaskProvider(queue=MemoryTaskQueue(), worker_count=4, tracer_provider=tracing)

    @provider.task(name="t.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @provider.task(name="t.total")
    async def total(values: list[int]) -> int:
        return sum(values)

    async with provider:
        handle = await chain(add.s(1, 1), group(add.s(i) for i in range(3)), total.s()).enqueue()
        assert await handle.result(timeout=10) == 9

        def processed() -> list[object]:
            return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]

        await eventually(lambda: len(processed()) == 5, message="five step spans")
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "workflow chain"]
    assert root.attributes is not None
    assert root.attributes["lexigram.workflow.id"] == handle.id
    steps = [s for s in spans if s.kind is SpanKind.CONSUMER]
    workflow = [s for s in spans if not s.name.startswith("lexigram.worker.")]
    assert {s.context.trace_id for s in workflow} == {root.context.trace_id}
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in steps)
    by_job = {s.attributes["messaging.message.id"]: s for s in steps if s.attributes}
    callback = by_job[handle.job_ids[-1]]
    waited = {by_job[handle.job_ids[i]].context.span_id for i in (1, 2, 3)}
    linked = {link.context.span_id for link in callback.links}
    assert waited <= linked
