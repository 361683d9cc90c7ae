"""How a job travels as an AMQP message, and what the broker adds to it.

The body is the JSON job document (``docs/job-format.md``), unchanged. The
properties repeat what a non-Python consumer or a broker tool wants without
parsing the body: ``content_type`` ``application/json``, ``message_id`` (the
job id), ``type`` (the task name), ``priority``, ``timestamp`` and, as AMQP
headers, the job's headers (W3C ``traceparent``/``tracestate``/``baggage``
included), so tracing instrumentations of other languages find them there.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from typing import Any

from pamqp import commands as spec

from lexigram.tasks.errors import MalformedJobError
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import DeadLetter

CONTENT_TYPE = "application/json"
APP_ID = "lexigram-tasks"

#: Dead-letter headers written by this backend (readable by any AMQP client).
REASON_HEADER = "x-lexigram-reason"
FAILED_AT_HEADER = "x-lexigram-failed-at"
SOURCE_QUEUE_HEADER = "x-lexigram-source-queue"
ATTEMPT_HEADER = "x-lexigram-attempt"
JOB_ID_HEADER = "x-lexigram-job-id"

#: Job header giving a per-message TTL in milliseconds (the AMQP ``expiration``).
MESSAGE_TTL_HEADER = "x-message-ttl"

#: Set by a quorum queue on a redelivery: how many deliveries came before.
DELIVERY_COUNT_HEADER = "x-delivery-count"

#: Trace context a foreign producer may put only in the AMQP headers.
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")

_PERSISTENT = 2


def job_properties(job: Job, *, expiration_ms: int | None = None) -> spec.Basic.Properties:
    """AMQP properties of the message carrying ``job``."""
    return spec.Basic.Properties(
        content_type=CONTENT_TYPE,
        content_encoding="utf-8",
        delivery_mode=_PERSISTENT,
        priority=job.priority,
        message_id=job.id,
        message_type=job.task,
        timestamp=dt.datetime.fromtimestamp(int(job.enqueued_at), dt.UTC),
        app_id=APP_ID,
        headers=dict(job.headers) if job.headers else None,
        expiration=str(expiration_ms) if expiration_ms is not None else None,
    )


def message_ttl_ms(job: Job) -> int | None:
    """The per-message TTL a job asks for through its ``x-message-ttl`` header."""
    value = job.headers.get(MESSAGE_TTL_HEADER)
    if value is None:
        return None
    try:
        ms = int(value)
    except ValueError:
        raise ValueError(
            f"job header {MESSAGE_TTL_HEADER!r} must be whole milliseconds, got {value!r}"
        ) from None
    if ms < 0:
        raise ValueError(f"job header {MESSAGE_TTL_HEADER!r} must be >= 0, got {ms}")
    return ms


def dead_letter_properties(
    original: spec.Basic.Properties,
    *,
    reason: str,
    source_queue: str,
    attempt: int | None,
    job_id: str | None,
) -> spec.Basic.Properties:
    """Properties of a dead-lettered copy: the original's, plus why and when."""
    headers: dict[str, Any] = dict(original.headers or {})
    headers[REASON_HEADER] = reason
    headers[FAILED_AT_HEADER] = time.time()
    headers[SOURCE_QUEUE_HEADER] = source_queue
    if attempt is not None:
        headers[ATTEMPT_HEADER] = attempt
    if job_id is not None:
        headers[JOB_ID_HEADER] = job_id
    return spec.Basic.Properties(
        content_type=original.content_type,
        content_encoding=original.content_encoding,
        delivery_mode=_PERSISTENT,
        message_id=original.message_id,
        message_type=original.message_type,
        timestamp=original.timestamp,
        app_id=original.app_id,
        headers=headers,
    )


def redeliveries(properties: spec.Basic.Properties, redelivered: bool, *, quorum: bool) -> int:
    """How many earlier deliveries of this message the broker reports.

    Quorum queues count them (``x-delivery-count``); classic queues only flag
    a redelivery, so there it is 0 or 1 however often it happened.
    """
    if quorum:
        count = (properties.headers or {}).get(DELIVERY_COUNT_HEADER, 0)
        return count if isinstance(count, int) and count > 0 else 0
    return 1 if redelivered else 0


def without_delivery_count(properties: spec.Basic.Properties) -> spec.Basic.Properties:
    """``properties`` for publishing a received message again: the broker's count removed.

    A quorum queue adds ``x-delivery-count`` only to redeliveries, so a stale
    one copied into a new message would read as deliveries it never had.
    """
    headers = properties.headers
    if not headers or DELIVERY_COUNT_HEADER not in headers:
        return properties
    fresh = copy.copy(properties)
    fresh.headers = {k: v for k, v in headers.items() if k != DELIVERY_COUNT_HEADER}
    return fresh


def adopt_trace_headers(job: Job, properties: spec.Basic.Properties) -> None:
    """Take trace context from the AMQP headers when the job document has none."""
    amqp_headers = properties.headers
    if not amqp_headers:
        return
    for key in TRACE_HEADERS:
        value = amqp_headers.get(key)
        if key not in job.headers and isinstance(value, str | bytes):
            job.headers[key] = value.decode() if isinstance(value, bytes) else value


def to_dead_letter(body: bytes, properties: spec.Basic.Properties) -> DeadLetter:
    """Read a message from a dead-letter queue, whoever put it there.

    Messages this backend dead-lettered carry ``x-lexigram-reason``; messages
    the broker dead-lettered (TTL expired, delivery limit, rejected by another
    consumer) carry ``x-death``, whose first entry names the reason.
    """
    headers = properties.headers or {}
    reason = _text(headers.get(REASON_HEADER))
    failed_at = headers.get(FAILED_AT_HEADER)
    death = _first_death(headers)
    if reason is None:
        reason = _text(death.get("reason")) if death else None
        queue = _text(death.get("queue")) if death else None
        reason = f"{reason} (in queue {queue})" if reason and queue else reason or "unknown"
    if not isinstance(failed_at, int | float):
        when = death.get("time") if death else None
        if isinstance(when, dt.datetime):
            failed_at = when.timestamp()
        elif properties.timestamp is not None:
            failed_at = properties.timestamp.timestamp()
        else:
            failed_at = time.time()
    job_id = _text(headers.get(JOB_ID_HEADER))
    if job_id is None and REASON_HEADER not in headers:
        job_id = _job_id(body)  # dead-lettered by the broker: the body says
    return DeadLetter(payload=body, reason=reason, job_id=job_id, failed_at=float(failed_at))


def _job_id(body: bytes) -> str | None:
    try:
        return Job.from_json(body).id
    except MalformedJobError:
        return None


def _first_death(headers: dict[str, Any]) -> dict[str, Any] | None:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return deaths[0]
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None
