"""The storage contract on a real PostgreSQL server, plus its migrations."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from lexigram.tasks.dlq import DeadLetterStorage, PostgresDeadLetterStorage
from lexigram.tasks.dlq.testing import DeadLetterStorageContract, make_record


def unique_schema() -> str:
    return f"dlq_test_{uuid.uuid4().hex[:12]}"


class TestPostgresStorage(DeadLetterStorageContract):
    @pytest.fixture(autouse=True)
    def _dsn(self, postgres_dsn: str) -> None:
        self.dsn = postgres_dsn

    @pytest_asyncio.fixture
    async def storage(self) -> AsyncIterator[DeadLetterStorage]:
        schema = unique_schema()
        storage = PostgresDeadLetterStorage(postgres_dsn=self.dsn, schema=schema)
        await storage.connect()
        try:
            yield storage
        finally:
            await storage.disconnect()
            await storage.drop()  # the table, its migration record and the emptied schema


async def test_migrations_run_once_and_the_table_is_readable_with_sql(postgres_dsn: str) -> None:
    schema = unique_schema()
    storage = PostgresDeadLetterStorage(postgres_dsn, schema=schema, auto_migrate=False)
    try:
        assert await storage.migrate() == [1]
        assert await storage.migrate() == []
        await storage.connect()
        record = make_record(task="app.charge", error_type="KeyError")
        await storage.put(record)
        connection = await asyncpg.connect(postgres_dsn)
        try:
            row = await connection.fetchrow(
                f"SELECT task, error_type, failed_time, job->>'task' AS job_task "
                f'FROM "{schema}".failure_records WHERE id = $1',
                record.id,
            )
        finally:
            await connection.close()
        assert row["task"] == "app.charge"
        assert row["error_type"] == "KeyError"
        assert row["job_task"] == "app.charge"
        assert row["failed_time"].timestamp() == pytest.approx(record.failed_at, abs=1e-5)
    finally:
        await storage.disconnect()
        await storage.drop()


async def test_a_bad_password_is_redacted_in_the_error(postgres_dsn: str) -> None:
    from lexigram.tasks import BackendConnectionError

    storage = PostgresDeadLetterStorage(
        "postgresql://nobody:s3cret-pw@127.0.0.1:1/none", connect_timeout=2
    )
    with pytest.raises(BackendConnectionError) as caught:
        await storage.connect()
    assert "s3cret-pw" not in str(caught.value)
    assert "s3cret-pw" not in repr(storage)
