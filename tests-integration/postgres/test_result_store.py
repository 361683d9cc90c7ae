"""PostgresResultStore on a real PostgreSQL: round trips, LISTEN/NOTIFY waiters across
connections, timeouts, TTL and batched cleanup, size limits, errors, YAML, and a
worker process storing results that a producer in this process waits on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from lexigram.tasks import (
    BackendConnectionError,
    ConfigurationError,
    JobResult,
    JobSerializationError,
    ResultTimeoutError,
    TaskFailedError,
    TaskProvider,
)
from lexigram.tasks.errors import JobCancelledError
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres.migrate import quote_ident
from lexigram.tasks.postgres.results import PostgresResultStore
from lexigram.tasks.results import ResultStore
from lexigram.tasks.testing import BackendSpec, WorkerProcesses, eventually

STORE = "lexigram.tasks.postgres.results:PostgresResultStore"


@pytest_asyncio.fixture
async def schema(postgres_dsn: str) -> AsyncIterator[str]:
    """A schema of this test alone, dropped with its rows afterwards."""
    name = f"lexigram_test_res_{uuid.uuid4().hex[:10]}"
    yield name
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await connection.execute(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")
    finally:
        await connection.close()


@pytest_asyncio.fixture
async def store(postgres_dsn: str, schema: str) -> AsyncIterator[PostgresResultStore]:
    s = PostgresResultStore(postgres_dsn, schema=schema, cleanup_interval=None)
    await s.connect()
    try:
        yield s
    finally:
        await s.disconnect()


def _job_id() -> str:
    return uuid.uuid4().hex


async def _rows(admin: asyncpg.Connection, schema: str) -> int:
    return int(await admin.fetchval(f"SELECT count(*) FROM {quote_ident(schema)}.results"))


async def _listeners(admin: asyncpg.Connection, store: PostgresResultStore) -> int:
    return int(
        await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = $1 AND query LIKE 'LISTEN %'",
            store.application_name,
        )
    )


async def test_succeeded_failed_and_cancelled_results_round_trip(
    store: PostgresResultStore, admin: asyncpg.Connection, schema: str
) -> None:
    ok, failed, cancelled = _job_id(), _job_id(), _job_id()
    assert await store.get(ok) is None
    await store.set(ok, JobResult.success(ok, {"rows": [1, 2], "nul": "a\u0000b"}))
    await store.set(failed, JobResult.failure(failed, "ValueError", "bad input"))
    await store.set(cancelled, JobResult.cancelled(cancelled))

    got = await store.get(ok)
    assert got is not None and got.status == "succeeded"
    assert got.unwrap() == {"rows": [1, 2], "nul": "a\u0000b"}
    got = await store.get(failed)
    assert got is not None
    with pytest.raises(TaskFailedError, match="bad input"):
        got.unwrap()
    got = await store.wait(cancelled, timeout=5)
    with pytest.raises(JobCancelledError):
        got.unwrap()
    # The status is a column too, for SQL inspection.
    statuses = await admin.fetch(
        f"SELECT job_id, status FROM {quote_ident(schema)}.results ORDER BY status"
    )
    assert {r["job_id"]: r["status"] for r in statuses} == {
        cancelled: "cancelled",
        failed: "failed",
        ok: "succeeded",
    }


async def test_storing_again_replaces_the_result_and_its_expiry(
    store: PostgresResultStore, admin: asyncpg.Connection, schema: str
) -> None:
    job_id = _job_id()
    await store.set(job_id, JobResult.failure(job_id, "X", "first"), ttl=0.2)
    await store.set(job_id, JobResult.success(job_id, 2), ttl=600)
    got = await store.get(job_id)
    assert got is not None and got.value == 2
    left = await admin.fetchval(
        f"SELECT extract(epoch FROM expires_at - now()) FROM {quote_ident(schema)}.results"
        " WHERE job_id = $1",
        job_id,
    )
    assert 500 < left <= 600


async def test_wait_across_two_stores_is_woken_by_notify_on_one_listen_connection(
    store: PostgresResultStore, postgres_dsn: str, schema: str, admin: asyncpg.Connection
) -> None:
    # Two stores, two pools and connections, as a worker and a producer process
    # would have; recheck_interval is far longer than the test, so only NOTIFY wakes.
    waiting = PostgresResultStore(
        postgres_dsn, schema=schema, recheck_interval=600, cleanup_interval=None
    )
    await waiting.connect()
    try:
        job_ids = [_job_id() for _ in range(5)]
        waiters = [asyncio.create_task(waiting.wait(j, timeout=60)) for j in job_ids]
        waiters.append(asyncio.create_task(waiting.wait(job_ids[0], timeout=60)))
        await eventually(lambda: _listeners(admin, waiting), 10, message="no LISTEN")
        for job_id in job_ids:
            await store.set(job_id, JobResult.success(job_id, job_id))
        results = await asyncio.wait_for(asyncio.gather(*waiters), 30)
        assert [r.value for r in results] == [*job_ids, job_ids[0]]
        # Both stores carry the schema's application_name: the storing one never listens.
        assert await _listeners(admin, waiting) == 1, "one LISTEN connection, not one per waiter"
    finally:
        await waiting.disconnect()


async def test_a_result_stored_while_the_waiter_registers_is_not_missed(
    store: PostgresResultStore, postgres_dsn: str, schema: str
) -> None:
    waiting = PostgresResultStore(
        postgres_dsn, schema=schema, recheck_interval=600, cleanup_interval=None
    )
    await waiting.connect()
    try:
        for _ in range(20):
            job_id = _job_id()
            waiter = asyncio.create_task(waiting.wait(job_id, timeout=60))
            await store.set(job_id, JobResult.success(job_id, 1))
            assert (await asyncio.wait_for(waiter, 30)).value == 1
    finally:
        await waiting.disconnect()


async def test_wait_times_out_with_a_clear_error(store: PostgresResultStore) -> None:
    job_id = _job_id()
    with pytest.raises(ResultTimeoutError, match=job_id):
        await store.wait(job_id, timeout=0.3)
    with pytest.raises(ResultTimeoutError):
        await store.wait(job_id, timeout=0)


async def test_wait_rechecks_after_its_listen_connection_is_terminated(
    postgres_dsn: str, schema: str, admin: asyncpg.Connection
) -> None:
    waiting = PostgresResultStore(
        postgres_dsn, schema=schema, recheck_interval=1.0, cleanup_interval=None
    )
    await waiting.connect()
    try:
        job_id = _job_id()
        waiter = asyncio.create_task(waiting.wait(job_id, timeout=60))
        first = await eventually(lambda: _listener_pid(admin, waiting), 10, message="no LISTEN")
        await admin.execute("SELECT pg_terminate_backend($1)", first)
        # Written behind the store's back: no NOTIFY, only a re-read finds it.
        await admin.execute(
            f"INSERT INTO {quote_ident(schema)}.results (job_id, status, result, expires_at)"
            " VALUES ($1, 'succeeded', $2::json, now() + interval '1 hour')",
            job_id,
            JobResult.success(job_id, 7).to_json(),
        )
        assert (await asyncio.wait_for(waiter, 30)).value == 7
        # Later waiters listen on a new connection and are woken through it.
        again = _job_id()
        second = asyncio.create_task(waiting.wait(again, timeout=60))
        await eventually(
            lambda: _listener_pid_other_than(admin, waiting, first), 10, message="no new LISTEN"
        )
        await waiting.set(again, JobResult.success(again, 8))
        assert (await asyncio.wait_for(second, 30)).value == 8
    finally:
        await waiting.disconnect()


async def test_expired_results_are_ignored_then_deleted_in_batches(
    postgres_dsn: str, schema: str, admin: asyncpg.Connection
) -> None:
    store = PostgresResultStore(
        postgres_dsn, schema=schema, cleanup_interval=None, cleanup_batch_size=2
    )
    await store.connect()
    try:
        short = [_job_id() for _ in range(5)]
        kept = _job_id()
        for job_id in short:
            await store.set(job_id, JobResult.success(job_id, 1), ttl=0.2)
        await store.set(kept, JobResult.success(kept, 2))
        await eventually(lambda: _gone(store, short[-1]), 10, message="never expired")
        assert [await store.get(j) for j in short] == [None] * 5
        assert await _rows(admin, schema) == 6, "expired rows stay until a cleanup"
        assert await store.delete_expired() == 5
        assert await _rows(admin, schema) == 1
        assert await store.get(kept) is not None
    finally:
        await store.disconnect()


async def test_the_cleanup_task_deletes_expired_rows_while_connected(
    postgres_dsn: str, schema: str, admin: asyncpg.Connection
) -> None:
    store = PostgresResultStore(postgres_dsn, schema=schema, cleanup_interval=0.2)
    await store.connect()
    try:
        for _ in range(3):
            job_id = _job_id()
            await store.set(job_id, JobResult.success(job_id, 1), ttl=0.1)
        await eventually(lambda: _no_rows(admin, schema), 15, message="not cleaned up")
    finally:
        await store.disconnect()


async def test_oversize_and_unserialisable_results_are_refused(
    postgres_dsn: str, schema: str
) -> None:
    small = PostgresResultStore(
        postgres_dsn, schema=schema, max_result_bytes=1000, cleanup_interval=None
    )
    await small.connect()
    try:
        job_id = _job_id()
        with pytest.raises(JobSerializationError, match="max_result_bytes=1000"):
            await small.set(job_id, JobResult.success(job_id, "x" * 5000))
        with pytest.raises(JobSerializationError, match="not JSON-serialisable"):
            await small.set(job_id, JobResult.success(job_id, object()))
        assert await small.get(job_id) is None
    finally:
        await small.disconnect()


async def test_a_bad_dsn_and_an_unreachable_server_are_reported_clearly() -> None:
    with pytest.raises(ConfigurationError, match="not a PostgreSQL URL"):
        PostgresResultStore("redis://127.0.0.1:6379/0")
    unreachable = PostgresResultStore(
        "postgresql://app:s3cret-pw@127.0.0.1:1/app", connect_timeout=5
    )
    with pytest.raises(BackendConnectionError) as caught:
        await unreachable.connect()
    message = str(caught.value)
    assert "cannot connect to PostgreSQL at" in message
    assert "for the result store" in message
    assert "s3cret-pw" not in message and "s3cret-pw" not in repr(unreachable)
    with pytest.raises(BackendConnectionError, match="not connected"):
        await unreachable.get("x")


async def test_a_pool_of_your_own_runs_the_statements_and_stays_open(
    postgres_dsn: str, schema: str
) -> None:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    try:
        store = PostgresResultStore(postgres_dsn, schema=schema, pool=pool)
        assert isinstance(store, ResultStore)
        await store.connect()
        job_id = _job_id()
        await store.set(job_id, JobResult.success(job_id, "mine"))
        await store.disconnect()
        assert not pool.is_closing()
        async with pool.acquire() as connection:
            stored = await connection.fetchval(
                f"SELECT result->>'value' FROM {quote_ident(schema)}.results WHERE job_id = $1",
                job_id,
            )
        assert stored == "mine"
    finally:
        await pool.close()


async def test_without_auto_migrate_a_missing_table_is_named(
    postgres_dsn: str, schema: str
) -> None:
    store = PostgresResultStore(postgres_dsn, schema=schema, auto_migrate=False)
    with pytest.raises(BackendConnectionError, match="lexigram-tasks postgres migrate"):
        await store.connect()


async def test_disconnect_ends_pending_waits(
    store: PostgresResultStore, admin: asyncpg.Connection
) -> None:
    waiter = asyncio.create_task(store.wait(_job_id(), timeout=60))
    await eventually(lambda: _listeners(admin, store), 10, message="no LISTEN")
    await store.disconnect()
    with pytest.raises(BackendConnectionError, match="not connected"):
        await asyncio.wait_for(waiter, 30)


def test_yaml_builds_the_store_through_the_entry_point(
    tmp_path: Path, postgres_dsn: str, schema: str
) -> None:
    path = tmp_path / "tasks.yaml"
    path.write_text(
        "tasks:\n"
        "  backend: {type: memory}\n"
        f"  result_store: {{type: postgres, postgres_dsn: '{postgres_dsn}',"
        f" schema: {schema}, ttl: 60, cleanup_interval: 30}}\n"
    )
    provider = TaskProvider.from_config(path)
    store = provider.result_store
    assert isinstance(store, PostgresResultStore)
    assert (store.schema, store.ttl, store.cleanup_interval) == (schema, 60.0, 30.0)

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "tasks:\n"
        "  backend: {type: memory}\n"
        "  result_store: {type: postgres, postgres_dsn: 'redis://localhost/0'}\n"
    )
    with pytest.raises(ConfigurationError, match=r"bad.yaml:3: .*not a PostgreSQL URL"):
        TaskProvider.from_config(bad)


async def test_a_worker_process_stores_results_a_producer_process_waits_on(
    postgres_dsn: str, schema: str, tmp_path: Path
) -> None:
    queue_name = f"results-{uuid.uuid4().hex[:8]}"
    queue_options = {"postgres_dsn": postgres_dsn, "queue_name": queue_name, "schema": schema}
    store_options = {"postgres_dsn": postgres_dsn, "schema": schema}
    workers = WorkerProcesses(
        BackendSpec("lexigram.tasks.postgres:PostgresTaskQueue", queue_options),
        tmp_path,
        poll_interval=0.1,
    )
    producer = TaskProvider(
        queue=PostgresTaskQueue(**queue_options),
        result_store=PostgresResultStore(**store_options),
        strict=False,
    )
    await producer.connect()
    try:
        # Enqueued before any worker runs: the producer is already waiting.
        handles = [await producer.enqueue("square", n) for n in range(5)]
        pending = [asyncio.create_task(h.result(timeout=60)) for h in handles]
        worker = workers.start(result_store=BackendSpec(STORE, store_options))
        assert await asyncio.wait_for(asyncio.gather(*pending), 90) == [0, 1, 4, 9, 16]
        await workers.stop(worker)
    finally:
        await producer.disconnect()
        workers.close()


async def _gone(store: PostgresResultStore, job_id: str) -> bool:
    return await store.get(job_id) is None


async def _no_rows(admin: asyncpg.Connection, schema: str) -> bool:
    return await _rows(admin, schema) == 0


async def _listener_pid(admin: asyncpg.Connection, store: PostgresResultStore) -> int | None:
    pid: int | None = await admin.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN %'",
        store.application_name,
    )
    return pid


async def _listener_pid_other_than(
    admin: asyncpg.Connection, store: PostgresResultStore, old: int
) -> bool:
    pid = await _listener_pid(admin, store)
    return pid is not None and pid != old
