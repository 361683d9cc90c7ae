"""Spans of the job lifecycle, through an explicit SDK tracer provider (no globals set)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from lexigram.tasks import Job, MemoryTaskQueue, Task, TaskFailedError, TaskProvider
from lexigram.tasks.concurrency import SLOTS_HEADER
from lexigram.tasks.errors import JobTooLargeError
from lexigram.tasks.testing import eventually

pytestmark = pytest.mark.timeout(30)


def spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = spans(exporter, name)
    return span


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


async def test_request_enqueue_retry_fail_is_one_trace(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    provider = TaskProvider(queue=MemoryTaskQueue(), tracer_provider=tracer_provider)

    @provider.task(name="shop.charge", max_retries=1, retry_backoff=0.01)
    async def charge(order: str) -> None:
        raise ValueError(f"card declined for order {order}")

    web = tracer_provider.get_tracer("web")
    async with provider:
        with web.start_as_current_span("POST /checkout", kind=SpanKind.SERVER) as request:
            handle = await charge.enqueue("QX-42")
        with pytest.raises(TaskFailedError):
            await handle.result(timeout=10)

    send = only(exporter, "send default")
    assert send.kind is SpanKind.PRODUCER
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert send.attributes is not None
    assert dict(send.attributes) == {
        "messaging.system": "memory",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": "default",
        "messaging.message.id": handle.id,
        "lexigram.task.name": "shop.charge",
        "lexigram.task.attempt": 0,
        "lexigram.task.max_retries": 1,
    }

    first, second = sorted(
        spans(exporter, "process default"),
        key=lambda s: (s.attributes or {})["lexigram.task.attempt"],
    )
    for process in (first, second):
        # parent = the producer's span (documented default), plus a link to it
        assert process.kind is SpanKind.CONSUMER
        assert process.context is not None and send.context is not None
        assert process.context.trace_id == request.get_span_context().trace_id
        assert process.parent is not None and process.parent.span_id == span_id(send)
        assert [link.context.span_id for link in process.links] == [span_id(send)]
        attributes = dict(process.attributes or {})
        assert attributes["messaging.operation.name"] == "process"
        assert attributes["messaging.operation.type"] == "process"
        assert attributes["messaging.message.id"] == handle.id
        assert attributes["lexigram.task.name"] == "shop.charge"
        assert attributes["lexigram.task.delay_s"] >= 0
        assert str(attributes["messaging.client.id"]).count(":") == 2  # host:pid:suffix
        assert attributes["error.type"] == "ValueError"
        assert process.status.status_code is StatusCode.ERROR
        assert process.status.description == "card declined for order QX-42"
        [exception] = [e for e in process.events if e.name == "exception"]
        assert (exception.attributes or {})["exception.type"] == "ValueError"
        assert "QX" not in str(attributes)  # arguments are never recorded

    assert first.attributes is not None and second.attributes is not None
    assert (
        first.attributes["lexigram.task.attempt"],
        first.attributes["lexigram.task.outcome"],
    ) == (
        1,
        "retried",
    )
    assert first.attributes["lexigram.task.will_retry"] is True
    [retry] = [e for e in first.events if e.name == "retry"]
    assert retry.attributes is not None
    assert retry.attributes["lexigram.retry.reason"] == "ValueError: card declined for order QX-42"
    assert 0 <= float(retry.attributes["lexigram.retry.delay_s"]) <= 0.01  # type: ignore[arg-type]

    assert second.attributes["lexigram.task.attempt"] == 2
    assert second.attributes["lexigram.task.outcome"] == "dead_lettered"
    assert second.attributes["lexigram.task.will_retry"] is False
    [dead] = [e for e in second.events if e.name == "dead_letter"]
    assert (dead.attributes or {})["lexigram.dlq.reason"] == (
        "ValueError: card declined for order QX-42"
    )
    assert not [e for e in second.events if e.name == "retry"]

    start = only(exporter, "lexigram.worker.start")
    stop = only(exporter, "lexigram.worker.stop")
    for span in (start, stop):
        assert span.kind is SpanKind.INTERNAL
        assert span.parent is None
        assert (span.attributes or {})["messaging.destination.name"] == "default"
        assert (span.attributes or {})["lexigram.worker.count"] == 1
    assert start.end_time is not None and first.start_time is not None
    assert start.end_time <= first.start_time
    assert stop.start_time is not None and second.end_time is not None
    assert second.end_time <= stop.start_time


async def test_success_has_no_error_and_outcome_completed(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    provider = TaskProvider(queue=MemoryTaskQueue("emails"), tracer_provider=tracer_provider)

    @provider.task(name="send_email")
    async def send_email(to: str) -> str:
        # the process span is current inside the handler, so its own spans nest under it
        return format(trace.get_current_span().get_span_context().span_id, "x")

    async with provider:
        inner = await (await send_email.enqueue("a@b.c")).result(timeout=5)
    process = only(exporter, "process emails")
    assert format(span_id(process), "x") == inner
    assert process.status.status_code is StatusCode.UNSET
    assert (process.attributes or {})["lexigram.task.outcome"] == "completed"
    assert "error.type" not in (process.attributes or {})
    assert process.events == ()


async def test_links_only_makes_the_process_span_a_root_with_a_link(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    provider = TaskProvider(
        queue=MemoryTaskQueue(), tracer_provider=tracer_provider, trace_links_only=True
    )

    @provider.task(name="t")
    async def t() -> None: ...

    async with provider:
        await (await t.enqueue()).result(timeout=5)
    send = only(exporter, "send default")
    process = only(exporter, "process default")
    assert process.parent is None
    assert [link.context.span_id for link in process.links] == [span_id(send)]
    assert process.context is not None and send.context is not None
    assert process.context.trace_id != send.context.trace_id


@pytest.mark.parametrize("links_only", [False, True], ids=["parent", "links-only"])
async def test_baggage_from_the_enqueue_is_current_in_the_task(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, links_only: bool
) -> None:
    from opentelemetry import baggage, context

    provider = TaskProvider(
        queue=MemoryTaskQueue(), tracer_provider=tracer_provider, trace_links_only=links_only
    )
    seen: list[object] = []

    @provider.task(name="t")
    async def t() -> None:
        seen.append(baggage.get_baggage("tenant"))
        seen.append(trace.get_current_span().get_span_context().span_id)

    async with provider:
        token = context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            handle = await t.enqueue()
        finally:
            context.detach(token)
        await handle.result(timeout=5)
        assert baggage.get_baggage("tenant") is None  # nothing left behind
    process = only(exporter, "process default")
    # the task runs under its process span, which keeps its parent (or its link)
    assert seen == ["acme", span_id(process)]
    send = only(exporter, "send default")
    if links_only:
        assert process.parent is None
        assert [link.context.span_id for link in process.links] == [span_id(send)]
    else:
        assert process.parent is not None and process.parent.span_id == span_id(send)


async def test_a_trace_context_the_caller_put_in_the_headers_is_kept(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    provider = TaskProvider(queue=MemoryTaskQueue(), tracer_provider=tracer_provider)

    @provider.task(name="t")
    async def t() -> None: ...

    upstream = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with provider:
        handle = await t.options(headers={"traceparent": upstream}).enqueue()
        await handle.result(timeout=5)
    process = only(exporter, "process default")
    assert process.context is not None and process.parent is not None
    assert format(process.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert format(process.parent.span_id, "016x") == "b7ad6b7169203331"


async def test_bulk_enqueue_is_one_send_span_parenting_every_job(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    provider = TaskProvider(queue=MemoryTaskQueue(), tracer_provider=tracer_provider)

    @provider.task(name="t")
    async def t(i: int) -> int:
        return i

    async with provider:
        handles = await provider.enqueue_many([t.job(i) for i in range(3)])
        for handle in handles:
            await handle.result(timeout=5)
    send = only(exporter, "send default")
    assert send.kind is SpanKind.PRODUCER
    assert dict(send.attributes or {}) == {
        "messaging.system": "memory",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": "default",
        "messaging.batch.message_count": 3,
    }
    processes = spans(exporter, "process default")
    assert len(processes) == 3
    assert all(p.parent is not None and p.parent.span_id == span_id(send) for p in processes)


async def test_a_refused_enqueue_records_the_error_on_its_send_span(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    queue = MemoryTaskQueue()
    queue.max_job_bytes = 10  # every job is over it
    provider = TaskProvider(queue=queue, tracer_provider=tracer_provider)
    with pytest.raises(JobTooLargeError):
        await provider.enqueue("t")
    send = only(exporter, "send default")
    assert send.status.status_code is StatusCode.ERROR
    assert [event.name for event in send.events] == ["exception"]


async def test_invalid_message_gets_a_dead_letter_span(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue, tracer_provider=tracer_provider)
    provider.task(name="t")(lambda: None)  # workers start only with a task to run
    async with provider:
        queue.push_raw(b'{"task": 5}')
        await eventually(lambda: spans(exporter, "dead_letter default"), timeout=5)
    dead = only(exporter, "dead_letter default")
    assert dead.kind is SpanKind.CLIENT
    assert dead.status.status_code is StatusCode.ERROR
    attributes = dict(dead.attributes or {})
    assert attributes["messaging.operation.type"] == "settle"
    assert attributes["error.type"] == "MalformedJobError"
    assert str(attributes["lexigram.dlq.reason"]).startswith("MalformedJobError: ")


async def test_job_whose_workers_keep_dying_is_dead_lettered_in_its_trace(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue, tracer_provider=tracer_provider, lease_seconds=0.2)

    @provider.task(name="t")
    async def t() -> None: ...

    await provider.connect()
    await t.enqueue()
    for _ in range(3):  # workers take it and "die": the lease lapses (1 run + 2 lost leases)
        assert await queue.dequeue(lease_seconds=0.05)
        await asyncio.sleep(0.06)
    async with provider:
        await eventually(lambda: spans(exporter, "dead_letter default"), timeout=5)
    send = only(exporter, "send default")
    dead = only(exporter, "dead_letter default")
    assert dead.parent is not None and dead.parent.span_id == span_id(send)
    assert (dead.attributes or {})["error.type"] == "LeaseExpired"
    assert (dead.attributes or {})["lexigram.task.attempt"] == 4
    assert not spans(exporter, "process default")


async def test_job_returned_at_shutdown_is_marked_requeued(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue, tracer_provider=tracer_provider, shutdown_timeout=0.1)
    started = asyncio.Event()

    @provider.task(name="slow")
    async def slow() -> None:
        started.set()
        await asyncio.sleep(30)

    async with provider:
        await slow.enqueue()
        await asyncio.wait_for(started.wait(), 5)
    process = only(exporter, "process default")
    assert (process.attributes or {})["lexigram.task.outcome"] == "requeued"
    assert (await queue.counts()).ready == 1


async def test_without_an_sdk_nothing_is_recorded_or_injected() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue(), tracer_provider=trace.NoOpTracerProvider())

    @provider.task(name="t")
    async def t() -> str:
        return "ok"

    async with provider:
        job = t.job()
        handle = await provider.enqueue_job(job)
        assert await handle.result(timeout=5) == "ok"
    assert job.headers == {}  # no SDK: the job carries no trace context


def _untraced_parent() -> tuple[TaskProvider, Task[[], None], list[Job]]:
    """A provider without an SDK, its task ``parent`` that enqueues a ``child``, and the
    children's jobs."""
    provider = TaskProvider(queue=MemoryTaskQueue(), tracer_provider=trace.NoOpTracerProvider())
    children: list[Job] = []

    @provider.task(name="child")
    async def child() -> None: ...

    @provider.task(name="parent")
    async def parent() -> None:
        job = child.job()
        await provider.enqueue_job(job)
        children.append(job)

    return provider, parent, children


async def test_without_an_sdk_an_upstream_trace_context_still_flows_through_jobs() -> None:
    provider, parent, children = _untraced_parent()
    upstream = trace.SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=trace.TraceFlags(1),
    )
    async with provider:
        # e.g. a web framework instrumented with the API only: a non-recording span
        # carrying the incoming request's context is current
        with trace.use_span(trace.NonRecordingSpan(upstream)):
            job = parent.job()
            await (await provider.enqueue_job(job)).result(timeout=5)
    assert job.headers["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    [grandchild] = children
    assert grandchild.headers["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"


async def test_without_an_sdk_only_headers_beside_lexigram_own_are_read_for_a_context() -> None:
    # A job's own headers (lexigram-*: its concurrency slots, its workflow) hold no
    # trace context, so they alone are not handed to the propagator; a traceparent
    # beside them still is.
    provider, parent, children = _untraced_parent()
    upstream = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    own = {SLOTS_HEADER: "task:parent:key:acme\t1"}
    async with provider:
        for headers in (own, {**own, "traceparent": upstream}):
            await (await parent.options(headers=headers).enqueue()).result(timeout=5)
    alone, beside = children
    assert alone.headers == {}
    assert beside.headers["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"


# Setting a global provider cannot be undone in a process, so this runs in its own.
GLOBAL_SDK_SET_LATE = """
import asyncio, json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from lexigram.tasks import MemoryTaskQueue, TaskProvider

provider = TaskProvider(queue=MemoryTaskQueue())


@provider.task(name="t")
async def t() -> None: ...


async def main() -> None:
    exporter = InMemorySpanExporter()
    sdk = TracerProvider()
    sdk.add_span_processor(SimpleSpanProcessor(exporter))
    if USED_BEFORE:
        await provider.start()  # the workers start, and enqueue, before there is an SDK
        await t.enqueue()
    trace.set_tracer_provider(sdk)
    after = await t.enqueue()
    await provider.start()
    await after.result(timeout=5)
    await provider.stop()
    await provider.disconnect()
    spans = exporter.get_finished_spans()
    print(json.dumps({
        "after": after.id,
        "sent": [s.attributes["messaging.message.id"] for s in spans if s.name == "send default"],
        "processed": [
            s.attributes["messaging.message.id"] for s in spans if s.name == "process default"
        ],
    }))


asyncio.run(main())
"""


@pytest.mark.parametrize("used_before", [False, True], ids=["fresh", "already-used"])
def test_a_global_sdk_set_after_the_provider_records_the_very_next_enqueue(
    used_before: bool,
) -> None:
    script = f"USED_BEFORE = {used_before}\n{GLOBAL_SDK_SET_LATE}"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["sent"] == [seen["after"]]
    assert seen["after"] in seen["processed"]


def test_the_global_providers_are_followed_by_pointer_comparison() -> None:
    # Without these private globals of opentelemetry-api the library still follows the
    # global providers, through the public getters, but pays about 2 us per job for it.
    from opentelemetry.metrics import _internal as metrics_globals

    assert hasattr(trace, "_TRACER_PROVIDER")
    assert hasattr(metrics_globals, "_METER_PROVIDER")
