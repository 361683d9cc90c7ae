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
line each. Without an SDK the API's spans do not record, attribute work is
skipped, and the instruments are no-ops.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from lexigram.tasks._otel import attributes as attr
from lexigram.tasks._version import __version__
from lexigram.tasks.job import Job

INSTRUMENTATION_NAME = "lexigram.tasks"

#: Histogram buckets in seconds: from a few milliseconds up to the default task timeout.
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)

#: Per-job outcomes, as set on process spans and the duration histogram.
COMPLETED = "completed"
RETRIED = "retried"
DEAD_LETTERED = "dead_lettered"
REQUEUED = "requeued"
INTERRUPTED = "interrupted"

_MAX_CACHED_ATTRIBUTE_SETS = 1024


@dataclass(slots=True)
class _JobScope:
    """What the ``record_*`` calls of one execution need for metrics."""

    attributes: Mapping[str, Any]
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
        meter = metrics.get_meter(INSTRUMENTATION_NAME, __version__, meter_provider)
        self.enqueued = meter.create_counter(attr.METRIC_ENQUEUED, "{job}", "Jobs sent to a queue")
        self.completed = meter.create_counter(
            attr.METRIC_COMPLETED, "{job}", "Job executions that returned"
        )
        self.retried = meter.create_counter(
            attr.METRIC_RETRIED, "{job}", "Failed executions sent back to run again"
        )
        self.failed = meter.create_counter(
            attr.METRIC_FAILED, "{job}", "Jobs dead-lettered: out of retries, invalid or abandoned"
        )
        self.in_flight = meter.create_up_down_counter(
            attr.METRIC_IN_FLIGHT, "{job}", "Jobs being executed"
        )
        self.duration = _histogram(
            meter, attr.METRIC_DURATION, "Execution time of one attempt, by outcome"
        )
        self.queue_wait = _histogram(
            meter,
            attr.METRIC_QUEUE_WAIT,
            "Time from enqueue (or the requested run time) to the start of the first attempt",
        )
        self._attribute_sets: dict[tuple[str, str, str], Mapping[str, Any]] = {}

    # -- producer --------------------------------------------------------------

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
        self.enqueued.add(1, self._attributes(system, job.queue, job.task))

    @contextmanager
    def send_many(self, jobs: Sequence[Job], system: str, queue: str) -> Iterator[Span]:
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
        per_task: dict[str, int] = {}
        for job in jobs:
            per_task[job.task] = per_task.get(job.task, 0) + 1
        for task, count in per_task.items():
            self.enqueued.add(count, self._attributes(system, queue, task))

    # -- consumer --------------------------------------------------------------

    @contextmanager
    def process(self, job: Job, system: str, worker_id: str) -> Iterator[Span]:
        """CONSUMER span around one execution, continuing the producer's trace.

        Also counts the job in flight, records its queue wait (first attempt)
        and, on the way out, its duration and outcome.
        """
        creation = propagate.extract(job.headers) if job.headers else None
        links: list[Link] = []
        parent = None
        if creation is not None:
            span_context = trace.get_current_span(creation).get_span_context()
            if span_context.is_valid:
                links.append(Link(span_context))
                parent = None if self.links_only else creation
        metric_attributes = self._attributes(system, job.queue, job.task)
        scope = _JobScope(metric_attributes)
        token = _current_job.set(scope)
        waited = max(0.0, time.time() - (job.run_at or job.enqueued_at))
        if job.attempt <= 1:
            self.queue_wait.record(waited, metric_attributes)
        self.in_flight.add(1, metric_attributes)
        started = time.monotonic()
        try:
            with self.tracer.start_as_current_span(
                f"process {job.queue}",
                context=parent,
                kind=SpanKind.CONSUMER,
                links=links,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                recording = span.is_recording()
                if recording:
                    attributes = _job_attributes(job, system, "process", "process")
                    attributes[attr.MESSAGING_CLIENT_ID] = worker_id
                    attributes[attr.TASK_DELAY_S] = waited
                    span.set_attributes(attributes)
                try:
                    yield span
                except BaseException:
                    scope.outcome = scope.outcome or INTERRUPTED
                    raise
                finally:
                    if recording:
                        span.set_attribute(attr.TASK_OUTCOME, scope.outcome or COMPLETED)
        finally:
            _current_job.reset(token)
            self.in_flight.add(-1, metric_attributes)
            self._finish(scope, time.monotonic() - started)

    def _finish(self, scope: _JobScope, duration: float) -> None:
        outcome = scope.outcome or COMPLETED
        base = scope.attributes
        self.duration.record(duration, {**base, attr.TASK_OUTCOME: outcome})
        if outcome == COMPLETED:
            self.completed.add(1, base)
        elif outcome == RETRIED:
            self.retried.add(1, _with_error(base, scope.error_type))
        elif outcome == DEAD_LETTERED:
            self.failed.add(1, _with_error(base, scope.error_type))

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
        self._set_outcome(RETRIED)
        if span.is_recording():
            span.add_event("retry", {attr.RETRY_DELAY_S: delay, attr.RETRY_REASON: reason})

    def record_dead_letter(self, span: Span, reason: str) -> None:
        """A ``dead_letter`` event: the job failed for good."""
        self._set_outcome(DEAD_LETTERED)
        if span.is_recording():
            span.add_event("dead_letter", {attr.DLQ_REASON: reason})

    def record_outcome(self, span: Span, outcome: str) -> None:
        """How the execution ended when it is not a plain completion (e.g. ``"requeued"``)."""
        self._set_outcome(outcome)
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
        parent = propagate.extract(job.headers) if job is not None and job.headers else None
        span = self.tracer.start_span(f"dead_letter {queue}", parent, kind=SpanKind.CLIENT)
        if span.is_recording():
            if job is not None:
                span.set_attributes(_job_attributes(job, system, "dead_letter", "settle"))
            else:
                span.set_attributes(
                    {
                        attr.MESSAGING_SYSTEM: system,
                        attr.MESSAGING_OPERATION_NAME: "dead_letter",
                        attr.MESSAGING_OPERATION_TYPE: "settle",
                        attr.MESSAGING_DESTINATION_NAME: queue,
                    }
                )
            span.set_attribute(attr.ERROR_TYPE, error_type)
            span.set_attribute(attr.DLQ_REASON, reason)
            span.set_status(Status(StatusCode.ERROR, reason))
        span.end()
        task = job.task if job is not None else ""
        self.failed.add(1, _with_error(self._attributes(system, queue, task), error_type))

    # -- workers ---------------------------------------------------------------

    def worker_span(
        self, operation: str, system: str, queue: str, worker_id: str, worker_count: int
    ) -> Span:
        """An INTERNAL ``lexigram.worker.{operation}`` span (start, stop); the caller ends it."""
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

    @staticmethod
    def _set_outcome(outcome: str) -> None:
        scope = _current_job.get()
        if scope is not None:
            scope.outcome = outcome

    def _attributes(self, system: str, queue: str, task: str) -> Mapping[str, Any]:
        """Metric attributes, cached: the same few sets are used for every job."""
        key = (system, queue, task)
        cached = self._attribute_sets.get(key)
        if cached is None:
            cached = {
                attr.MESSAGING_SYSTEM: system,
                attr.MESSAGING_DESTINATION_NAME: queue,
                attr.TASK_NAME: task,
            }
            if len(self._attribute_sets) < _MAX_CACHED_ATTRIBUTE_SETS:
                self._attribute_sets[key] = cached
        return cached


def _histogram(meter: metrics.Meter, name: str, description: str) -> metrics.Histogram:
    try:
        return meter.create_histogram(
            name, "s", description, explicit_bucket_boundaries_advisory=DURATION_BUCKETS
        )
    except TypeError:  # opentelemetry-api < 1.23 has no bucket advice
        return meter.create_histogram(name, "s", description)


def _with_error(base: Mapping[str, Any], error_type: str | None) -> Mapping[str, Any]:
    return {**base, attr.ERROR_TYPE: error_type} if error_type else base


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
