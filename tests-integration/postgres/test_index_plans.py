"""Every inspection and retention statement reads an index, on a table of many finished rows.

Migration 0012 replaced three indexes of finished rows with one, keyed
(queue_name, status, state, finished_at, id); the statements that used the
three read ranges of it instead. The plans are those of the statements the
queue really sends (recorded by a stand-in connection), explained on the
server, without statistics and then after ANALYZE.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest_asyncio

from lexigram.tasks.control import JobState
from lexigram.tasks.job import Job
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres.migrate import available_migrations, quote_ident
from lexigram.tasks.postgres.schema import run_migrations
from lexigram.tasks.testing import collect

FINISHED_ROWS = 200_000


class _Recorder:
    """A connection that records each statement and its arguments, and answers nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, statement: str, *args: Any) -> list[Any]:
        self.calls.append((statement, args))
        return []

    async def fetchrow(self, statement: str, *args: Any) -> None:
        self.calls.append((statement, args))

    async def execute(self, statement: str, *args: Any) -> str:
        self.calls.append((statement, args))
        return "DELETE 0"


async def _sent(queue: PostgresTaskQueue, call: Callable[[], Awaitable[object]]) -> list[Any]:
    """The statements (with their arguments) ``call`` sends through the queue."""
    recorder = _Recorder()

    async def run(operation: Callable[[Any], Awaitable[Any]], **_: object) -> Any:
        return await operation(recorder)

    queue._run = run  # type: ignore[method-assign]
    try:
        await call()
    finally:
        del queue._run
    return recorder.calls


@pytest_asyncio.fixture
async def queue(postgres_dsn: str, pg_schema: str) -> AsyncIterator[PostgresTaskQueue]:
    """A queue whose table holds 200,000 finished rows of it (and as many of another
    queue), in every finished state, and a few ready, retrying and running jobs."""
    queue = PostgresTaskQueue(
        postgres_dsn=postgres_dsn,
        queue_name=f"plans_{uuid.uuid4().hex[:8]}",
        schema=pg_schema,
        keep_finished=86400.0,
        keep_failed=86400.0,
        cleanup_interval=3600.0,
    )
    async with queue:
        connection = await asyncpg.connect(postgres_dsn)
        try:
            await connection.execute(
                f"INSERT INTO {quote_ident(pg_schema)}.jobs"
                " (queue_name, job_id, task, status, state, payload, finished_at)"
                " SELECT CASE WHEN n % 2 = 0 THEN $1 ELSE 'other' END, md5(n::text), 't',"
                " CASE WHEN n % 10 < 2 THEN 'failed' ELSE 'done' END,"
                " CASE WHEN n % 10 = 0 THEN 'dead' WHEN n % 10 = 1 THEN 'failed'"
                " WHEN n % 10 = 2 THEN 'cancelled' WHEN n % 10 = 3 THEN 'failed'"
                " ELSE 'succeeded' END,"
                " '{}', now() - make_interval(secs => n)"
                " FROM generate_series(1, $2) AS n",
                queue.queue_name,
                FINISHED_ROWS * 2,
            )
        finally:
            await connection.close()
        await queue.enqueue_many([Job(task="t", queue=queue.queue_name) for _ in range(20)])
        for delivery in await collect(queue, 2, lease_seconds=60, batch=2):
            delivery.outcome = JobState.RETRYING
            await queue.nack(delivery, requeue=True, delay=60)
        await collect(queue, 3, lease_seconds=60, batch=3)
        yield queue


def _listings(
    queue: PostgresTaskQueue, *, analyzed: bool
) -> dict[str, Callable[[], Awaitable[object]]]:
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "get_job": lambda: queue.get_job("0" * 32),
        "dead letters": queue.dead_letters,
        "retention cleanup": queue.delete_expired,
    }
    if analyzed:
        # Every job by row id: without statistics the planner takes a queue's
        # rows for a few and sorts the table instead (as before migration 0012).
        calls["list_jobs()"] = queue.list_jobs
    for state in JobState:
        calls[f"list_jobs({state.value})"] = functools.partial(queue.list_jobs, state=state)
        calls[f"list_jobs({state.value}, task)"] = functools.partial(
            queue.list_jobs, state=state, task="t"
        )
    return calls


#: The index each call must read (besides any other it reads).
_EXPECTED = {
    "get_job": "jobs_job_id_idx",
    "dead letters": "jobs_finished_idx",
    "retention cleanup": "jobs_finished_idx",
    "list_jobs()": "jobs_pkey",
    "queued": "jobs_ready_idx",
    "scheduled": "jobs_ready_idx",
    "retrying": "jobs_retrying_idx",
    "running": "jobs_running_idx",
    "succeeded": "jobs_finished_idx",
    "failed": "jobs_finished_idx",
    "cancelled": "jobs_finished_idx",
    "dead": "jobs_finished_idx",
}


def _expected(name: str) -> str:
    if name.startswith("list_jobs(") and name != "list_jobs()":
        return _EXPECTED[name[len("list_jobs(") :].split(",")[0].rstrip(")")]
    return _EXPECTED[name]


async def _check_plans(
    queue: PostgresTaskQueue, admin: asyncpg.Connection, *, analyzed: bool
) -> None:
    for name, call in _listings(queue, analyzed=analyzed).items():
        sent = await _sent(queue, call)
        assert sent, name
        plans = []
        for statement, args in sent:
            async with admin.transaction():  # EXPLAIN runs nothing; rolled back all the same
                rows = await admin.fetch(f"EXPLAIN (COSTS OFF) {statement}", *args)
            plans.append("\n".join(row[0] for row in rows))
        plan = "\n".join(plans)
        assert "Seq Scan" not in plan, f"{name}:\n{plan}"
        assert f"using {_expected(name)}" in plan or f"on {_expected(name)}" in plan, (
            f"{name}:\n{plan}"
        )
    rows = await admin.fetch(f"EXPLAIN (COSTS OFF) {queue._sql.counts}", queue.queue_name)
    counts = "\n".join(row[0] for row in rows)
    assert "Seq Scan" not in counts and "jobs_finished_idx" in counts, counts


async def test_every_listing_and_cleanup_reads_an_index(
    queue: PostgresTaskQueue, admin: asyncpg.Connection, pg_schema: str
) -> None:
    await _check_plans(queue, admin, analyzed=False)  # as autovacuum may leave it
    await admin.execute(f"ANALYZE {quote_ident(pg_schema)}.jobs")
    await _check_plans(queue, admin, analyzed=True)


# -- the same answers as the three indexes gave --------------------------------


@pytest_asyncio.fixture
async def small(postgres_dsn: str, pg_schema: str) -> AsyncIterator[PostgresTaskQueue]:
    queue = PostgresTaskQueue(
        postgres_dsn=postgres_dsn,
        queue_name=f"ended_{uuid.uuid4().hex[:8]}",
        schema=pg_schema,
        keep_finished=60.0,
        keep_failed=60.0,
        cleanup_batch_size=2,
        cleanup_interval=3600.0,
    )
    async with queue:
        yield queue


async def _finished(
    admin: asyncpg.Connection,
    schema: str,
    queue: str,
    rows: list[tuple[str, str, str | None, float]],
) -> None:
    """Rows (job id, status, state, seconds since they finished) of ``queue``, as a
    worker or a foreign producer would have left them."""
    await admin.executemany(
        f"INSERT INTO {quote_ident(schema)}.jobs"
        " (queue_name, job_id, task, status, state, payload, finished_at, failure_reason)"
        " VALUES ($1, $2, 't', $3, $4, convert_to($5, 'UTF8'),"
        " now() - make_interval(secs => $6), 'boom')",
        [
            (queue, job_id, status, state, f'{{"id": "{job_id}", "task": "t"}}', ago)
            for job_id, status, state, ago in rows
        ],
    )


async def test_dead_letters_come_oldest_first_whatever_their_state(
    small: PostgresTaskQueue, admin: asyncpg.Connection, pg_schema: str
) -> None:
    await _finished(
        admin,
        pg_schema,
        small.queue_name,
        [
            ("d3", "failed", "dead", 30),
            ("f1", "failed", "failed", 50),
            ("done", "done", "failed", 45),  # acked as failed: not a dead letter
            ("n2", "failed", None, 40),  # a row written by hand, without a state
            ("f4", "failed", "failed", 20),
            ("d5", "failed", "dead", 10),
        ],
    )
    letters = await small.dead_letters()
    assert [d.job_id for d in letters] == ["f1", "n2", "d3", "f4", "d5"]
    assert [d.job_id for d in await small.dead_letters(limit=2)] == ["f1", "n2"]
    assert (await small.counts()).failed == 5


async def test_a_finished_state_lists_its_rows_of_both_statuses_in_order(
    small: PostgresTaskQueue, admin: asyncpg.Connection, pg_schema: str
) -> None:
    await _finished(
        admin,
        pg_schema,
        small.queue_name,
        [
            ("a", "failed", "failed", 50),  # dead-lettered
            ("b", "done", "failed", 40),  # acked, ended failed
            ("c", "failed", "failed", 30),
            ("x", "failed", "dead", 25),
            ("d", "done", "failed", 20),
        ],
    )
    seen: list[str] = []
    cursor = None
    while True:
        page = await small.list_jobs(state=JobState.FAILED, limit=2, cursor=cursor)
        seen += [job.id for job in page.jobs]
        if page.cursor is None:
            break
        cursor = page.cursor
    assert seen == ["a", "b", "c", "d"]
    dead = await small.list_jobs(state=JobState.DEAD, task="t")
    assert [job.id for job in dead.jobs] == ["x"]


async def test_cleanup_deletes_the_expired_rows_of_every_state_and_no_other(
    small: PostgresTaskQueue, admin: asyncpg.Connection, pg_schema: str
) -> None:
    old, recent = 120.0, 5.0
    rows = [
        (f"{status}-{state}-{age}", status, state, age)
        for status, states in (
            ("done", ("succeeded", "cancelled", "failed", None)),
            ("failed", ("failed", "dead", None)),
        )
        for state in states
        for age in (old, recent)
    ]
    await _finished(admin, pg_schema, small.queue_name, rows)
    await _finished(admin, pg_schema, "someone_else", [("other", "done", "succeeded", old)])

    assert await small.delete_expired() == 7  # in batches of 2
    left = await admin.fetch(
        f"SELECT job_id FROM {quote_ident(pg_schema)}.jobs"
        " WHERE queue_name = ANY($1::text[]) ORDER BY job_id",
        [small.queue_name, "someone_else"],
    )
    assert [row["job_id"] for row in left] == sorted(
        ["other", *(job_id for job_id, _, _, age in rows if age == recent)]
    )


async def test_0012_upgrades_a_0011_schema_holding_finished_rows(
    postgres_dsn: str, admin: asyncpg.Connection
) -> None:
    schema = f"lexigram_mig12_{uuid.uuid4().hex[:10]}"
    await run_migrations(
        admin,
        schema,
        available_migrations()[:11],
        table="schema_migrations",
        lock_namespace="lexigram.tasks.postgres",
    )
    try:
        await _finished(
            admin,
            schema,
            "q",
            [("old-dead", "failed", "dead", 20), ("old-done", "done", "succeeded", 10)],
        )
        async with PostgresTaskQueue(postgres_dsn, "q", schema=schema, keep_failed=0.0) as queue:
            indexes = await admin.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1"
                " AND tablename = 'jobs' ORDER BY indexname",
                schema,
            )
            names = [row["indexname"] for row in indexes]
            assert "jobs_done_idx" not in names and "jobs_failed_idx" not in names, names
            finished = {row["indexname"]: row["indexdef"] for row in indexes}["jobs_finished_idx"]
            assert "(queue_name, status, state, finished_at, id)" in finished, finished
            assert [d.job_id for d in await queue.dead_letters()] == ["old-dead"]
            done = await queue.list_jobs(state=JobState.SUCCEEDED)
            assert [job.id for job in done.jobs] == ["old-done"]
            assert await queue.delete_expired() == 1  # the dead letter: keep_failed=0
    finally:
        await admin.execute(f"DROP SCHEMA {quote_ident(schema)} CASCADE")
