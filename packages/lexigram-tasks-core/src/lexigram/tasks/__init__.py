"""lexigram-tasks: background jobs for asyncio over Redis, RabbitMQ, PostgreSQL and memory.

Core names are imported here; names owned by other distributions
(``RedisTaskQueue``, ``TaskScheduler``, ``DeadLetterQueue`` ...) resolve
lazily on first access, and a missing distribution gives an ``ImportError``
with the pip command that installs it.
"""

from __future__ import annotations

from pkgutil import extend_path
from typing import TYPE_CHECKING, Any

# Other distributions ship subpackages of lexigram.tasks (redis, postgres, ...);
# extend_path lets them be found from editable installs too (pypa/hatch#1462).
__path__ = extend_path(__path__, __name__)

from lexigram.tasks._version import __version__
from lexigram.tasks.control import (
    AttemptOutcome,
    CancelOutcome,
    JobAttempt,
    JobError,
    JobInfo,
    JobPage,
    JobState,
    WorkerInfo,
)
from lexigram.tasks.current import CurrentJob, NoCurrentJobError, current_job
from lexigram.tasks.errors import (
    BackendConnectionError,
    BackendNotFoundError,
    CapabilityNotSupportedError,
    ConfigurationError,
    JobCancelledError,
    JobSerializationError,
    JobTooLargeError,
    MalformedJobError,
    NoResultStoreError,
    ResultTimeoutError,
    TaskArgumentsError,
    TaskError,
    TaskFailedError,
    TaskTimeoutError,
    UnknownTaskError,
    WorkerProcessCrashed,
)
from lexigram.tasks.events import (
    TaskCancelledEvent,
    TaskCompletedEvent,
    TaskDeadLetteredEvent,
    TaskEvent,
    TaskFailedEvent,
    TaskRetryingEvent,
    TaskStartedEvent,
)
from lexigram.tasks.handle import JobHandle
from lexigram.tasks.job import Job
from lexigram.tasks.memory import MemoryTaskQueue
from lexigram.tasks.optional import import_optional as _import_optional
from lexigram.tasks.protocol import (
    BaseTaskQueue,
    Capability,
    DeadLetter,
    Delivery,
    QueueCounts,
    TaskQueueProtocol,
)
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.registry import TaskBackendRegistry
from lexigram.tasks.results import JobResult, MemoryResultStore, ResultStore
from lexigram.tasks.task import Task
from lexigram.tasks.worker import JobFailure, WorkerPool, WorkerSettings
from lexigram.tasks.workflows import chain, chord, group

if TYPE_CHECKING:
    from lexigram.tasks.dlq import DeadLetterQueue, FailureRecord
    from lexigram.tasks.postgres import PostgresTaskQueue
    from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
    from lexigram.tasks.redis import CacheBackendResultStore, RedisTaskQueue
    from lexigram.tasks.scheduler import TaskScheduler, scheduled

#: Names resolved on first use: name -> (module, distribution that ships it).
_LAZY: dict[str, tuple[str, str]] = {
    "RedisTaskQueue": ("lexigram.tasks.redis", "lexigram-tasks-redis"),
    "CacheBackendResultStore": ("lexigram.tasks.redis", "lexigram-tasks-redis"),
    "RabbitMQTaskQueue": ("lexigram.tasks.rabbitmq", "lexigram-tasks-rabbitmq"),
    "PostgresTaskQueue": ("lexigram.tasks.postgres", "lexigram-tasks-postgres"),
    "TaskScheduler": ("lexigram.tasks.scheduler", "lexigram-tasks-scheduler"),
    "scheduled": ("lexigram.tasks.scheduler", "lexigram-tasks-scheduler"),
    "DeadLetterQueue": ("lexigram.tasks.dlq", "lexigram-tasks-dlq"),
    "FailureRecord": ("lexigram.tasks.dlq", "lexigram-tasks-dlq"),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, dist = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'lexigram.tasks' has no attribute {name!r}") from None
    value = getattr(_import_optional(module_name, dist, feature=name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AttemptOutcome",
    "BackendConnectionError",
    "BackendNotFoundError",
    "BaseTaskQueue",
    "CacheBackendResultStore",
    "CancelOutcome",
    "Capability",
    "CapabilityNotSupportedError",
    "ConfigurationError",
    "CurrentJob",
    "DeadLetter",
    "DeadLetterQueue",
    "Delivery",
    "FailureRecord",
    "Job",
    "JobAttempt",
    "JobCancelledError",
    "JobError",
    "JobFailure",
    "JobHandle",
    "JobInfo",
    "JobPage",
    "JobResult",
    "JobSerializationError",
    "JobState",
    "JobTooLargeError",
    "MalformedJobError",
    "MemoryResultStore",
    "MemoryTaskQueue",
    "NoCurrentJobError",
    "NoResultStoreError",
    "PostgresTaskQueue",
    "QueueCounts",
    "RabbitMQTaskQueue",
    "RedisTaskQueue",
    "ResultStore",
    "ResultTimeoutError",
    "Task",
    "TaskArgumentsError",
    "TaskBackendRegistry",
    "TaskCancelledEvent",
    "TaskCompletedEvent",
    "TaskDeadLetteredEvent",
    "TaskError",
    "TaskEvent",
    "TaskFailedError",
    "TaskFailedEvent",
    "TaskProvider",
    "TaskQueueProtocol",
    "TaskRetryingEvent",
    "TaskScheduler",
    "TaskStartedEvent",
    "TaskTimeoutError",
    "UnknownTaskError",
    "WorkerInfo",
    "WorkerPool",
    "WorkerProcessCrashed",
    "WorkerSettings",
    "__version__",
    "chain",
    "chord",
    "current_job",
    "group",
    "scheduled",
]
