"""The PRODUCER spans of a replay, exactly: names, kinds, attributes, links, injected contexts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from lexigram.tasks import DeadLetterQueue, Job, MemoryTaskQueue
from lexigram.tasks.dlq import FailureRecord
from lexigram.tasks.dlq.replay import replay_job_id
from lexigram.tasks.dlq.testing import make_record
from lexigram.tasks.errors import JobTooLargeError

# What make_record puts in a record: the failed run, and the job's creation.
FAILED_RUN = "00f067aa0ba902b7"
CREATION = "b7ad6b7169203331"
TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def dlq(exporter: InMemorySpanExporter) -> Iterator[DeadLetterQueue]:
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    yield DeadLetterQueue(tracer_provider=tracing)
    tracing.shutdown()


def replay_attributes(record: FailureRecord, operation: str) -> dict[str, object]:
    return {
        "messaging.system": "memory",
        "messaging.operation.name": operation,
        "messaging.operation.type": "send" if operation == "replay" else operation,
        "messaging.destination.name": "default",
        "messaging.message.id": replay_job_id(record),
        "lexigram.task.name": "app.charge",
        "lexigram.dlq.replay_of": record.id,
    }


def links_of(span: ReadableSpan) -> list[tuple[str, str, dict[str, object]]]:
    return [
        (
            format(link.context.trace_id, "032x"),
            format(link.context.span_id, "016x"),
            dict(link.attributes or {}),
        )
        for link in span.links
    ]


def to_the_failure() -> list[tuple[str, str, dict[str, object]]]:
    return [
        (TRACE, FAILED_RUN, {"lexigram.link": "failed_run"}),
        (TRACE, CREATION, {"lexigram.link": "original_creation"}),
    ]


async def queued_jobs(queue: MemoryTaskQueue, count: int) -> dict[str, Job]:
    deliveries = await queue.dequeue(max_jobs=count)
    return {d.job.id: d.job for d in deliveries if d.job is not None}


def carries(job: Job, span: ReadableSpan) -> bool:
    """The job's headers hold this span's context."""
    assert span.context is not None
    prefix = f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-"
    return job.headers["traceparent"].startswith(prefix)


async def stored(dlq: DeadLetterQueue, failed_at: float = 1.0) -> FailureRecord:
    record = make_record(failed_at=failed_at)
    await dlq.add_record(record)
    return record


async def test_one_replay_is_one_send_span(
    dlq: DeadLetterQueue, exporter: InMemorySpanExporter
) -> None:
    record = await stored(dlq)
    queue = MemoryTaskQueue()
    assert await dlq.replay(record.id, queue) is not None
    [send] = exporter.get_finished_spans()
    assert (send.name, send.kind) == ("send default", SpanKind.PRODUCER)
    assert send.instrumentation_scope is not None
    assert send.instrumentation_scope.name == "lexigram.tasks.dlq"
    assert send.status.status_code is StatusCode.UNSET
    assert send.parent is None
    assert dict(send.attributes or {}) == replay_attributes(record, "replay")
    assert links_of(send) == to_the_failure()
    [job] = (await queued_jobs(queue, 1)).values()
    assert carries(job, send)


async def test_a_bulk_replay_is_a_create_span_per_job_and_one_send_span(
    dlq: DeadLetterQueue, exporter: InMemorySpanExporter
) -> None:
    records = [await stored(dlq, failed_at=1.0), await stored(dlq, failed_at=2.0)]
    queue = MemoryTaskQueue()
    report = await dlq.replay_many(queue)
    assert len(report.replayed) == 2
    finished = exporter.get_finished_spans()
    assert [s.name for s in finished] == ["create default", "create default", "send default"]
    *creates, send = finished
    jobs = await queued_jobs(queue, 2)
    for record, create in zip(records, creates, strict=True):
        assert create.kind is SpanKind.PRODUCER and create.parent is None
        assert dict(create.attributes or {}) == replay_attributes(record, "create")
        assert links_of(create) == to_the_failure()
        assert carries(jobs[replay_job_id(record)], create)
    assert send.kind is SpanKind.PRODUCER and send.parent is None
    assert send.instrumentation_scope is not None
    assert send.instrumentation_scope.name == "lexigram.tasks.dlq"
    assert dict(send.attributes or {}) == {
        "messaging.system": "memory",
        "messaging.operation.name": "replay",
        "messaging.operation.type": "send",
        "messaging.destination.name": "default",
        "messaging.batch.message_count": 2,
    }
    assert [(link.context.span_id, dict(link.attributes or {})) for link in send.links] == [
        (create.context.span_id, {}) for create in creates if create.context is not None
    ]


async def test_a_replay_the_backend_refuses_records_the_error_on_its_span(
    dlq: DeadLetterQueue, exporter: InMemorySpanExporter
) -> None:
    record = await stored(dlq)
    queue = MemoryTaskQueue()
    queue.max_job_bytes = 10  # every job is over it
    with pytest.raises(JobTooLargeError):
        await dlq.replay(record.id, queue)
    [send] = exporter.get_finished_spans()
    assert send.name == "send default" and send.status.status_code is StatusCode.ERROR
    assert [e.name for e in send.events] == ["exception"]
    assert (send.events[0].attributes or {})["exception.type"] == (
        "lexigram.tasks.errors.JobTooLargeError"
    )
    assert await dlq.get(record.id) is not None
