"""Transactional enqueue on a psycopg 3 connection (``pip install "lexigram-tasks[psycopg]"``).

``await enqueue(aconn, task, *args)`` and ``enqueue_sync(conn, task, *args)``
write the job with the same INSERT as every other enqueue, on your
connection and inside its open transaction: a rollback leaves no job, the
commit makes it visible to workers (and wakes them). The task must be sent
to a :class:`~lexigram.tasks.postgres.PostgresTaskQueue` on that database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from lexigram.tasks.integrations._transactional import enqueue_on, enqueue_sync_on

if TYPE_CHECKING:
    import psycopg

    from lexigram.tasks.handle import JobHandle
    from lexigram.tasks.task import BoundTask, Task

__all__ = ["enqueue", "enqueue_sync"]

P = ParamSpec("P")
R = TypeVar("R")


async def enqueue(
    connection: psycopg.AsyncConnection[Any],
    task: Task[P, R] | BoundTask[P, R],
    /,
    *args: P.args,
    **kwargs: P.kwargs,
) -> JobHandle[R]:
    """Enqueue ``task(*args, **kwargs)`` in ``connection``'s transaction."""
    return await enqueue_on(connection, task, args, kwargs)


def enqueue_sync(
    connection: psycopg.Connection[Any],
    task: Task[P, R] | BoundTask[P, R],
    /,
    *args: P.args,
    **kwargs: P.kwargs,
) -> JobHandle[R]:
    """Enqueue ``task(*args, **kwargs)`` in a blocking connection's transaction.

    Needs no event loop and no connected provider. Returns the job's handle
    (its ``id``; awaiting its result needs async code).
    """
    return enqueue_sync_on(connection, task, args, kwargs)
