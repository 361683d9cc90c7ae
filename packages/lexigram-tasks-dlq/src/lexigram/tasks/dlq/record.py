"""FailureRecord: one dead-lettered job (or unreadable message) and why it failed."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass, field, fields, replace
from typing import Any

from lexigram.tasks.errors import MalformedJobError
from lexigram.tasks.job import Job
from lexigram.tasks.worker import JobFailure

#: Version of the record document written by this package (the ``v`` field).
RECORD_VERSION = 1

#: W3C trace-context keys kept from a failure's headers.
TRACE_KEYS = ("traceparent", "tracestate")


def new_revision() -> str:
    """A fresh revision tag: tells one dead-lettering of a job id from the next."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureRecord(JobFailure):
    """A job that failed for good, kept for inspection and replay.

    It is the worker's :class:`~lexigram.tasks.JobFailure` (the same fields,
    ``task``, ``raw`` and ``failed_datetime``) plus what keeping it adds.
    ``id`` is the job's id, so ``await dlq.get(job_id)`` finds it; a message
    that was not a valid job has no id of its own and gets a generated one,
    with its bytes kept in ``payload`` (None when there is a ``job``). ``job``
    is the whole job as it last ran (``attempts`` says how many runs it had),
    so it can be replayed. ``trace_context`` holds the W3C
    ``traceparent``/``tracestate`` of the failed run; a replay links to it.
    ``revision`` changes each time the same id is dead-lettered again, so a
    replay never deletes a newer failure. ``source`` is ``"worker"`` or the
    feeder's backend, ``details`` what it knows (RabbitMQ's ``x-death``).
    Constructed by keyword.
    """

    id: str
    source: str = "worker"
    details: dict[str, Any] = field(default_factory=dict)
    revision: str = field(default_factory=new_revision)

    @property
    def replayable(self) -> bool:
        """True when the record holds a job that can be sent again."""
        return self.job is not None

    @classmethod
    def from_failure(
        cls, failure: JobFailure, trace_context: dict[str, str] | None = None
    ) -> FailureRecord:
        """The record of a worker's :class:`~lexigram.tasks.JobFailure`.

        ``trace_context`` overrides the failure's own (the job's creation
        context) when the caller knows the failed run's span.
        """
        job = failure.job
        kept = {f.name: getattr(failure, f.name) for f in fields(JobFailure)}
        kept["trace_context"] = dict(
            trace_context or {k: v for k, v in failure.trace_context.items() if k in TRACE_KEYS}
        )
        if job is not None:
            kept["payload"] = None  # the job holds the message
        return cls(id=job.id if job is not None else f"malformed-{uuid.uuid4().hex}", **kept)

    def renewed(self) -> FailureRecord:
        """The same record with a fresh revision (it was dead-lettered again)."""
        return replace(self, revision=new_revision())

    # -- serialisation -----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document (what the Redis storage keeps and ``--json`` prints)."""
        payload: str | None = None
        encoding: str | None = None
        if self.payload is not None:
            try:
                payload, encoding = self.payload.decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                payload, encoding = base64.b64encode(self.payload).decode("ascii"), "base64"
        return {
            "v": RECORD_VERSION,
            "id": self.id,
            "revision": self.revision,
            "task": self.task,
            "queue": self.queue,
            "reason": self.reason,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "traceback": self.traceback,
            "attempts": self.attempts,
            "worker_id": self.worker_id,
            "failed_at": self.failed_at,
            "trace_context": self.trace_context,
            "source": self.source,
            "details": self.details,
            "job": self.job.to_dict() if self.job is not None else None,
            "payload": payload,
            "payload_encoding": encoding,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> FailureRecord:
        """Rebuild a record from :meth:`to_dict`'s document."""
        job_doc = doc.get("job")
        return cls(
            id=str(doc["id"]),
            job=Job.from_dict(job_doc) if job_doc is not None else None,
            queue=str(doc["queue"]),
            reason=str(doc.get("reason", "")),
            error_type=str(doc.get("error_type", "")),
            error_message=str(doc.get("error_message", "")),
            traceback=str(doc.get("traceback", "")),
            attempts=int(doc.get("attempts", 0)),
            worker_id=str(doc.get("worker_id", "")),
            failed_at=float(doc["failed_at"]),
            trace_context=dict(doc.get("trace_context") or {}),
            payload=_decode_payload(doc.get("payload"), doc.get("payload_encoding")),
            source=str(doc.get("source", "worker")),
            details=dict(doc.get("details") or {}),
            revision=str(doc.get("revision") or new_revision()),
        )

    @classmethod
    def from_json(cls, data: str | bytes) -> FailureRecord:
        return cls.from_dict(json.loads(data))


def _decode_payload(payload: Any, encoding: Any) -> bytes | None:
    if payload is None:
        return None
    if encoding == "base64":
        try:
            return base64.b64decode(str(payload), validate=True)
        except binascii.Error as exc:
            raise MalformedJobError(f"record payload is not valid base64: {exc}") from exc
    return str(payload).encode("utf-8")
