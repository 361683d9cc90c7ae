"""Errors specific to the RabbitMQ backend."""

from __future__ import annotations

import aiormq

from lexigram.tasks.errors import TaskError


class PublishRefusedError(TaskError):
    """The broker did not accept a message: it could not route it, or nacked it.

    An enqueue that raises this stored nothing; one that returns was
    confirmed by the broker.
    """


#: What a lost connection or channel raises in aio-pika and aiormq.
CONNECTION_ERRORS = (
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
)
