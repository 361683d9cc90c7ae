"""Tracing and metrics for the job lifecycle, on opentelemetry-api alone.

Spans. A PRODUCER ``send {queue}`` span wraps each enqueue and injects its
context into ``job.headers`` (W3C trace context through the global
propagator) unless the headers already carry one. The worker's CONSUMER
``process {queue}`` span takes that context as its parent, so one trace runs
from the web request through the enqueue into the task, and also links to it
(the link survives if ``links_only=True`` makes the process span a root).
Retries keep the original headers, so every attempt joins the same trace.
Retry, dead-lettering, cancellation and progress (one event per coalesced
write) are span events; worker start and stop are short INTERNAL spans.

Metrics. Counters of jobs enqueued, completed, retried, failed (for good)
and cancelled, histograms of execution duration and queue wait, and an
up-down counter of jobs in flight, by task name and queue.

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

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import _internal as _metrics_globals
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode

from lexigram.tasks._otel import attributes as attr
from lexigram.tasks._otel._metrics import DURATION_BUCKETS, Instruments
from lexigram.tasks._otel._spans import (
    CANCELLED,
    COMPLETED,
    DEAD_LETTERED,
    NOTHING,
    RETRIED,
    Attached,
    Execution,
    JobScope,
    Sending,
    carries_context,
    context_to_pass_on,
    current_job,
    job_attributes,
    set_outcome,
)
from lexigram.tasks._otel.producer import operation_attributes, producer_span
from lexigram.tasks._version import __version__
from lexigram.tasks.control import Progress
from lexigram.tasks.job import Job

__all__ = ["DURATION_BUCKETS", "INSTRUMENTATION_NAME", "Telemetry"]

INSTRUMENTATION_NAME = "lexigram.tasks"

_NOT_LOOKED = object()


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
            return Sending(self, job, system)
        self.pass_on(job)
        return NOTHING

    def pass_on(self, job: Job) -> None:
        """What :meth:`send` does when :meth:`quiet`: no span, no count; the context
        current at enqueue (an upstream trace, baggage), if any, is injected into
        the job unless it carries a ``traceparent`` already.

        The enqueue path calls it in place of ``send`` after checking ``quiet()``
        itself, which saves the ``with`` statement's two calls.
        """
        if "traceparent" not in job.headers and context_to_pass_on():
            propagate.inject(job.headers)

    @contextmanager
    def send_many(self, jobs: Sequence[Job], system: str, queue: str) -> Iterator[Span]:
        """One PRODUCER span for a bulk enqueue; each job carries its context."""
        sending: AbstractContextManager[Span] = (
            producer_span(
                self.tracer, system, queue, {attr.MESSAGING_BATCH_MESSAGE_COUNT: len(jobs)}
            )
            if self.tracing
            else NOTHING
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
            return Execution(self, job, system, worker_id)
        return Attached(job.headers) if carries_context(job.headers) else NOTHING

    def record_failure(
        self, span: Span, exc: BaseException, error_type: str, will_retry: bool
    ) -> None:
        """The handler raised (or timed out): exception, ERROR status, ``error.type``."""
        scope = current_job.get()
        if scope is not None:
            scope.error_type = error_type
        if span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            span.set_attribute(attr.ERROR_TYPE, error_type)
            span.set_attribute(attr.TASK_WILL_RETRY, will_retry)

    def record_retry(self, span: Span, delay: float, reason: str) -> None:
        """A ``retry`` event: the job goes back to run again after ``delay`` seconds."""
        set_outcome(RETRIED)
        if span.is_recording():
            span.add_event("retry", {attr.RETRY_DELAY_S: delay, attr.RETRY_REASON: reason})

    def record_dead_letter(self, span: Span, reason: str) -> None:
        """A ``dead_letter`` event: the job failed for good."""
        set_outcome(DEAD_LETTERED)
        if span.is_recording():
            span.add_event("dead_letter", {attr.DLQ_REASON: reason})

    def record_outcome(self, span: Span, outcome: str) -> None:
        """How the execution ended when it is not a plain completion (e.g. ``"requeued"``)."""
        set_outcome(outcome)
        if span.is_recording():
            span.set_attribute(attr.TASK_OUTCOME, outcome)

    def record_cancelled(self, span: Span) -> None:
        """A ``cancelled`` event: the job was stopped by a cancellation asked for while it ran."""
        set_outcome(CANCELLED)
        if span.is_recording():
            span.add_event("cancelled")

    def record_cancelled_unstarted(self, job: Job, system: str, queue: str) -> None:
        """A job leased by this worker was cancelled before it started: counted, no span."""
        if self.metering:
            self.instruments.cancelled.add(
                1, self.instruments.attributes(system, queue, job.task).base
            )

    def record_progress(self, span: Span, progress: Progress) -> None:
        """A ``progress`` event per coalesced progress write (not per report of the task)."""
        if not span.is_recording():
            return
        attributes: dict[str, float | str] = {}
        if progress.fraction is not None:
            attributes[attr.PROGRESS_FRACTION] = progress.fraction
        if progress.message is not None:
            attributes[attr.PROGRESS_MESSAGE] = progress.message
        span.add_event("progress", attributes)

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
                    span.set_attributes(job_attributes(job, system, "dead_letter", "settle"))
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

    def _finish(self, scope: JobScope, duration: float) -> None:
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
        elif outcome == CANCELLED:
            instruments.cancelled.add(1, sets.base)


def _noop_tracing(provider: trace.TracerProvider) -> bool:
    return isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _noop_metering(provider: metrics.MeterProvider) -> bool:
    # The API's stand-in before an SDK is set is private; its name is the stable part.
    return isinstance(provider, metrics.NoOpMeterProvider) or (
        type(provider).__name__ == "_ProxyMeterProvider"
    )
