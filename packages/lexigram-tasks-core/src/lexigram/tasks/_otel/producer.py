"""PRODUCER spans and the messaging attributes, written once.

Everything that sends jobs opens its span here: core's enqueue (one job or a
bulk one) and the DLQ's replays (through :mod:`lexigram.tasks.tracing`). So
the span name ``{operation type} {queue}``, its kind and the attribute names
of the messaging semantic conventions have one definition.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import propagate
from opentelemetry.trace import Link, Span, SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

from lexigram.tasks._otel import attributes as attr
from lexigram.tasks.job import Job

Attributes = dict[str, AttributeValue]


def operation_attributes(
    system: str, queue: str, operation_name: str, operation_type: str
) -> Attributes:
    """What every span of the lifecycle carries: the backend, the operation, the queue."""
    return {
        attr.MESSAGING_SYSTEM: system,
        attr.MESSAGING_OPERATION_NAME: operation_name,
        attr.MESSAGING_OPERATION_TYPE: operation_type,
        attr.MESSAGING_DESTINATION_NAME: queue,
    }


def message_attributes(job: Job) -> Attributes:
    """What identifies one job on a span: its id and task name (never its arguments)."""
    return {attr.MESSAGING_MESSAGE_ID: job.id, attr.TASK_NAME: job.task}


@contextmanager
def producer_span(
    tracer: Tracer,
    system: str,
    queue: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    operation_name: str | None = None,
    operation_type: str = "send",
    links: Sequence[Link] = (),
    inject_into: dict[str, str] | None = None,
) -> Iterator[Span]:
    """The current PRODUCER ``{operation_type} {queue}`` span around sending jobs.

    When it records, it carries :func:`operation_attributes` (``operation_name``
    defaults to ``operation_type``) and ``attributes``; an exception leaving it
    is recorded and sets its status to ERROR. ``inject_into`` (a job's headers)
    receives the span's context through the global propagator.
    """
    with tracer.start_as_current_span(
        f"{operation_type} {queue}", kind=SpanKind.PRODUCER, links=links, record_exception=True
    ) as span:
        if span.is_recording():
            name = operation_name or operation_type
            span.set_attributes(
                {**operation_attributes(system, queue, name, operation_type), **(attributes or {})}
            )
        if inject_into is not None:
            propagate.inject(inject_into)
        yield span
