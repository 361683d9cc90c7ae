"""Bad DSNs, connections killed under a running worker, and wake-ups by NOTIFY."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import asyncpg
import pytest

from lexigram.tasks import TaskProvider
from lexigram.tasks.errors import BackendConnectionError
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres.migrate import quote_ident
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.testing import eventually

EMPTY = QueueCounts(ready=0, delayed=0, running=0, failed=0)


def _queue(dsn: str, schema: str, **options: object) -> PostgresTaskQueue:
    name = f"faults_{uuid.uuid4().hex[:8]}"
    return PostgresTaskQueue(postgres_dsn=dsn, queue_name=name, schema=schema, **options)  # type: ignore[arg-type]


async def _terminate(admin: asyncpg.Connection, queue: PostgresTaskQueue) -> int:
    """pg_terminate_backend on every connection the queue holds (pools and LISTEN)."""
    killed = await admin.fetch(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        f"lexigram-tasks:{queue.queue_name}",
    )
    return len(killed)


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://app:s3cret@127.0.0.1:1/test", "127.0.0.1:1"),
        ("postgresql://app:s3cret@127.0.0.1:notaport/test", "***"),
        ("postgresql://app:s3cret@no-such-host.invalid:5432/test", "no-such-host.invalid"),
    ],
    ids=["refused", "bad-port", "unknown-host"],
)
async def test_bad_dsn_fails_at_connect_with_the_password_redacted(dsn: str, expected: str) -> None:
    queue = PostgresTaskQueue(postgres_dsn=dsn, connect_timeout=5)
    assert "s3cret" not in repr(queue)
    with pytest.raises(BackendConnectionError) as caught:
        await queue.connect()
    message = str(caught.value)
    assert "cannot connect to PostgreSQL" in message
    assert expected in message
    assert "s3cret" not in message
    assert "***" in message
    assert caught.value.__cause__ is None  # the original exception may quote the DSN


async def test_unknown_database_is_named_in_the_error(postgres_dsn: str) -> None:
    dsn = postgres_dsn.rsplit("/", 1)[0] + "/no_such_database_lexigram"
    with pytest.raises(BackendConnectionError, match="no_such_database_lexigram"):
        await PostgresTaskQueue(postgres_dsn=dsn).connect()


async def test_idle_worker_is_woken_by_notify_not_by_polling(
    postgres_dsn: str, pg_schema: str, admin: asyncpg.Connection
) -> None:
    """With a 3 s poll interval, a pickup within 1 s comes from LISTEN/NOTIFY -
    also after the LISTEN connection was terminated: the worker has been
    waiting 0.3 s when the job arrives, so a poll would find it 2.7 s later.
    (A longer interval would only slow down the worker's shutdown, which waits
    for its last poll.)"""
    queue = _queue(postgres_dsn, pg_schema)
    provider = TaskProvider(queue=queue, poll_interval=3.0)
    started: list[float] = []

    @provider.task(name="stamp")
    async def stamp() -> None:
        started.append(time.monotonic())

    async with provider:
        for round_ in range(3):
            await asyncio.sleep(0.3)  # let the worker go idle in dequeue(wait=3)
            enqueued = time.monotonic()
            await stamp.enqueue()
            await eventually(lambda n=round_: len(started) > n, timeout=5)
            assert started[-1] - enqueued < 1.0, f"round {round_}: picked up by polling"
            assert await _terminate(admin, queue) >= 1


async def test_terminated_connections_lose_no_job(
    postgres_dsn: str, pg_schema: str, admin: asyncpg.Connection
) -> None:
    queue = _queue(postgres_dsn, pg_schema)
    provider = TaskProvider(queue=queue, worker_count=20, lease_seconds=5)
    ran: Counter[int] = Counter()

    @provider.task(name="work")
    async def work(n: int) -> None:
        await asyncio.sleep(0.005)
        ran[n] += 1

    total = 400
    async with provider:
        await provider.enqueue_many([work.job(n) for n in range(total)])
        kills = 0
        while len(ran) < total and kills < 5:
            await asyncio.sleep(0.1)
            kills += await _terminate(admin, queue) > 0
        await eventually(lambda: len(ran) == total, timeout=30, message="jobs were lost")
        await eventually(lambda: _is_empty(queue), timeout=15, message="jobs not acked")
    assert kills >= 2, "the test should have killed connections while jobs ran"
    assert set(ran) == set(range(total))


async def _is_empty(queue: PostgresTaskQueue) -> bool:
    return await queue.counts() == EMPTY


async def test_a_row_that_is_not_a_job_is_dead_lettered_by_the_worker_with_its_reason(
    postgres_dsn: str, pg_schema: str, admin: asyncpg.Connection
) -> None:
    queue = _queue(postgres_dsn, pg_schema)
    provider = TaskProvider(queue=queue)
    ran: list[str] = []

    @provider.task(name="work")
    async def work(key: str) -> None:
        ran.append(key)

    async with provider:
        await admin.execute(
            f"INSERT INTO {quote_ident(pg_schema)}.jobs (queue_name, payload)"
            ' VALUES ($1, convert_to(\'{"task": "work", "args": ["x"]}\', \'UTF8\'))',
            queue.queue_name,
        )
        await work.enqueue("after")
        await eventually(lambda: ran == ["after"], timeout=10, message="the worker got stuck")
        [dead] = await eventually(queue.dead_letters, timeout=10)

        async def settled() -> bool:
            return await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=1)

        await eventually(settled, timeout=10, message="the valid job was not acked")
    assert dead.job_id is None
    assert dead.payload == b'{"task": "work", "args": ["x"]}'
    assert "missing required field 'id'" in dead.reason
