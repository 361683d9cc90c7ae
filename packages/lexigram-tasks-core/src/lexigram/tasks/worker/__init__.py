"""The worker: :class:`WorkerPool` runs jobs from one queue with bounded concurrency."""

from __future__ import annotations

from lexigram.tasks.worker._settings import WorkerSettings
from lexigram.tasks.worker._support import DeadLetterSink, JobFailure
from lexigram.tasks.worker.pool import GLOBAL_RATE_KEY, UNKNOWN_SINCE_FIELD, WorkerPool

__all__ = [
    "GLOBAL_RATE_KEY",
    "UNKNOWN_SINCE_FIELD",
    "DeadLetterSink",
    "JobFailure",
    "WorkerPool",
    "WorkerSettings",
]
