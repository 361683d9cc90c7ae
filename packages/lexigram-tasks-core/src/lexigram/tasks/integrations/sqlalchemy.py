"""Transactional enqueue on a SQLAlchemy connection or session
(``pip install "lexigram-tasks[sqlalchemy]"``).

``await enqueue(session, task, *args)`` takes an ``AsyncSession`` or
``AsyncConnection`` on asyncpg or psycopg 3; ``enqueue_sync(session, task,
*args)`` takes a ``Session`` or ``Connection`` on psycopg 3. The job row is
written on the session's own driver connection, in its transaction: it
exists if and only if that transaction commits. The task must be sent to a
:class:`~lexigram.tasks.postgres.PostgresTaskQueue` on the same database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from lexigram.tasks.integrations._transactional import (
    enqueue_on,
    enqueue_sync_on,
    in_transaction,
)
from lexigram.tasks.optional import import_optional

import_optional(
    "sqlalchemy.ext.asyncio",
    "lexigram-tasks-core",
    extra="sqlalchemy",
    feature="lexigram.tasks.integrations.sqlalchemy",
)
from sqlalchemy.engine import Connection  # noqa: E402  (after the friendlier check above)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

if TYPE_CHECKING:
    from lexigram.tasks.handle import JobHandle
    from lexigram.tasks.task import BoundTask, Task

__all__ = ["enqueue", "enqueue_sync"]

P = ParamSpec("P")
R = TypeVar("R")

#: Run through SQLAlchemy when the driver has no transaction open yet: it
#: begins SQLAlchemy's transaction and the driver's (asyncpg sends BEGIN
#: only with the first statement), so the job joins the one that commits.
_BEGIN = "SELECT 1"


async def enqueue(
    connection: AsyncSession | AsyncConnection,
    task: Task[P, R] | BoundTask[P, R],
    /,
    *args: P.args,
    **kwargs: P.kwargs,
) -> JobHandle[R]:
    """Enqueue ``task(*args, **kwargs)`` in the transaction of an async session or connection."""
    if isinstance(connection, AsyncSession):
        connection = await connection.connection()
    if not isinstance(connection, AsyncConnection):
        raise TypeError(
            f"expected an AsyncSession or AsyncConnection, got {type(connection).__name__} "
            "(use enqueue_sync for a Session or Connection)"
        )
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    if not in_transaction(driver):
        await connection.exec_driver_sql(_BEGIN)
    return await enqueue_on(driver, task, args, kwargs)


def enqueue_sync(
    connection: Session | Connection,
    task: Task[P, R] | BoundTask[P, R],
    /,
    *args: P.args,
    **kwargs: P.kwargs,
) -> JobHandle[R]:
    """Enqueue ``task(*args, **kwargs)`` in the transaction of a session or connection
    on psycopg 3 (``postgresql+psycopg://``); needs no event loop."""
    if isinstance(connection, Session):
        connection = connection.connection()
    if not isinstance(connection, Connection):
        raise TypeError(
            f"expected a Session or Connection, got {type(connection).__name__} "
            "(use await enqueue(...) for an AsyncSession or AsyncConnection)"
        )
    driver: Any = connection.connection.driver_connection
    if type(driver).__module__.split(".")[0] == "psycopg" and not in_transaction(driver):
        connection.exec_driver_sql(_BEGIN)
    return enqueue_sync_on(driver, task, args, kwargs)
