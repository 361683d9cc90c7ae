"""Errors specific to the RabbitMQ backend."""

from __future__ import annotations

from lexigram.tasks.errors import TaskError


class PublishRefusedError(TaskError):
    """The broker did not accept a message: it could not route it, or nacked it.

    An enqueue that raises this stored nothing; one that returns was
    confirmed by the broker.
    """
