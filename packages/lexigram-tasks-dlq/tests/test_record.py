"""FailureRecord: built from a worker's JobFailure, and its stored document read back."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from lexigram.tasks import Job, JobFailure
from lexigram.tasks.dlq import FailureRecord
from lexigram.tasks.dlq.record import RECORD_VERSION

# A record as the Redis storage kept it (and `--json` printed it) before jobs had a
# "failures" field: records already stored must keep loading unchanged.
STORED = """{
  "v": 1, "id": "7d0c2f4e9b8a4f1e8c3d2b1a09f8e7d6", "revision": "5f1c9d2e",
  "task": "app.charge", "queue": "default", "reason": "ValueError: boom",
  "error_type": "ValueError", "error_message": "boom",
  "traceback": "Traceback (most recent call last):\\n  ...\\nValueError: boom\\n",
  "attempts": 3, "worker_id": "host:1:abc", "failed_at": 1700000000.0,
  "trace_context": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"},
  "source": "worker", "details": {},
  "job": {
    "tenant": "acme", "v": 1, "id": "7d0c2f4e9b8a4f1e8c3d2b1a09f8e7d6", "task": "app.charge",
    "args": [1, "two"], "kwargs": {"k": [3.5, null]}, "queue": "default", "attempt": 3,
    "max_retries": 2, "enqueued_at": 1699999990.0, "run_at": null, "priority": 0,
    "timeout": null, "dedup_key": null,
    "headers": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
  },
  "payload": null, "payload_encoding": null
}"""

# An unreadable message fed from RabbitMQ, its bytes kept as base64.
STORED_UNREADABLE = """{
  "v": 1, "id": "malformed-1", "revision": "0a1b", "task": null, "queue": "default",
  "reason": "Rejected", "error_type": "Rejected", "error_message": "not a valid job",
  "traceback": "", "attempts": 0, "worker_id": "", "failed_at": 1700000000.5,
  "trace_context": {}, "source": "rabbitmq", "details": {"source_queue": "default"},
  "job": null, "payload": "/wBub3QganNvbg==", "payload_encoding": "base64"
}"""


def test_a_record_stored_by_an_earlier_version_still_loads() -> None:
    record = FailureRecord.from_json(STORED)
    assert (record.id, record.revision, record.task, record.queue) == (
        "7d0c2f4e9b8a4f1e8c3d2b1a09f8e7d6",
        "5f1c9d2e",
        "app.charge",
        "default",
    )
    assert (record.reason, record.error_type, record.error_message) == (
        "ValueError: boom",
        "ValueError",
        "boom",
    )
    assert record.traceback.endswith("ValueError: boom\n")
    assert (record.attempts, record.worker_id, record.failed_at) == (3, "host:1:abc", 1.7e9)
    assert record.trace_context == {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
    }
    assert (record.source, record.details, record.payload) == ("worker", {}, None)
    assert record.replayable and isinstance(record.job, Job)
    assert (record.job.args, record.job.extra, record.job.failures) == (
        [1, "two"],
        {"tenant": "acme"},
        0,
    )
    assert record.raw == record.job.to_bytes()
    # Written back, it is the same document (the job now states its failures).
    expected: dict[str, Any] = json.loads(STORED)
    expected["job"]["failures"] = 0
    assert record.to_dict() == expected
    assert record.to_dict()["v"] == RECORD_VERSION


def test_an_unreadable_message_stored_as_base64_loads_with_its_bytes() -> None:
    record = FailureRecord.from_json(STORED_UNREADABLE)
    assert record.job is None and record.task is None and not record.replayable
    assert record.payload == record.raw == b"\xff\x00not json"
    assert (record.source, record.details) == ("rabbitmq", {"source_queue": "default"})
    assert record.to_dict() == json.loads(STORED_UNREADABLE)
    assert FailureRecord.from_json(record.to_json()) == record


CREATION = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def failure(job: Job | None, payload: bytes) -> JobFailure:
    return JobFailure(
        job=job,
        payload=payload,
        queue="default",
        reason="ValueError: boom",
        error_type="ValueError",
        error_message="boom",
        traceback="Traceback ...",
        attempts=3,
        worker_id="host:1:abc",
        failed_at=1_700_000_000.0,
        trace_context={"traceparent": CREATION, "tracestate": "k=v", "x-tenant": "acme"},
    )


def test_a_record_is_the_workers_failure_plus_what_keeping_it_adds() -> None:
    shared = {f.name for f in fields(JobFailure)}
    assert {f.name for f in fields(FailureRecord)} - shared == {
        "id",
        "source",
        "details",
        "revision",
    }
    job = Job(task="app.charge", queue="default", attempt=3)
    worker_failure = failure(job, job.to_bytes())
    record = FailureRecord.from_failure(worker_failure)
    assert isinstance(record, JobFailure)
    for name in shared - {"trace_context", "payload"}:
        assert getattr(record, name) == getattr(worker_failure, name), name
    assert (record.id, record.source, record.details) == (job.id, "worker", {})
    assert record.payload is None and record.raw == worker_failure.raw == job.to_bytes()
    assert record.trace_context == {"traceparent": CREATION, "tracestate": "k=v"}
    assert record.task == worker_failure.task == "app.charge"
    assert record.failed_datetime == worker_failure.failed_datetime


def test_a_record_of_an_unreadable_message_keeps_its_bytes_under_a_generated_id() -> None:
    worker_failure = failure(None, b"\xff not json")
    record = FailureRecord.from_failure(worker_failure, trace_context={"traceparent": CREATION})
    assert record.id.startswith("malformed-") and record.task is None
    assert record.payload == record.raw == worker_failure.raw == b"\xff not json"
    assert record.trace_context == {"traceparent": CREATION}
    assert FailureRecord.from_json(record.to_json()) == record
