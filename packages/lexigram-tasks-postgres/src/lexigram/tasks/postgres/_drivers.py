"""The database drivers an enqueue can write through: asyncpg, and psycopg 3 (async and sync).

The insert path (:mod:`._insert`) is written once, as a plan that yields
:class:`Request` objects; a runner sends each to its driver and hands the
rows back. The statements keep asyncpg's ``$n`` placeholders (the one source
of SQL, :mod:`._sql`); the psycopg runners render them to psycopg's ``%s``
with :func:`psycopg_form`. psycopg is imported only when a psycopg
connection is given: it is no dependency of this package.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import asyncpg
    import psycopg

#: What a statement sends back: its rows when asked for, else None.
Rows = list[Sequence[Any]] | None

_PLACEHOLDER = re.compile(r"\$(\d+)")


@dataclass(frozen=True, slots=True)
class Request:
    """One statement of an insert plan: SQL with ``$n`` placeholders, its arguments,
    and whether its rows are wanted."""

    sql: str
    args: tuple[Any, ...]
    rows: bool = True


class AsyncRunner(Protocol):
    """Runs requests on an async connection, inside whatever transaction it has open."""

    async def run(self, request: Request) -> Rows: ...

    def atomic(self) -> AbstractAsyncContextManager[Any]:
        """A transaction, or a savepoint inside the one already open."""
        ...


class SyncRunner(Protocol):
    """Runs requests on a blocking connection, inside whatever transaction it has open."""

    def run(self, request: Request) -> Rows: ...

    def atomic(self) -> AbstractContextManager[Any]:
        """A transaction, or a savepoint inside the one already open."""
        ...


@functools.lru_cache(maxsize=64)
def psycopg_form(sql: str) -> tuple[str, tuple[int, ...]]:
    """``sql`` with psycopg's ``%s`` placeholders, and which argument each one takes.

    ``$n`` may repeat or come out of order; a literal ``%`` is escaped. (Our
    statements hold no ``$`` inside string literals, which this would misread.)
    """
    order = tuple(int(n) - 1 for n in _PLACEHOLDER.findall(sql))
    return _PLACEHOLDER.sub("%s", sql.replace("%", "%%")), order


def _psycopg_args(order: tuple[int, ...], args: tuple[Any, ...]) -> list[Any]:
    return [args[i] for i in order]


class AsyncpgRunner:
    __slots__ = ("connection",)

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def run(self, request: Request) -> Rows:
        if request.rows:
            rows: list[Sequence[Any]] = await self.connection.fetch(request.sql, *request.args)
            return rows
        await self.connection.execute(request.sql, *request.args)
        return None

    def atomic(self) -> AbstractAsyncContextManager[Any]:
        transaction: AbstractAsyncContextManager[Any] = self.connection.transaction()
        return transaction


class PsycopgAsyncRunner:
    __slots__ = ("connection",)

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self.connection = connection

    async def run(self, request: Request) -> Rows:
        import psycopg

        sql, order = psycopg_form(request.sql)
        # A plain cursor of our own: server-side binding whatever cursor_factory
        # the application set (Django's, for one, binds on the client).
        async with psycopg.AsyncCursor(self.connection) as cursor:
            await cursor.execute(sql.encode(), _psycopg_args(order, request.args))
            if request.rows:
                return list(await cursor.fetchall())
        return None

    def atomic(self) -> AbstractAsyncContextManager[Any]:
        return self.connection.transaction()


class PsycopgRunner:
    __slots__ = ("connection",)

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection

    def run(self, request: Request) -> Rows:
        import psycopg

        sql, order = psycopg_form(request.sql)
        with psycopg.Cursor(self.connection) as cursor:
            cursor.execute(sql.encode(), _psycopg_args(order, request.args))
            if request.rows:
                return list(cursor.fetchall())
        return None

    def atomic(self) -> AbstractContextManager[Any]:
        return self.connection.transaction()


def _is_psycopg(connection: object) -> bool:
    return type(connection).__module__.split(".")[0] == "psycopg"


def async_runner(connection: Any) -> AsyncRunner:
    """The runner for an asyncpg connection (or pool proxy) or a ``psycopg.AsyncConnection``."""
    if not _is_psycopg(connection):
        return AsyncpgRunner(connection)
    import psycopg

    if isinstance(connection, psycopg.AsyncConnection):
        return PsycopgAsyncRunner(connection)
    if isinstance(connection, psycopg.Connection):
        raise TypeError(
            "a blocking psycopg.Connection cannot be awaited on: use "
            "PostgresTaskQueue.enqueue_sync(job, connection=conn), or "
            "lexigram.tasks.integrations.psycopg.enqueue_sync(conn, task, ...)"
        )
    raise TypeError(f"expected a psycopg AsyncConnection, got {type(connection).__name__}")


def sync_runner(connection: Any) -> SyncRunner:
    """The runner for a blocking ``psycopg.Connection``; anything else is a clear TypeError."""
    if _is_psycopg(connection):
        import psycopg

        if isinstance(connection, psycopg.Connection):
            return PsycopgRunner(connection)
        if isinstance(connection, psycopg.AsyncConnection):
            raise TypeError(
                "a psycopg.AsyncConnection needs the async enqueue: "
                "await queue.enqueue(job, connection=conn)"
            )
    raise TypeError(
        "enqueue_sync takes a psycopg (3) Connection, got "
        f"{type(connection).__module__}.{type(connection).__name__}"
        " (asyncpg and psycopg.AsyncConnection go through the async enqueue)"
    )
