"""Trace contexts of failed runs, and the PRODUCER spans of a replay.

A record keeps the failed run's context in W3C form whatever propagator the
application uses, so it reads the same from Redis, PostgreSQL or ``--json``.
A replayed job starts a new trace: its ``send`` span links to the failed
run (and to the job's original creation context), and the new context is
injected into the job's headers through the global propagator, as a normal
enqueue does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from lexigram.tasks.dlq._version import __version__
from lexigram.tasks.job import Job

_W3C = TraceContextTextMapPropagator()

# Attribute names of the messaging semantic conventions (see core's _otel).
_SYSTEM = "messaging.system"
_OPERATION_NAME = "messaging.operation.name"
_OPERATION_TYPE = "messaging.operation.type"
_DESTINATION = "messaging.destination.name"
_MESSAGE_ID = "messaging.message.id"
_BATCH_COUNT = "messaging.batch.message_count"
_TASK_NAME = "lexigram.task.name"
REPLAY_OF = "lexigram.dlq.replay_of"


def dlq_tracer(tracer_provider: trace.TracerProvider | None = None) -> Tracer:
    return trace.get_tracer("lexigram.tasks.dlq", __version__, tracer_provider)


def failed_run_context(job_headers: dict[str, str]) -> dict[str, str]:
    """The W3C carrier of the span running now (the worker's ``process`` span when
    the worker calls the sink), else of the job's creation context."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid and job_headers:
        creation = propagate.extract(job_headers)
        span_context = trace.get_current_span(creation).get_span_context()
    return to_carrier(span_context)


def to_carrier(span_context: SpanContext) -> dict[str, str]:
    if not span_context.is_valid:
        return {}
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, trace.set_span_in_context(NonRecordingSpan(span_context)))
    return carrier


def span_context_of(carrier: dict[str, str]) -> SpanContext | None:
    """The span context in a W3C carrier, or None."""
    if "traceparent" not in carrier:
        return None
    span_context = trace.get_current_span(_W3C.extract(carrier)).get_span_context()
    return span_context if span_context.is_valid else None


def links_for(trace_context: dict[str, str], original_headers: dict[str, str]) -> list[Link]:
    """Links to the failed run and, when it differs, to the job's first creation context."""
    links: list[Link] = []
    failed = span_context_of(trace_context)
    if failed is not None:
        links.append(Link(failed, {"lexigram.link": "failed_run"}))
    creation = trace.get_current_span(propagate.extract(original_headers)).get_span_context()
    if creation.is_valid and (failed is None or creation.span_id != failed.span_id):
        links.append(Link(creation, {"lexigram.link": "original_creation"}))
    return links


@contextmanager
def replay_span(
    tracer: Tracer, job: Job, system: str, record_id: str, links: Sequence[Link]
) -> Iterator[Span]:
    """PRODUCER ``send {queue}`` span for one replayed job; injects its context."""
    with tracer.start_as_current_span(
        f"send {job.queue}", kind=SpanKind.PRODUCER, links=links, record_exception=True
    ) as span:
        if span.is_recording():
            span.set_attributes(_attributes(job, system, record_id))
        propagate.inject(job.headers)
        yield span


@contextmanager
def create_span(
    tracer: Tracer, job: Job, system: str, record_id: str, links: Sequence[Link]
) -> Iterator[Span]:
    """PRODUCER ``create {queue}`` span of one job in a bulk replay; injects its context."""
    with tracer.start_as_current_span(
        f"create {job.queue}", kind=SpanKind.PRODUCER, links=links
    ) as span:
        if span.is_recording():
            attributes = _attributes(job, system, record_id)
            attributes[_OPERATION_NAME] = "create"
            attributes[_OPERATION_TYPE] = "create"
            span.set_attributes(attributes)
        propagate.inject(job.headers)
        yield span


@contextmanager
def batch_span(
    tracer: Tracer, queue: str, system: str, creates: Sequence[SpanContext]
) -> Iterator[Span]:
    """PRODUCER ``send {queue}`` span around a bulk replay, linking to each create span."""
    links = [Link(c) for c in creates if c.is_valid]
    with tracer.start_as_current_span(
        f"send {queue}", kind=SpanKind.PRODUCER, links=links, record_exception=True
    ) as span:
        if span.is_recording():
            span.set_attributes(
                {
                    _SYSTEM: system,
                    _OPERATION_NAME: "replay",
                    _OPERATION_TYPE: "send",
                    _DESTINATION: queue,
                    _BATCH_COUNT: len(creates),
                }
            )
        yield span


def _attributes(job: Job, system: str, record_id: str) -> dict[str, Any]:
    return {
        _SYSTEM: system,
        _OPERATION_NAME: "replay",
        _OPERATION_TYPE: "send",
        _DESTINATION: job.queue,
        _MESSAGE_ID: job.id,
        _TASK_NAME: job.task,
        REPLAY_OF: record_id,
    }
