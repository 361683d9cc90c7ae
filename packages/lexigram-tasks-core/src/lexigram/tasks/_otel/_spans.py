"""The per-job context managers of :class:`~lexigram.tasks._otel.Telemetry`.

``send`` and ``process`` return these plain classes (not generators: they
run once per job); the state the ``record_*`` calls need for metrics travels
in :data:`current_job`.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind

from lexigram.tasks._otel import attributes as attr
from lexigram.tasks._otel._metrics import AttributeSets
from lexigram.tasks._otel.producer import (
    Attributes,
    message_attributes,
    operation_attributes,
    producer_span,
)
from lexigram.tasks.job import Job

if TYPE_CHECKING:
    from lexigram.tasks._otel import Telemetry

#: Per-job outcomes, as set on process spans and the duration histogram.
COMPLETED = "completed"
RETRIED = "retried"
DEAD_LETTERED = "dead_lettered"
REQUEUED = "requeued"
INTERRUPTED = "interrupted"
CANCELLED = "cancelled"


@dataclass(slots=True)
class JobScope:
    """What the ``record_*`` calls of one execution need for metrics."""

    attributes: AttributeSets
    outcome: str | None = None
    error_type: str | None = None


current_job: ContextVar[JobScope | None] = ContextVar("lexigram_tasks_job", default=None)


class Sending:
    """``Telemetry.send``: the PRODUCER span, context injection, the enqueued count."""

    __slots__ = ("_job", "_span", "_system", "_telemetry")

    def __init__(self, telemetry: Telemetry, job: Job, system: str) -> None:
        self._telemetry = telemetry
        self._job = job
        self._system = system
        self._span: AbstractContextManager[Span] | None = None

    def __enter__(self) -> Span:
        job = self._job
        keep = "traceparent" in job.headers  # a context the caller put there is kept
        if self._telemetry.tracing:
            self._span = producer_span(
                self._telemetry.tracer,
                self._system,
                job.queue,
                run_attributes(job),
                inject_into=None if keep else job.headers,
            )
            return self._span.__enter__()
        if not keep and context_to_pass_on():
            propagate.inject(job.headers)
        return INVALID_SPAN

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._span is not None:
            self._span.__exit__(exc_type, exc, tb)
        if exc_type is None and self._telemetry.metering:
            job = self._job
            instruments = self._telemetry.instruments
            instruments.enqueued.add(
                1, instruments.attributes(self._system, job.queue, job.task).base
            )


#: The prefix of the headers lexigram-tasks writes itself (concurrency slots, workflow
#: steps): no propagator reads them.
OWN_HEADER_PREFIX = "lexigram-"


def carries_context(headers: dict[str, str]) -> bool:
    """Whether ``headers`` may hold a trace context: any header not lexigram-tasks' own."""
    return any(not name.startswith(OWN_HEADER_PREFIX) for name in headers)


class Attached:
    """Without spans or metrics: the job's trace context is current while it runs, so
    the jobs it enqueues carry it on."""

    __slots__ = ("_headers", "_token")

    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = headers

    def __enter__(self) -> Span:
        self._token = context.attach(propagate.extract(self._headers))
        return INVALID_SPAN

    def __exit__(self, *exc_info: object) -> None:
        context.detach(self._token)


NOTHING: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)


#: The parent of a span that starts a trace of its own.
_NO_PARENT = context.Context()


class Execution:
    """``Telemetry.process``: the CONSUMER span and the per-execution metrics."""

    __slots__ = (
        "_attached",
        "_job",
        "_metering",
        "_scope",
        "_span",
        "_span_object",
        "_started",
        "_system",
        "_telemetry",
        "_token",
        "_worker_id",
    )

    def __init__(self, telemetry: Telemetry, job: Job, system: str, worker_id: str) -> None:
        self._telemetry = telemetry
        self._job = job
        self._system = system
        self._worker_id = worker_id
        self._span: AbstractContextManager[Span] | None = None
        self._attached: Token[Any] | None = None

    def __enter__(self) -> Span:
        telemetry, job = self._telemetry, self._job
        instruments = telemetry.instruments
        sets = instruments.attributes(self._system, job.queue, job.task)
        self._scope = JobScope(sets)
        self._token = current_job.set(self._scope)
        waited = max(0.0, time.time() - (job.run_at or job.enqueued_at))
        self._metering = telemetry.metering
        if self._metering:
            if job.attempt <= 1:
                instruments.queue_wait.record(waited, sets.base)
            instruments.in_flight.add(1, sets.base)
        self._started = time.monotonic()
        if telemetry.tracing:
            return self._start_span(waited)
        if carries_context(job.headers):
            # No span, but the job's trace context is current while it runs, so
            # the jobs it enqueues carry it on.
            self._attached = context.attach(propagate.extract(job.headers))
        return INVALID_SPAN

    def _start_span(self, waited: float) -> Span:
        telemetry, job = self._telemetry, self._job
        creation = propagate.extract(job.headers) if carries_context(job.headers) else None
        links: list[Link] = []
        parent = None
        if creation is not None:
            span_context = trace.get_current_span(creation).get_span_context()
            if span_context.is_valid:
                links.append(Link(span_context))
                parent = _NO_PARENT if telemetry.links_only else creation
            # Current while the job runs, under its span: the job's baggage flows on.
            self._attached = context.attach(creation)
        self._span = telemetry.tracer.start_as_current_span(
            f"process {job.queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        )
        span = self._span_object = self._span.__enter__()
        if span.is_recording():
            attributes = job_attributes(job, self._system, "process", "process")
            attributes[attr.MESSAGING_CLIENT_ID] = self._worker_id
            attributes[attr.TASK_DELAY_S] = waited
            span.set_attributes(attributes)
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope = self._scope
        if exc_type is not None and scope.outcome is None:
            scope.outcome = INTERRUPTED
        try:
            if self._span is not None:
                span = self._span_object
                if span.is_recording():
                    span.set_attribute(attr.TASK_OUTCOME, scope.outcome or COMPLETED)
                self._span.__exit__(exc_type, exc, tb)
            if self._attached is not None:
                context.detach(self._attached)
        finally:
            current_job.reset(self._token)
            if self._metering:
                self._telemetry.instruments.in_flight.add(-1, scope.attributes.base)
                self._telemetry._finish(scope, time.monotonic() - self._started)


def context_to_pass_on() -> bool:
    """Without an SDK: is anything current (an upstream span context, baggage) to inject?

    A span or baggage is an entry of the current context, so an empty context
    means there is nothing to inject; asking every propagator costs more.
    """
    return bool(context.get_current())


def set_outcome(outcome: str) -> None:
    scope = current_job.get()
    if scope is not None:
        scope.outcome = outcome


def run_attributes(job: Job) -> Attributes:
    """The job and its run: what the lifecycle's single-job spans add."""
    attributes = message_attributes(job)
    attributes[attr.TASK_ATTEMPT] = job.attempt
    attributes[attr.TASK_MAX_RETRIES] = job.max_retries
    return attributes


def job_attributes(job: Job, system: str, op_name: str, op_type: str) -> Attributes:
    attributes = operation_attributes(system, job.queue, op_name, op_type)
    attributes.update(run_attributes(job))
    return attributes
