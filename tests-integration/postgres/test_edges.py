"""PostgreSQL edges: DSN schemes, the LISTEN connection's name, one bad row in a batch."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from lexigram.tasks.errors import ConfigurationError, JobTooLargeError
from lexigram.tasks.job import Job
from lexigram.tasks.postgres import PostgresTaskQueue, _insert, migrate, validate_url
from lexigram.tasks.testing import eventually


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


async def test_enqueue_many_of_more_than_a_gigabyte_stores_every_job(
    queue: PostgresTaskQueue,
) -> None:
    """Each job is under the default max_job_bytes (10 MiB), but together they
    are over PostgreSQL's 1 GB per value and per message: sent as one INSERT,
    the server dropped the connection and the caller saw 'cannot connect'."""
    argument = "x" * 10_000_000
    jobs = [Job(task="t", args=[argument], queue=queue.queue_name) for _ in range(110)]
    assert await queue.enqueue_many(jobs) == [job.id for job in jobs]
    del jobs
    assert (await queue.counts()).ready == 110
    [first] = await queue.dequeue(max_jobs=1, lease_seconds=30)
    assert first.job is not None
    assert first.job.args == [argument]


async def test_a_batch_split_into_several_statements_is_still_all_or_nothing(
    queue: PostgresTaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_insert, "_STATEMENT_BYTES", 2000)  # a few jobs per INSERT
    jobs = [Job(task="t", args=[n], queue=queue.queue_name) for n in range(40)]
    jobs[35].run_at = 1e300  # a timestamp PostgreSQL cannot store: the last INSERT fails
    with pytest.raises(asyncpg.DataError, match="out of range"):
        await queue.enqueue_many(jobs)
    assert (await queue.counts()).pending == 0

    jobs[35].run_at = None
    jobs[30].dedup_key = jobs[2].dedup_key = "same-key"  # a duplicate in a later statement
    ids = await queue.enqueue_many(jobs)
    assert ids == [job.id if n != 30 else jobs[2].id for n, job in enumerate(jobs)]
    deliveries = await queue.dequeue(max_jobs=50, lease_seconds=30)
    assert [d.job.args[0] for d in deliveries if d.job] == [n for n in range(40) if n != 30]


async def test_a_job_over_postgresqls_one_gigabyte_is_refused_even_when_max_job_bytes_allows_it(
    queue: PostgresTaskQueue,
) -> None:
    queue.max_job_bytes = 2 * 1024**3
    job = Job(task="t", args=["x" * 1024**3], queue=queue.queue_name)
    with pytest.raises(JobTooLargeError, match=r"over PostgreSQL's limit of 1,072,693,248"):
        await queue.enqueue(job)
    assert (await queue.counts()).pending == 0


async def test_many_callers_starting_one_listener_at_once_share_one_connection(
    postgres_dsn: str,
) -> None:
    from lexigram.tasks.postgres._listener import Listener

    listener = Listener(
        postgres_dsn, f"lxtest_{uuid.uuid4().hex[:8]}", "q", 10.0, application_name="lxtest"
    )
    try:
        await asyncio.gather(*(listener.ensure() for _ in range(20)))
        assert listener.listening
        await listener.ensure()  # already listening: nothing to do, and no error
        assert listener.listening
    finally:
        await listener.close()
