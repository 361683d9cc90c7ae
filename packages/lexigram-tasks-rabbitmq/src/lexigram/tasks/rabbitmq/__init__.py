"""lexigram.tasks.rabbitmq: the RabbitMQ backend of lexigram-tasks.

``RabbitMQTaskQueue`` keeps jobs in durable RabbitMQ queues as persistent
JSON messages, with publisher confirms, manual acks, a dead-letter exchange
per queue, delays through TTL queues (no broker plugin) and routing by task.
"""

from __future__ import annotations

from lexigram.tasks.rabbitmq._version import __version__
from lexigram.tasks.rabbitmq.errors import PublishRefusedError
from lexigram.tasks.rabbitmq.logs import CLIENT_LOG_FILTER
from lexigram.tasks.rabbitmq.queue import RabbitMQTaskQueue

__all__ = ["CLIENT_LOG_FILTER", "PublishRefusedError", "RabbitMQTaskQueue", "__version__"]
