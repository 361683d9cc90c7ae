"""lexigram.tasks.dlq: a dead letter queue for jobs that failed for good.

``DeadLetterQueue`` receives what the workers give up on, keeps it as
``FailureRecord`` s in a storage (memory by default, Redis or PostgreSQL for
records that outlive the process, fed by RabbitMQ's own dead-letter queue
through ``RabbitMQDeadLetterFeeder``), and lets you inspect, replay and purge
them. The Redis, PostgreSQL and RabbitMQ parts load their client library only
when used (extras ``[redis]``, ``[postgres]``, ``[rabbitmq]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lexigram.tasks.dlq._version import __version__
from lexigram.tasks.dlq.errors import (
    DeadLetterError,
    NotReplayableError,
    RecordNotRemovedError,
    ReplayTargetError,
)
from lexigram.tasks.dlq.filters import FailureFilter
from lexigram.tasks.dlq.queue import DeadLetterQueue
from lexigram.tasks.dlq.record import FailureRecord
from lexigram.tasks.dlq.replay import REPLAY_COUNT_HEADER, REPLAY_OF_HEADER, ReplayReport
from lexigram.tasks.dlq.storage import DeadLetterStorage, MemoryDeadLetterStorage
from lexigram.tasks.optional import import_optional

if TYPE_CHECKING:
    from lexigram.tasks.dlq.postgres import PostgresDeadLetterStorage
    from lexigram.tasks.dlq.rabbitmq import RabbitMQDeadLetterFeeder
    from lexigram.tasks.dlq.redis import RedisDeadLetterStorage

#: Names whose module imports an optional client: name -> (module, extra).
_LAZY: dict[str, tuple[str, str]] = {
    "RedisDeadLetterStorage": ("lexigram.tasks.dlq.redis", "redis"),
    "PostgresDeadLetterStorage": ("lexigram.tasks.dlq.postgres", "postgres"),
    "RabbitMQDeadLetterFeeder": ("lexigram.tasks.dlq.rabbitmq", "rabbitmq"),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, extra = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'lexigram.tasks.dlq' has no attribute {name!r}") from None
    module = import_optional(module_name, "lexigram-tasks-dlq", extra=extra, feature=name)
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "REPLAY_COUNT_HEADER",
    "REPLAY_OF_HEADER",
    "DeadLetterError",
    "DeadLetterQueue",
    "DeadLetterStorage",
    "FailureFilter",
    "FailureRecord",
    "MemoryDeadLetterStorage",
    "NotReplayableError",
    "PostgresDeadLetterStorage",
    "RabbitMQDeadLetterFeeder",
    "RecordNotRemovedError",
    "RedisDeadLetterStorage",
    "ReplayReport",
    "ReplayTargetError",
    "__version__",
]
