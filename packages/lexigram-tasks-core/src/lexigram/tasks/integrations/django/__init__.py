"""Enqueue from Django (``pip install "lexigram-tasks[django]"``).

Two ways to tie a job to a ``transaction.atomic()`` block:

- :func:`enqueue_on_commit` sends the job once the transaction commits
  (``transaction.on_commit``), on any backend; a rollback sends nothing.
  Between the commit and the send, a crash loses the job.
- :func:`enqueue_in_transaction` writes the job row in the transaction
  itself, through Django's own psycopg 3 connection, so it cannot be lost:
  a rollback leaves no job, the commit makes it visible to workers.
  PostgreSQL only, with the task sent to a
  :class:`~lexigram.tasks.postgres.PostgresTaskQueue` on the same database.

Both are plain functions for sync code (views, signals, commands). From an
async view, run the function holding ``transaction.atomic()`` with
``sync_to_async``, as Django requires for transactions anyway.
:class:`Database` does the same on a database other than ``"default"``.
"""

from __future__ import annotations

from typing import Any, ParamSpec, TypeVar

from lexigram.tasks.handle import JobHandle
from lexigram.tasks.integrations._transactional import enqueue_sync_on, routed
from lexigram.tasks.optional import import_optional
from lexigram.tasks.task import BoundTask, Task

import_optional(
    "django.db", "lexigram-tasks-core", extra="django", feature="lexigram.tasks.integrations.django"
)
from django.db import (  # type: ignore[import-untyped]  # noqa: E402
    DEFAULT_DB_ALIAS,
    connections,
    transaction,
)

from lexigram.tasks.integrations.django._bridge import run_sync, shutdown  # noqa: E402

__all__ = ["Database", "enqueue_in_transaction", "enqueue_on_commit", "shutdown"]

P = ParamSpec("P")
R = TypeVar("R")


class Database:
    """The two enqueues, on the database Django knows as ``alias``."""

    def __init__(self, alias: str = DEFAULT_DB_ALIAS) -> None:
        self.alias = alias

    def __repr__(self) -> str:
        return f"Database({self.alias!r})"

    def enqueue_on_commit(
        self, task: Task[P, R] | BoundTask[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> None:
        """Send ``task(*args, **kwargs)`` when the current transaction commits.

        The job is built now, so bad arguments raise here, in the request;
        outside ``atomic()`` it is sent at once. An error sending it after
        the commit propagates from the block's exit, as Django does for
        ``on_commit`` callbacks.
        """
        base, backend = routed(task)
        job = task.job(*args, **kwargs)
        provider = base.provider

        def send() -> None:
            run_sync(provider, lambda: provider.enqueue_job(job, backend=backend))

        transaction.on_commit(send, using=self.alias)

    def enqueue_in_transaction(
        self, task: Task[P, R] | BoundTask[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> JobHandle[R]:
        """Write ``task(*args, **kwargs)`` in the current transaction (PostgreSQL, psycopg 3).

        Outside ``atomic()`` the job is committed at once, like any statement
        in Django's autocommit mode.
        """
        connection = connections[self.alias]
        if connection.vendor != "postgresql":
            raise TypeError(
                f"database {self.alias!r} is {connection.vendor}: a job can join a "
                "transaction only on PostgreSQL (use enqueue_on_commit elsewhere)"
            )
        connection.ensure_connection()
        driver: Any = connection.connection
        if type(driver).__module__.split(".")[0] != "psycopg":
            raise TypeError(
                f"database {self.alias!r} uses {type(driver).__module__.split('.')[0]}: "
                'enqueue_in_transaction needs psycopg 3 (pip install "psycopg[binary]")'
            )
        return enqueue_sync_on(driver, task, args, kwargs)


_default = Database()
enqueue_on_commit = _default.enqueue_on_commit
enqueue_in_transaction = _default.enqueue_in_transaction
