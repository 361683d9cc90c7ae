"""The statements as psycopg sends them, and the connections each enqueue takes (no server)."""

from __future__ import annotations

import pytest

from lexigram.tasks.job import Job
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres._drivers import AsyncpgRunner, async_runner, psycopg_form
from lexigram.tasks.postgres._sql import Statements


def test_placeholders_become_psycopg_ones_in_the_order_they_appear() -> None:
    sql, order = psycopg_form("SELECT $2, $1 WHERE x = $2 AND y LIKE 'a%'")
    assert sql == "SELECT %s, %s WHERE x = %s AND y LIKE 'a%%'"
    assert order == (1, 0, 1)


def test_every_statement_of_the_insert_path_renders_with_all_its_arguments() -> None:
    sql = Statements.for_schema("lexigram_tasks")
    for statement, arguments in [
        (sql.insert_one, 8),
        (sql.insert_one_plain, 7),
        (sql.insert_many, 8),
        (sql.insert_many_plain, 8),
        (sql.dedup_holders, 2),
    ]:
        rendered, order = psycopg_form(statement)
        assert "$" not in rendered
        assert sorted(set(order)) == list(range(arguments))
        assert rendered.count("%s") == len(order)


def test_an_asyncpg_connection_keeps_the_asyncpg_runner() -> None:
    connection = object()  # asyncpg's own connection or a pool's proxy: used as given
    runner = async_runner(connection)
    assert isinstance(runner, AsyncpgRunner)
    assert runner.connection is connection


def test_a_blocking_enqueue_names_the_connection_it_was_given() -> None:
    queue = PostgresTaskQueue(postgres_dsn="postgresql://localhost/db")
    job = Job(task="t", queue="default")
    with pytest.raises(TypeError, match=r"takes a psycopg \(3\) Connection, got builtins\.dict"):
        queue.enqueue_sync(job, connection={})  # type: ignore[arg-type]


def test_the_connection_is_checked_even_for_an_empty_batch() -> None:
    queue = PostgresTaskQueue(postgres_dsn="postgresql://localhost/db")
    with pytest.raises(TypeError):
        queue.enqueue_many_sync([], connection=None)  # type: ignore[arg-type]
