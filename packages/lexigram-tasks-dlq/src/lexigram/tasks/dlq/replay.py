"""Turning a failure record back into a job, and finding the queue it goes to."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TypeAlias

from opentelemetry.trace import Tracer

from lexigram.tasks.dlq.errors import NotReplayableError, ReplayTargetError
from lexigram.tasks.dlq.record import TRACE_KEYS, FailureRecord
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Capability, TaskQueueProtocol
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.redact import redact_url
from lexigram.tasks.results import ResultStore
from lexigram.tasks.worker import UNKNOWN_SINCE_FIELD

#: Where replayed jobs go: a provider (each record to the backend serving its
#: queue), one queue, or queues by queue name.
ReplayTarget: TypeAlias = TaskProvider | TaskQueueProtocol | Mapping[str, TaskQueueProtocol]

#: Header naming the record a replayed job came from.
REPLAY_OF_HEADER = "lexigram-replay-of"
#: Header counting how many times a job has been replayed.
REPLAY_COUNT_HEADER = "lexigram-replay-count"

_ID_NAMESPACE = uuid.UUID("6c0bd4a3-5d9e-4f59-9a57-2f0d7a1c9e21")


def replay_job_id(record: FailureRecord) -> str:
    """The id a record's replayed job gets: the same for every replay of one revision,
    so a repeated replay (after a crash before the record was removed) sends the same job."""
    return uuid.uuid5(_ID_NAMESPACE, f"{record.id}:{record.revision}").hex


def replay_dedup_key(record: FailureRecord) -> str:
    return f"lexigram-dlq:{record.id}:{record.revision}"


def replay_job(record: FailureRecord, *, unique: bool) -> Job:
    """The job a replay sends: the original, with attempts reset, to run now.

    It gets a new id (:func:`replay_job_id`) so its result is not confused
    with the failure stored under the old one, headers naming the record, and
    - when the backend has unique keys and the job has no dedup key of its
    own - a dedup key that makes a repeated replay of the same record find the
    pending job instead of adding a second one. Old trace headers are
    dropped; the replay's span injects new ones.
    """
    job = record.job
    if job is None:
        raise NotReplayableError(
            f"record {record.id} holds a message that is not a valid job "
            f"({record.error_message or record.reason}); there is nothing to replay"
        )
    headers = {k: v for k, v in job.headers.items() if k not in TRACE_KEYS}
    headers[REPLAY_OF_HEADER] = record.id
    headers[REPLAY_COUNT_HEADER] = str(_int(job.headers.get(REPLAY_COUNT_HEADER)) + 1)
    dedup_key = job.dedup_key
    if dedup_key is None and unique:
        dedup_key = replay_dedup_key(record)
    return replace(
        job,
        id=replay_job_id(record),
        attempt=0,
        failures=0,
        enqueued_at=time.time(),
        run_at=None,
        dedup_key=dedup_key,
        headers=headers,
        # A fresh start: the unknown-task grace begins again too.
        extra={k: v for k, v in job.extra.items() if k != UNKNOWN_SINCE_FIELD},
    )


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


@dataclass(slots=True)
class Targets:
    """The queues a replay may use, by queue name, and what the handles need."""

    queues: dict[str, TaskQueueProtocol]
    tracer: Tracer
    result_store: ResultStore | None = None
    provider: TaskProvider | None = None

    @classmethod
    def resolve(cls, target: ReplayTarget, default_tracer: Tracer) -> Targets:
        if isinstance(target, TaskProvider):
            queues: dict[str, TaskQueueProtocol] = {}
            for backend in target.backends.values():
                queues.setdefault(backend.queue_name, backend)
            return cls(queues, target.telemetry.tracer, target.result_store, target)
        if isinstance(target, Mapping):
            return cls(dict(target), default_tracer)
        return cls({target.queue_name: target}, default_tracer)

    def queue_for(self, record: FailureRecord) -> TaskQueueProtocol:
        queue = self.queues.get(record.queue)
        if queue is None:
            known = ", ".join(repr(q) for q in sorted(self.queues)) or "none"
            raise ReplayTargetError(
                f"record {record.id} failed on queue {record.queue!r}, but the replay target "
                f"has no queue of that name (queues: {known})"
            )
        return queue

    @staticmethod
    def unique(queue: TaskQueueProtocol) -> bool:
        return Capability.UNIQUE in queue.capabilities

    async def connect(self) -> None:
        if self.provider is not None:
            await self.provider.connect()
            return
        for queue in self.queues.values():
            await queue.connect()

    def describe(self) -> str:
        return ", ".join(redact_url(repr(q)) for q in self.queues.values())


@dataclass(slots=True)
class ReplayReport:
    """What a bulk replay did, by record id."""

    #: record id -> id of the job now on the queue
    replayed: dict[str, str] = field(default_factory=dict)
    #: record id -> why it was left alone (not a valid job, no queue for it)
    skipped: dict[str, str] = field(default_factory=dict)
    #: record id -> the error; the record is kept
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.replayed) + len(self.skipped) + len(self.failed)

    def __str__(self) -> str:
        return (
            f"replayed {len(self.replayed)}, skipped {len(self.skipped)}, failed {len(self.failed)}"
        )
