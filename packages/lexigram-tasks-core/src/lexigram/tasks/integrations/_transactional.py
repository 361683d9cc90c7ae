"""A job written in the caller's database transaction, shared by the psycopg,
SQLAlchemy and Django integrations.

Each integration finds the driver connection under its own objects and
hands it here. The job is built, routed and traced by the provider
(``Task.job``, ``enqueue_job`` or ``send_job_with``), so these functions only
choose the connection: an async one is bound to the task's
:class:`~lexigram.tasks.postgres.PostgresTaskQueue` with ``queue.using``, a
blocking one is written through ``queue.enqueue_sync``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from lexigram.tasks.handle import JobHandle
from lexigram.tasks.job import Job
from lexigram.tasks.optional import import_optional
from lexigram.tasks.protocol import TaskQueueProtocol
from lexigram.tasks.task import BoundTask, Task

if TYPE_CHECKING:
    from lexigram.tasks.postgres import PostgresTaskQueue

P = ParamSpec("P")
R = TypeVar("R")


def routed(task: Task[P, R] | BoundTask[P, R]) -> tuple[Task[P, R], str | None]:
    """The registered task behind ``task``, and the backend it is sent to (None: the default)."""
    if isinstance(task, BoundTask):
        # BoundTask keeps its options private; the integrations live in core beside it.
        base = task._task
        return base, task._options.backend or base.backend
    if isinstance(task, Task):
        return task, task.backend
    raise TypeError(
        f"expected a task registered with @provider.task (or task.options(...)), got {task!r}"
    )


def postgres_queue(queue: TaskQueueProtocol, task_name: str) -> PostgresTaskQueue:
    """``queue`` when it is a PostgresTaskQueue; otherwise a TypeError saying what to use."""
    postgres = import_optional(
        "lexigram.tasks.postgres", "lexigram-tasks-postgres", feature="transactional enqueue"
    )
    if isinstance(queue, postgres.PostgresTaskQueue):
        return cast("PostgresTaskQueue", queue)
    raise TypeError(
        f"task {task_name!r} is sent to {queue!r}: a job can join a database transaction "
        "only on a PostgresTaskQueue (on other backends, enqueue after the commit)"
    )


async def enqueue_on(
    connection: Any,
    task: Task[P, R] | BoundTask[P, R],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> JobHandle[R]:
    """``task.enqueue(*args, **kwargs)`` on an async driver connection, in its transaction."""
    base, backend = routed(task)
    queue = postgres_queue(base.provider._route(base.name, backend), base.name)
    with queue.using(connection):
        return await task.enqueue(*args, **kwargs)


def enqueue_sync_on(
    connection: Any,
    task: Task[P, R] | BoundTask[P, R],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> JobHandle[R]:
    """The same on a blocking psycopg connection: no event loop, no connected provider."""
    base, backend = routed(task)
    job = task.job(*args, **kwargs)

    def store(queue: TaskQueueProtocol, job: Job) -> str:
        return postgres_queue(queue, base.name).enqueue_sync(job, connection=connection)

    return cast("JobHandle[R]", base.provider.send_job_with(job, store, backend=backend))


def in_transaction(driver: Any) -> bool:
    """Whether an asyncpg or psycopg connection has a transaction open."""
    if hasattr(driver, "is_in_transaction"):  # asyncpg
        return bool(driver.is_in_transaction())
    import psycopg

    return bool(driver.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)
