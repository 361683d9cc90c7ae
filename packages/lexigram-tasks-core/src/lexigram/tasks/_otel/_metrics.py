"""The metric instruments and their attribute sets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import metrics

from lexigram.tasks._otel import attributes as attr

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

#: Bound on cached attribute sets (task names come from jobs, so they are not trusted).
MAX_CACHED = 1024


class Instruments:
    """Counters, histograms and the in-flight gauge of the ``lexigram.tasks`` meter."""

    def __init__(self, meter: metrics.Meter) -> None:
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
        self.cancelled = meter.create_counter(
            attr.METRIC_CANCELLED, "{job}", "Jobs cancelled: before they started, or while running"
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
        self._sets: dict[tuple[str, str, str], AttributeSets] = {}

    def attributes(self, system: str, queue: str, task: str) -> AttributeSets:
        """The attribute sets of one task on one queue, built once."""
        key = (system, queue, task)
        found = self._sets.get(key)
        if found is None:
            found = AttributeSets(system, queue, task)
            if len(self._sets) < MAX_CACHED:
                self._sets[key] = found
        return found


class AttributeSets:
    """Metric attributes of one (system, queue, task), plus its outcome and error variants."""

    __slots__ = ("base", "by_error", "by_outcome")

    def __init__(self, system: str, queue: str, task: str) -> None:
        self.base: Mapping[str, Any] = {
            attr.MESSAGING_SYSTEM: system,
            attr.MESSAGING_DESTINATION_NAME: queue,
            attr.TASK_NAME: task,
        }
        self.by_outcome: dict[str, Mapping[str, Any]] = {}
        self.by_error: dict[str, Mapping[str, Any]] = {}

    def outcome(self, outcome: str) -> Mapping[str, Any]:
        found = self.by_outcome.get(outcome)
        if found is None:
            found = self.by_outcome[outcome] = {**self.base, attr.TASK_OUTCOME: outcome}
        return found

    def error(self, error_type: str | None) -> Mapping[str, Any]:
        if not error_type:
            return self.base
        found = self.by_error.get(error_type)
        if found is None:
            found = {**self.base, attr.ERROR_TYPE: error_type}
            if len(self.by_error) < MAX_CACHED:
                self.by_error[error_type] = found
        return found


def _histogram(meter: metrics.Meter, name: str, description: str) -> metrics.Histogram:
    try:
        return meter.create_histogram(
            name, "s", description, explicit_bucket_boundaries_advisory=DURATION_BUCKETS
        )
    except TypeError:  # opentelemetry-api < 1.23 has no bucket advice
        return meter.create_histogram(name, "s", description)
