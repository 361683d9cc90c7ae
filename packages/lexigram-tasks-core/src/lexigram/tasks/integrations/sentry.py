"""Sentry: report the errors of failed jobs, with the job they failed in.

:func:`report_failures` subscribes to the provider's
:class:`~lexigram.tasks.events.TaskFailedEvent` and sends the exception to
Sentry through the SDK the application initialised (``sentry_sdk.init``), in
a scope of its own carrying the job: tags to search and group by
(``lexigram.task``, ``lexigram.queue``, ``lexigram.job_id``,
``lexigram.attempt``, ``lexigram.will_retry``), a ``lexigram job`` context
with the rest, and the job's trace as the event's ``trace`` context, so the
error sits in the same trace as the OpenTelemetry spans of the job (and of
the web request that enqueued it).

Only final failures by default. A failed attempt that will be retried is not
reported unless ``every_attempt=True``: an error that a retry overcomes is
seldom worth an alert, and a flaky task would otherwise report once per
attempt. A job that fails for good (out of retries, or an exception not in
``retry_on``) is always reported. Task arguments are never sent.

No second event. The worker also logs each failure (``job <id> (<task>)
failed for good: ...`` at ERROR), which Sentry's logging integration would
send as a second event without the job's context. An event processor on the
global scope drops that log event for the jobs reported here, and only for
them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from lexigram.tasks.events import TaskFailedEvent
from lexigram.tasks.optional import missing_dependency

try:
    import sentry_sdk
except ModuleNotFoundError as _exc:  # pragma: no cover - exercised in a subprocess
    _message = missing_dependency(
        _exc, "sentry_sdk", "lexigram-tasks", extra="sentry", feature=__name__
    )
    if _message is None:
        raise
    raise ImportError(_message, name=_exc.name) from _exc

if TYPE_CHECKING:
    from lexigram.tasks.provider import TaskProvider

__all__ = ["JOB_CONTEXT", "SentryReporter", "report_failures"]

#: The name of the Sentry context holding the job's details.
JOB_CONTEXT = "lexigram job"
#: The worker's logger, whose failure lines repeat what is reported here.
WORKER_LOGGER = "lexigram.tasks.worker"
#: Reported jobs remembered until the worker logs their failure (a bound, not a cache).
_REMEMBERED = 1024


class SentryReporter:
    """The event handler: one Sentry event per reported :class:`TaskFailedEvent`."""

    def __init__(self, *, every_attempt: bool = False) -> None:
        #: Report attempts that will be retried too, not only final failures.
        self.every_attempt = every_attempt
        self._reported: OrderedDict[str, None] = OrderedDict()

    def drop_repeated_log(self, event: Any, hint: Any) -> Any:
        """A Sentry event processor: None (drop) for the worker's log event of a failure
        this reporter sent already; any other event unchanged."""
        record = hint.get("log_record") if isinstance(hint, dict) else None
        if (
            isinstance(record, logging.LogRecord)
            and record.name == WORKER_LOGGER
            and str(record.msg).startswith("job %s (%s)")
            and isinstance(record.args, tuple)
            and record.args
            and record.args[0] in self._reported
        ):
            self._reported.pop(str(record.args[0]), None)
            return None
        return event

    def __call__(self, event: TaskFailedEvent) -> None:
        if event.will_retry and not self.every_attempt:
            return
        job = event.job
        with sentry_sdk.new_scope() as scope:
            tags = {
                "lexigram.task": job.task,
                "lexigram.queue": event.queue,
                "lexigram.job_id": job.id,
                "lexigram.attempt": str(job.attempt),
                "lexigram.will_retry": "true" if event.will_retry else "false",
            }
            for key, value in tags.items():
                scope.set_tag(key, value)
            trace_context = _trace_context(job.headers.get("traceparent", ""))
            scope.set_context(
                JOB_CONTEXT,
                {
                    "id": job.id,
                    "task": job.task,
                    "queue": event.queue,
                    "attempt": job.attempt,
                    "max_retries": job.max_retries,
                    "will_retry": event.will_retry,
                    "worker_id": event.worker_id,
                    "duration_s": round(event.duration, 6),
                    "trace_id": trace_context["trace_id"] if trace_context else None,
                },
            )
            if trace_context:
                scope.set_context("trace", trace_context)
            self._reported[job.id] = None
            if len(self._reported) > _REMEMBERED:
                self._reported.popitem(last=False)
            if event.error is not None:
                scope.capture_exception(event.error)
            else:
                scope.capture_message(
                    f"job {job.id} ({job.task}) failed: {event.error_type}: {event.error_message}",
                    level="error",
                )


def report_failures(provider: TaskProvider, *, every_attempt: bool = False) -> Callable[[], None]:
    """Report the errors of ``provider``'s failed jobs to Sentry; returns the function
    that stops reporting.

    Call it where the worker's provider is built, after ``sentry_sdk.init``.
    Only failures for good are reported unless ``every_attempt`` is true.
    """
    reporter = SentryReporter(every_attempt=every_attempt)
    sentry_sdk.get_global_scope().add_event_processor(reporter.drop_repeated_log)
    return provider.events.subscribe(TaskFailedEvent, reporter)


def _trace_context(traceparent: str) -> dict[str, str] | None:
    """Sentry's ``trace`` context: the current OpenTelemetry span (the job's ``process``
    span when tracing is set up), else the job's own ``traceparent``."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return {
            "trace_id": format(span_context.trace_id, "032x"),
            "span_id": format(span_context.span_id, "016x"),
        }
    parts = traceparent.split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
        return {"trace_id": parts[1], "span_id": parts[2]}
    return None
