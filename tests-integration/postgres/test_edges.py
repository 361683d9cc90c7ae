"""PostgreSQL edges: DSN schemes, the LISTEN connection's name, one bad row in a batch."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.job import Job
from lexigram.tasks.postgres import PostgresTaskQueue, migrate, validate_url
from lexigram.tasks.testing import eventually


@pytest_asyncio.fixture
async def admin(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(postgres_dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest_asyncio.fixture
async def queue(postgres_dsn: str, pg_schema: str) -> AsyncIterator[PostgresTaskQueue]:
    q = PostgresTaskQueue(
        postgres_dsn, queue_name=f"edges_{uuid.uuid4().hex[:8]}", schema=pg_schema
    )
    async with q:
        yield q


@pytest.mark.parametrize(
    "dsn",
    [
        "http://app:s3cret@127.0.0.1:5432/test",
        "redis://:s3cret@127.0.0.1:6379/0",
        "postgresq://app:s3cret@127.0.0.1:5432/test",
        "127.0.0.1:5432/test",
    ],
    ids=["http", "redis", "typo", "no-scheme"],
)
async def test_a_dsn_that_is_not_postgresql_is_a_configuration_error_naming_it(dsn: str) -> None:
    with pytest.raises(ConfigurationError) as at_construction:
        PostgresTaskQueue(postgres_dsn=dsn)
    message = str(at_construction.value)
    assert "127.0.0.1" in message
    assert "s3cret" not in message
    assert "must start with postgres:// or postgresql://" in message
    with pytest.raises(ConfigurationError, match="is not a PostgreSQL URL"):
        validate_url(dsn)
    with pytest.raises(ConfigurationError, match="is not a PostgreSQL URL"):
        await migrate(dsn)


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "PostgreSQL"])
async def test_both_postgresql_schemes_are_accepted(postgres_dsn: str, scheme: str) -> None:
    dsn = scheme + postgres_dsn[postgres_dsn.index("://") :]
    validate_url(dsn)
    async with PostgresTaskQueue(postgres_dsn=dsn, queue_name=f"edges_{scheme}") as queue:
        assert (await queue.counts()).ready == 0


async def test_the_listen_connection_is_named_like_the_pools(
    queue: PostgresTaskQueue, admin: asyncpg.Connection, pg_schema: str
) -> None:
    await queue.dequeue(wait=0.01)  # a waiting dequeue opens the LISTEN connection
    listen = f'LISTEN "{pg_schema}.jobs"'

    async def listeners() -> list[str]:
        rows = await admin.fetch(
            "SELECT application_name FROM pg_stat_activity WHERE query = $1", listen
        )
        return [row["application_name"] for row in rows]

    names = await eventually(listeners, timeout=10, message="no LISTEN connection")
    assert names == [f"lexigram-tasks:{queue.queue_name}"]
    everything = await admin.fetch(
        "SELECT DISTINCT application_name FROM pg_stat_activity"
        " WHERE usename = current_user AND application_name LIKE $1",
        f"%{queue.queue_name}%",
    )
    assert [row["application_name"] for row in everything] == names


async def test_a_row_whose_decoding_fails_unexpectedly_does_not_fail_its_batch(
    queue: PostgresTaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job.from_json promises MalformedJobError for every bad document; should a
    decoder bug raise anything else, only that row is affected: the good rows
    leased with it are delivered, and the bad one comes back with its problem."""
    jobs = [Job(task="t", args=[n], queue=queue.queue_name) for n in range(5)]
    jobs[2].args = ["explode"]
    await queue.enqueue_many(jobs)
    decode = Job.from_json.__func__  # type: ignore[attr-defined]

    def from_json(cls: type[Job], data: str | bytes) -> Job:
        if b"explode" in (data if isinstance(data, bytes) else data.encode()):
            raise RecursionError("maximum recursion depth exceeded")
        return decode(cls, data)  # type: ignore[no-any-return]

    monkeypatch.setattr(Job, "from_json", classmethod(from_json))
    deliveries = await queue.dequeue(max_jobs=5, lease_seconds=30)  # one statement, one batch
    assert sorted(d.job.args[0] for d in deliveries if d.job is not None) == [0, 1, 3, 4]
    [bad] = [d for d in deliveries if d.job is None]
    assert bad.problem == "cannot be decoded: RecursionError: maximum recursion depth exceeded"
    await queue.nack(bad, requeue=False, reason=bad.problem)
    [dead] = await queue.dead_letters()
    assert dead.reason == bad.problem
    assert dead.payload == jobs[2].to_bytes()
