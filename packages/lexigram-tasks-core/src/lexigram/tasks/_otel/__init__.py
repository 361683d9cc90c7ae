"""Tracing for the job lifecycle, on opentelemetry-api alone.

A PRODUCER ``send {queue}`` span wraps each enqueue and injects its context
into ``job.headers`` (W3C trace context through the global propagator). The
worker's CONSUMER ``process {queue}`` span takes that context as its parent,
so one trace runs from the web request through the enqueue into the task,
and also links to it (the link survives if ``links_only=True`` makes the
process span a root). Without an SDK the API's spans do not record and the
attribute work below is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from lexigram.tasks._otel import attributes as attr
from lexigram.tasks._version import __version__
from lexigram.tasks.job import Job


class Telemetry:
    """Creates the spans of the job lifecycle for one provider."""

    def __init__(
        self, tracer_provider: trace.TracerProvider | None = None, *, links_only: bool = False
    ) -> None:
        self.tracer = trace.get_tracer("lexigram.tasks", __version__, tracer_provider)
        self.links_only = links_only

    @contextmanager
    def send(self, job: Job, system: str) -> Iterator[Span]:
        """PRODUCER span around one enqueue; injects the trace context into the job."""
        with self.tracer.start_as_current_span(
            f"send {job.queue}", kind=SpanKind.PRODUCER, record_exception=True
        ) as span:
            if span.is_recording():
                span.set_attributes(_job_attributes(job, system, "send", "send"))
            if "traceparent" not in job.headers:
                propagate.inject(job.headers)
            yield span

    @contextmanager
    def send_many(self, jobs: list[Job], system: str, queue: str) -> Iterator[Span]:
        """One PRODUCER span for a bulk enqueue; each job carries its context."""
        with self.tracer.start_as_current_span(
            f"send {queue}", kind=SpanKind.PRODUCER, record_exception=True
        ) as span:
            if span.is_recording():
                span.set_attributes(
                    {
                        attr.MESSAGING_SYSTEM: system,
                        attr.MESSAGING_OPERATION_NAME: "send",
                        attr.MESSAGING_OPERATION_TYPE: "send",
                        attr.MESSAGING_DESTINATION_NAME: queue,
                        attr.MESSAGING_BATCH_MESSAGE_COUNT: len(jobs),
                    }
                )
            for job in jobs:
                if "traceparent" not in job.headers:
                    propagate.inject(job.headers)
            yield span

    @contextmanager
    def process(self, job: Job, system: str, worker_id: str) -> Iterator[Span]:
        """CONSUMER span around one execution, continuing the producer's trace."""
        creation = propagate.extract(job.headers) if job.headers else None
        links: list[Link] = []
        parent = None
        if creation is not None:
            span_context = trace.get_current_span(creation).get_span_context()
            if span_context.is_valid:
                links.append(Link(span_context))
                parent = None if self.links_only else creation
        with self.tracer.start_as_current_span(
            f"process {job.queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            if span.is_recording():
                attributes = _job_attributes(job, system, "process", "process")
                attributes[attr.MESSAGING_CLIENT_ID] = worker_id
                attributes[attr.TASK_DELAY_S] = max(
                    0.0, time.time() - (job.run_at or job.enqueued_at)
                )
                span.set_attributes(attributes)
            yield span

    @staticmethod
    def record_failure(span: Span, exc: BaseException, error_type: str, will_retry: bool) -> None:
        if span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            span.set_attribute(attr.ERROR_TYPE, error_type)
            span.set_attribute(attr.TASK_WILL_RETRY, will_retry)

    @staticmethod
    def record_retry(span: Span, delay: float, reason: str) -> None:
        if span.is_recording():
            span.add_event("retry", {attr.RETRY_DELAY_S: delay, attr.RETRY_REASON: reason})

    @staticmethod
    def record_dead_letter(span: Span, reason: str) -> None:
        if span.is_recording():
            span.add_event("dead_letter", {attr.DLQ_REASON: reason})

    @staticmethod
    def record_outcome(span: Span, outcome: str) -> None:
        if span.is_recording():
            span.set_attribute(attr.TASK_OUTCOME, outcome)


def _job_attributes(job: Job, system: str, op_name: str, op_type: str) -> dict[str, Any]:
    return {
        attr.MESSAGING_SYSTEM: system,
        attr.MESSAGING_OPERATION_NAME: op_name,
        attr.MESSAGING_OPERATION_TYPE: op_type,
        attr.MESSAGING_DESTINATION_NAME: job.queue,
        attr.MESSAGING_MESSAGE_ID: job.id,
        attr.TASK_NAME: job.task,
        attr.TASK_ATTEMPT: job.attempt,
        attr.TASK_MAX_RETRIES: job.max_retries,
    }
