"""Real worker processes: two share a queue, and a SIGKILLed one loses no job."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from lexigram.tasks.job import Job
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres.migrate import quote_ident
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.testing import eventually

WORKER_APP = Path(__file__).with_name("_worker_app.py")
EMPTY = QueueCounts(ready=0, delayed=0, running=0, failed=0)


@pytest_asyncio.fixture
async def db(postgres_dsn: str, pg_schema: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection, with the test log table the worker app writes to (emptied per test)."""
    connection = await asyncpg.connect(postgres_dsn)
    schema = quote_ident(pg_schema)
    await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    await connection.execute(
        f"CREATE TABLE IF NOT EXISTS {schema}.test_log"
        " (event text NOT NULL, key text NOT NULL, pid integer NOT NULL)"
    )
    await connection.execute(f"TRUNCATE {schema}.test_log")
    try:
        yield connection
    finally:
        await connection.close()


@pytest_asyncio.fixture
async def queue(postgres_dsn: str, pg_schema: str) -> AsyncIterator[PostgresTaskQueue]:
    q = PostgresTaskQueue(
        postgres_dsn=postgres_dsn, queue_name=f"procs_{uuid.uuid4().hex[:8]}", schema=pg_schema
    )
    async with q:
        yield q


@pytest.fixture
def spawn(postgres_dsn: str, pg_schema: str) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start worker processes; whatever is still running at the end is killed."""
    started: list[subprocess.Popen[bytes]] = []

    def start(queue: PostgresTaskQueue, lease_seconds: float = 30.0) -> subprocess.Popen[bytes]:
        args = [postgres_dsn, pg_schema, queue.queue_name, str(lease_seconds)]
        process = subprocess.Popen([sys.executable, str(WORKER_APP), *args])
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


async def _log(db: asyncpg.Connection, schema: str, event: str) -> list[asyncpg.Record]:
    return await db.fetch(
        f"SELECT key, pid FROM {quote_ident(schema)}.test_log WHERE event = $1", event
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, "the worker did not shut down cleanly on SIGTERM"


async def test_two_worker_processes_run_every_job_exactly_once(
    queue: PostgresTaskQueue, db: asyncpg.Connection, pg_schema: str, spawn: Callable[..., Any]
) -> None:
    keys = [f"job-{n}" for n in range(600)]
    first, second = spawn(queue), spawn(queue)
    await queue.enqueue_many([Job(task="record", args=[k], queue=queue.queue_name) for k in keys])

    async def all_done() -> bool:
        return len(await _log(db, pg_schema, "done")) >= len(keys)

    await eventually(all_done, timeout=60, interval=0.1, message="workers did not drain the queue")
    _stop(first)
    _stop(second)

    done = await _log(db, pg_schema, "done")
    assert sorted(row["key"] for row in done) == sorted(keys), "a job ran twice or not at all"
    assert {row["pid"] for row in done} == {first.pid, second.pid}, "one worker did all the work"
    assert await queue.counts() == EMPTY


async def test_sigkilled_workers_job_is_redelivered_after_its_lease_and_runs_once(
    queue: PostgresTaskQueue, db: asyncpg.Connection, pg_schema: str, spawn: Callable[..., Any]
) -> None:
    lease = 2.0
    victim = spawn(queue, lease_seconds=lease)
    # One retry: the worker dead-letters a job redelivered more often than that.
    job = Job(task="hang_once", args=["the-job"], queue=queue.queue_name, max_retries=1)
    await queue.enqueue(job)

    async def started() -> list[asyncpg.Record]:
        return await _log(db, pg_schema, "started")

    await eventually(started, timeout=30, message="the first worker never started the job")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=1, failed=0)

    rescuer = spawn(queue, lease_seconds=lease)

    async def done() -> list[asyncpg.Record]:
        return await _log(db, pg_schema, "done")

    [finished] = await eventually(done, timeout=30, message="the job was never redelivered")
    assert finished["pid"] == rescuer.pid
    assert sorted(row["pid"] for row in await started()) == sorted([victim.pid, rescuer.pid])
    await eventually(lambda: _counts_are_empty(queue), timeout=10, message="job was not acked")
    _stop(rescuer)
    assert len(await done()) == 1, "the job completed more than once"


async def _counts_are_empty(queue: PostgresTaskQueue) -> bool:
    return await queue.counts() == EMPTY


async def test_good_jobs_behind_poison_rows_all_run_and_the_poison_is_dead_lettered(
    queue: PostgresTaskQueue, db: asyncpg.Connection, pg_schema: str, spawn: Callable[..., Any]
) -> None:
    """Rows a foreign producer wrote, first in line: one nested 1,000 levels
    deep (once a RecursionError escaping dequeue, so no job ran) and one with
    NaN (readable by Python, but not writable back for its retry)."""
    deep = b'{"id": "poison-deep", "task": "record", "args": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    nan = b'{"id": "poison-nan", "task": "record", "args": [NaN]}'
    for payload in (deep, nan):
        await queue.push_raw(payload)
    keys = [f"good-{n}" for n in range(200)]
    await queue.enqueue_many([Job(task="record", args=[k], queue=queue.queue_name) for k in keys])
    worker = spawn(queue)

    async def all_done() -> bool:
        return len(await _log(db, pg_schema, "done")) >= len(keys)

    await eventually(all_done, timeout=60, interval=0.1, message="good jobs behind poison")
    dead = await eventually(
        lambda: _dead_letters(queue, 2), timeout=15, message="poison not dead-lettered"
    )
    _stop(worker)
    done = await _log(db, pg_schema, "done")
    assert sorted(row["key"] for row in done) == sorted(keys)
    reasons = {letter.payload: letter.reason for letter in dead}
    assert reasons.keys() == {deep, nan}
    assert "nested too deeply" in reasons[deep]
    assert "NaN" in reasons[nan]
    assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=2)


async def _dead_letters(queue: PostgresTaskQueue, count: int) -> list[Any]:
    letters = await queue.dead_letters()
    return letters if len(letters) >= count else []


async def test_sigterm_acks_every_job_that_finished_before_the_process_exits(
    queue: PostgresTaskQueue, db: asyncpg.Connection, pg_schema: str, spawn: Callable[..., Any]
) -> None:
    """8 jobs running at SIGTERM all finish inside the shutdown window: each is
    acked before the process exits, so none is left to run again. The jobs end
    together after the worker stopped fetching, so their acks are in flight
    when stop() ends the ack loop (which used to drop that batch)."""
    for round_ in range(3):
        worker = spawn(queue)
        keys = [f"r{round_}-job-{n}" for n in range(8)]
        await queue.enqueue_many(
            [Job(task="slow", args=[key, 1.5], queue=queue.queue_name) for key in keys]
        )

        async def all_started(prefix: str = f"r{round_}-") -> bool:
            started = await _log(db, pg_schema, "started")
            return sum(row["key"].startswith(prefix) for row in started) == 8

        await eventually(all_started, timeout=30, message="the 8 jobs never all started")
        _stop(worker)
        done = [r["key"] for r in await _log(db, pg_schema, "done") if r["key"] in keys]
        assert sorted(done) == sorted(keys), "a job did not finish inside the shutdown window"
        left = await db.fetch(
            f"SELECT job_id, status, attempt FROM {quote_ident(pg_schema)}.jobs"
            " WHERE queue_name = $1",
            queue.queue_name,
        )
        assert [dict(row) for row in left] == [], f"round {round_}: finished jobs not acked"
