"""Trace contexts of failed runs, and the PRODUCER spans of a replay.

A record keeps the failed run's context in W3C form whatever propagator the
application uses, so it reads the same from Redis, PostgreSQL or ``--json``.
A replayed job starts a new trace: its ``send`` span links to the failed
run (and to the job's original creation context), and the new context is
injected into the job's headers through the global propagator. The spans
are core's PRODUCER spans (:func:`lexigram.tasks.tracing.producer_span`),
named and attributed as an enqueue's, with ``messaging.operation.name``
``replay`` and the record's id.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from lexigram.tasks.dlq._version import __version__
from lexigram.tasks.job import Job
from lexigram.tasks.tracing import attributes, message_attributes, producer_span

_W3C = TraceContextTextMapPropagator()

#: Span attribute: the id of the record a replayed job came from.
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


def job_span(
    tracer: Tracer, job: Job, system: str, record_id: str, links: Sequence[Link], *, bulk: bool
) -> AbstractContextManager[Span]:
    """The span of one replayed job, which gets its context: ``send {queue}`` when it is
    sent alone, ``create {queue}`` when it is one of a bulk replay."""
    return producer_span(
        tracer,
        system,
        job.queue,
        {**message_attributes(job), REPLAY_OF: record_id},
        operation_name="create" if bulk else "replay",
        operation_type="create" if bulk else "send",
        links=links,
        inject_into=job.headers,
    )


def batch_span(
    tracer: Tracer, queue: str, system: str, creates: Sequence[SpanContext]
) -> AbstractContextManager[Span]:
    """``send {queue}`` around a bulk replay, linking to each job's ``create`` span."""
    return producer_span(
        tracer,
        system,
        queue,
        {attributes.MESSAGING_BATCH_MESSAGE_COUNT: len(creates)},
        operation_name="replay",
        links=[Link(c) for c in creates if c.is_valid],
    )
