"""Tracing and metrics for the job lifecycle, on opentelemetry-api alone.

Spans. A PRODUCER ``send {queue}`` span wraps each enqueue and injects its
context into ``job.headers`` (W3C trace context through the global
propagator) unless the headers already carry one. The worker's CONSUMER
``process {queue}`` span takes that context as its parent, so one trace runs
from the web request through the enqueue into the task, and also links to it
(the link survives if ``links_only=True`` makes the process span a root).
Retries keep the original headers, so every attempt joins the same trace.
Retry and dead-lettering are span events; worker start and stop are short
INTERNAL spans.

Metrics. Counters of jobs enqueued, completed, retried and failed (for good),
histograms of execution duration and queue wait, and an up-down counter of
jobs in flight, by task name and queue.

The worker hands the ``process`` span to ``record_*`` calls; the per-job
state those calls need for metrics (attributes, outcome) travels in a
context variable set by :meth:`Telemetry.process`, so the calls stay one
line each.

Cost without an SDK. When no tracer provider is given and no global one is
set, spans are not created at all (the API's no-op spans would still cost
microseconds per job through its nested context managers); likewise
measurements without a meter provider. With neither, ``send`` and
``process`` do next to nothing: the job's own trace context, if it carries
one, is still made current while it runs, so the jobs it enqueues continue
that trace, and an upstream context (or baggage) current at enqueue time is
still injected. The per-job context managers are plain classes, not
generators, and metric attribute sets are built once per task and queue, for
the same reason.

Following the global providers. A provider may be set as the global one at
any time, also after the ``TaskProvider`` exists (an SDK configured later at
start-up). The tracer and meter come from the API's proxies, which forward to
a global provider once one is set; what has to follow is the decision whether
to record at all. It is cached together with the two global provider objects
it was made for, and each job compares those with opentelemetry-api's module
globals by identity: two pointer comparisons, cheaper than reading a clock,
where the public ``get_tracer_provider()`` and ``get_meter_provider()`` cost
close to a microsecond each. The globals are private names of the API,
present in every version this package supports (the tests check the
installed one); should they disappear, the public getters are called on
every job instead, which is slower but just as correct.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from opentelemetry import context, metrics, propagate, trace
from opentelemetry.metrics import _internal as _metrics_globals
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode

from lexigram.tasks._otel import attributes as attr
from lexigram.tasks._otel._metrics import DURATION_BUCKETS, AttributeSets, Instruments
from lexigram.tasks._otel.producer import (
    Attributes,
    message_attributes,
    operation_attributes,
    producer_span,
)
from lexigram.tasks._version import __version__
from lexigram.tasks.job import Job

__all__ = ["DURATION_BUCKETS", "INSTRUMENTATION_NAME", "Telemetry"]

INSTRUMENTATION_NAME = "lexigram.tasks"

#: Per-job outcomes, as set on process spans and the duration histogram.
COMPLETED = "completed"
RETRIED = "retried"
DEAD_LETTERED = "dead_lettered"
REQUEUED = "requeued"
INTERRUPTED = "interrupted"

_NOT_LOOKED = object()


@dataclass(slots=True)
class _JobScope:
    """What the ``record_*`` calls of one execution need for metrics."""

    attributes: AttributeSets
    outcome: str | None = None
    error_type: str | None = None


_current_job: ContextVar[_JobScope | None] = ContextVar("lexigram_tasks_job", default=None)


class Telemetry:
    """Creates the spans and metrics of the job lifecycle for one provider."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        meter_provider: metrics.MeterProvider | None = None,
        links_only: bool = False,
    ) -> None:
        self.tracer = trace.get_tracer(INSTRUMENTATION_NAME, __version__, tracer_provider)
        self.links_only = links_only
        self.instruments = Instruments(
            metrics.get_meter(INSTRUMENTATION_NAME, __version__, meter_provider)
        )
        # An explicit provider decides once; a global one may be set at any time.
        self._fixed_tracing = (
            None if tracer_provider is None else not _noop_tracing(tracer_provider)
        )
        self._fixed_metering = (
            None if meter_provider is None else not _noop_metering(meter_provider)
        )
        self._seen_tracer_provider: object = _NOT_LOOKED
        self._seen_meter_provider: object = _NOT_LOOKED
        self._tracing = False
        self._metering = False
        self._quiet = True

    @property
    def tracing(self) -> bool:
        """Whether spans are created (an SDK tracer provider is in use)."""
        self.quiet()
        return self._tracing

    @property
    def metering(self) -> bool:
        """Whether measurements are recorded (an SDK meter provider is in use)."""
        self.quiet()
        return self._metering

    def quiet(self) -> bool:
        """Neither spans nor measurements are recorded: the per-job fast path."""
        try:
            if (
                trace._TRACER_PROVIDER is self._seen_tracer_provider
                and _metrics_globals._METER_PROVIDER is self._seen_meter_provider
            ):
                return self._quiet
        except AttributeError:  # an opentelemetry-api without these private globals
            pass
        self._look_at_globals()
        return self._quiet

    def _look_at_globals(self) -> None:
        # Remember what was seen before deciding: a provider set meanwhile differs
        # from it, so the next job decides again.
        self._seen_tracer_provider = getattr(trace, "_TRACER_PROVIDER", _NOT_LOOKED)
        self._seen_meter_provider = getattr(_metrics_globals, "_METER_PROVIDER", _NOT_LOOKED)
        self._tracing = (
            self._fixed_tracing
            if self._fixed_tracing is not None
            else not _noop_tracing(trace.get_tracer_provider())
        )
        self._metering = (
            self._fixed_metering
            if self._fixed_metering is not None
            else not _noop_metering(metrics.get_meter_provider())
        )
        self._quiet = not (self._tracing or self._metering)

    # -- producer --------------------------------------------------------------

    def send(self, job: Job, system: str) -> AbstractContextManager[Span]:
        """PRODUCER span around one enqueue; injects the trace context into the job."""
        if not self.quiet():
            return _Sending(self, job, system)
        if "traceparent" not in job.headers and _context_to_pass_on():
            propagate.inject(job.headers)
        return _NOTHING

    @contextmanager
    def send_many(self, jobs: Sequence[Job], system: str, queue: str) -> Iterator[Span]:
        """One PRODUCER span for a bulk enqueue; each job carries its context."""
        sending: AbstractContextManager[Span] = (
            producer_span(
                self.tracer, system, queue, {attr.MESSAGING_BATCH_MESSAGE_COUNT: len(jobs)}
            )
            if self.tracing
            else _NOTHING
        )
        with sending as span:
            for job in jobs:
                if "traceparent" not in job.headers:
                    propagate.inject(job.headers)
            yield span
        if not self.metering:
            return
        per_task: dict[str, int] = {}
        for job in jobs:
            per_task[job.task] = per_task.get(job.task, 0) + 1
        for task, count in per_task.items():
            self.instruments.enqueued.add(
                count, self.instruments.attributes(system, queue, task).base
            )

    # -- consumer --------------------------------------------------------------

    def process(self, job: Job, system: str, worker_id: str) -> AbstractContextManager[Span]:
        """CONSUMER span around one execution, continuing the producer's trace.

        Also counts the job in flight, records its queue wait (first attempt)
        and, on the way out, its duration and outcome.
        """
        if not self.quiet():
            return _Execution(self, job, system, worker_id)
        return _Attached(job.headers) if job.headers else _NOTHING

    def record_failure(
        self, span: Span, exc: BaseException, error_type: str, will_retry: bool
    ) -> None:
        """The handler raised (or timed out): exception, ERROR status, ``error.type``."""
        scope = _current_job.get()
        if scope is not None:
            scope.error_type = error_type
        if span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            span.set_attribute(attr.ERROR_TYPE, error_type)
            span.set_attribute(attr.TASK_WILL_RETRY, will_retry)

    def record_retry(self, span: Span, delay: float, reason: str) -> None:
        """A ``retry`` event: the job goes back to run again after ``delay`` seconds."""
        _set_outcome(RETRIED)
        if span.is_recording():
            span.add_event("retry", {attr.RETRY_DELAY_S: delay, attr.RETRY_REASON: reason})

    def record_dead_letter(self, span: Span, reason: str) -> None:
        """A ``dead_letter`` event: the job failed for good."""
        _set_outcome(DEAD_LETTERED)
        if span.is_recording():
            span.add_event("dead_letter", {attr.DLQ_REASON: reason})

    def record_outcome(self, span: Span, outcome: str) -> None:
        """How the execution ended when it is not a plain completion (e.g. ``"requeued"``)."""
        _set_outcome(outcome)
        if span.is_recording():
            span.set_attribute(attr.TASK_OUTCOME, outcome)

    def record_unprocessed_dead_letter(
        self, job: Job | None, system: str, queue: str, error_type: str, reason: str
    ) -> None:
        """A message dead-lettered without running: not a valid job, or its workers kept dying.

        There is no process span to hold the event, so a short CLIENT
        ``dead_letter {queue}`` span records it, in the job's trace when the
        job carries one.
        """
        if self.tracing:
            parent = propagate.extract(job.headers) if job is not None and job.headers else None
            span = self.tracer.start_span(f"dead_letter {queue}", parent, kind=SpanKind.CLIENT)
            if span.is_recording():
                if job is not None:
                    span.set_attributes(_job_attributes(job, system, "dead_letter", "settle"))
                else:
                    span.set_attributes(
                        operation_attributes(system, queue, "dead_letter", "settle")
                    )
                span.set_attribute(attr.ERROR_TYPE, error_type)
                span.set_attribute(attr.DLQ_REASON, reason)
                span.set_status(Status(StatusCode.ERROR, reason))
            span.end()
        if not self.metering:
            return
        task = job.task if job is not None else ""
        self.instruments.failed.add(
            1, self.instruments.attributes(system, queue, task).error(error_type)
        )

    # -- workers ---------------------------------------------------------------

    def worker_span(
        self, operation: str, system: str, queue: str, worker_id: str, worker_count: int
    ) -> Span:
        """An INTERNAL ``lexigram.worker.{operation}`` span (start, stop); the caller ends it."""
        if not self.tracing:
            return INVALID_SPAN
        span = self.tracer.start_span(f"lexigram.worker.{operation}", kind=SpanKind.INTERNAL)
        if span.is_recording():
            span.set_attributes(
                {
                    attr.MESSAGING_SYSTEM: system,
                    attr.MESSAGING_DESTINATION_NAME: queue,
                    attr.MESSAGING_CLIENT_ID: worker_id,
                    attr.WORKER_COUNT: worker_count,
                }
            )
        return span

    # -- helpers ---------------------------------------------------------------

    def _finish(self, scope: _JobScope, duration: float) -> None:
        outcome = scope.outcome or COMPLETED
        sets = scope.attributes
        instruments = self.instruments
        instruments.duration.record(duration, sets.outcome(outcome))
        if outcome == COMPLETED:
            instruments.completed.add(1, sets.base)
        elif outcome == RETRIED:
            instruments.retried.add(1, sets.error(scope.error_type))
        elif outcome == DEAD_LETTERED:
            instruments.failed.add(1, sets.error(scope.error_type))


class _Sending:
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
                _run_attributes(job),
                inject_into=None if keep else job.headers,
            )
            return self._span.__enter__()
        if not keep and _context_to_pass_on():
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


class _Attached:
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


_NOTHING: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)


class _Execution:
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
        self._scope = _JobScope(sets)
        self._token = _current_job.set(self._scope)
        waited = max(0.0, time.time() - (job.run_at or job.enqueued_at))
        self._metering = telemetry.metering
        if self._metering:
            if job.attempt <= 1:
                instruments.queue_wait.record(waited, sets.base)
            instruments.in_flight.add(1, sets.base)
        self._started = time.monotonic()
        if telemetry.tracing:
            return self._start_span(waited)
        if job.headers:
            # No span, but the job's trace context is current while it runs, so
            # the jobs it enqueues carry it on.
            self._attached = context.attach(propagate.extract(job.headers))
        return INVALID_SPAN

    def _start_span(self, waited: float) -> Span:
        telemetry, job = self._telemetry, self._job
        creation = propagate.extract(job.headers) if job.headers else None
        links: list[Link] = []
        parent = None
        if creation is not None:
            span_context = trace.get_current_span(creation).get_span_context()
            if span_context.is_valid:
                links.append(Link(span_context))
                parent = None if telemetry.links_only else creation
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
            attributes = _job_attributes(job, self._system, "process", "process")
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
            elif self._attached is not None:
                context.detach(self._attached)
        finally:
            _current_job.reset(self._token)
            if self._metering:
                self._telemetry.instruments.in_flight.add(-1, scope.attributes.base)
                self._telemetry._finish(scope, time.monotonic() - self._started)


def _context_to_pass_on() -> bool:
    """Without an SDK: is anything current (an upstream span context, baggage) to inject?

    A span or baggage is an entry of the current context, so an empty context
    means there is nothing to inject; asking every propagator costs more.
    """
    return bool(context.get_current())


def _set_outcome(outcome: str) -> None:
    scope = _current_job.get()
    if scope is not None:
        scope.outcome = outcome


def _noop_tracing(provider: trace.TracerProvider) -> bool:
    return isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _noop_metering(provider: metrics.MeterProvider) -> bool:
    # The API's stand-in before an SDK is set is private; its name is the stable part.
    return isinstance(provider, metrics.NoOpMeterProvider) or (
        type(provider).__name__ == "_ProxyMeterProvider"
    )


def _run_attributes(job: Job) -> Attributes:
    """The job and its run: what the lifecycle's single-job spans add."""
    attributes = message_attributes(job)
    attributes[attr.TASK_ATTEMPT] = job.attempt
    attributes[attr.TASK_MAX_RETRIES] = job.max_retries
    return attributes


def _job_attributes(job: Job, system: str, op_name: str, op_type: str) -> Attributes:
    attributes = operation_attributes(system, job.queue, op_name, op_type)
    attributes.update(_run_attributes(job))
    return attributes
