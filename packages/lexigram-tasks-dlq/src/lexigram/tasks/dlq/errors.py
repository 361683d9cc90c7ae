"""Errors of the dead letter queue; all derive from core's :class:`~lexigram.tasks.TaskError`."""

from __future__ import annotations

from lexigram.tasks.errors import TaskError


class DeadLetterError(TaskError):
    """Base class of the dead letter queue's errors."""


class NotReplayableError(DeadLetterError):
    """The record holds a message that was not a valid job, so there is nothing to replay."""


class ReplayTargetError(DeadLetterError):
    """No queue to replay onto: no target was given, or it has no queue of the record's name."""


class RecordNotRemovedError(DeadLetterError):
    """The job was enqueued again but its record could not be removed.

    The record stays, so nothing is lost; replaying it again is safe on
    backends with unique keys (the repeat finds the pending job). ``job_id``
    is the id the replayed job was enqueued under.
    """

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id
