"""Migrations: versioned, idempotent, safe when several processes run them at once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from lexigram.tasks.errors import BackendConnectionError
from lexigram.tasks.job import Job
from lexigram.tasks.postgres import PostgresTaskQueue, migrate
from lexigram.tasks.postgres.migrate import available_migrations, latest_version, quote_ident

_MIGRATE_AT = """
import asyncio, json, sys, time
from lexigram.tasks.postgres import migrate
dsn, schema, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, start_at - time.time()))  # all processes start together
print(json.dumps(asyncio.run(migrate(dsn, schema))))
"""


@pytest_asyncio.fixture
async def fresh_schema(postgres_dsn: str) -> AsyncIterator[str]:
    """A schema name that does not exist yet; dropped afterwards."""
    schema = f"lexigram_mig_{uuid.uuid4().hex[:10]}"
    yield schema
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await connection.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await connection.close()


async def _applied_versions(dsn: str, schema: str) -> list[int]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            f"SELECT version FROM {quote_ident(schema)}.schema_migrations ORDER BY version"
        )
    finally:
        await connection.close()
    return [row["version"] for row in rows]


def test_the_sql_ships_with_the_package_in_version_order() -> None:
    migrations = available_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "initial"
    assert "CREATE TABLE jobs" in migrations[0].sql


async def test_three_processes_migrating_at_once_apply_each_version_once(
    postgres_dsn: str, fresh_schema: str
) -> None:
    start_at = f"{time.time() + 2.0:.3f}"
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _MIGRATE_AT,
            postgres_dsn,
            fresh_schema,
            start_at,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    results = []
    for process in processes:
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        results.append(json.loads(out))
    every_version = list(range(1, latest_version() + 1))
    # Exactly one process applied the migrations; the others found them done.
    assert sorted(results, key=len) == [[], [], every_version]
    assert await _applied_versions(postgres_dsn, fresh_schema) == every_version

    async with PostgresTaskQueue(
        postgres_dsn=postgres_dsn, queue_name="q", schema=fresh_schema, auto_migrate=False
    ) as queue:
        job = Job(task="t", queue="q")
        assert await queue.enqueue(job) == job.id


async def test_migrate_is_idempotent(postgres_dsn: str, fresh_schema: str) -> None:
    assert await migrate(postgres_dsn, fresh_schema) == list(range(1, latest_version() + 1))
    assert await migrate(postgres_dsn, fresh_schema) == []
    assert await PostgresTaskQueue(postgres_dsn, schema=fresh_schema).migrate() == []


async def test_without_auto_migrate_a_missing_schema_is_a_clear_error(
    postgres_dsn: str, fresh_schema: str
) -> None:
    queue = PostgresTaskQueue(postgres_dsn, schema=fresh_schema, auto_migrate=False)
    with pytest.raises(BackendConnectionError, match="lexigram-tasks postgres migrate"):
        await queue.connect()
    await queue.disconnect()


def test_cli_migrate_reports_what_it_did_with_the_password_redacted(
    postgres_dsn: str, fresh_schema: str
) -> None:
    # The test server trusts local connections, so the password is never checked.
    dsn = postgres_dsn.replace("postgresql://postgres@", "postgresql://postgres:s3cret@")
    command = [sys.executable, "-m", "lexigram.tasks.cli", "postgres", "migrate"]
    args = ["--dsn", dsn, "--schema", fresh_schema]
    first = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "applied migration(s) 0001" in first.stdout
    assert "***" in first.stdout
    again = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout
    for output in (first.stdout, first.stderr, again.stdout, again.stderr):
        assert "s3cret" not in output


def test_cli_migrate_migrates_the_postgres_backends_of_a_config_file(
    postgres_dsn: str, fresh_schema: str, tmp_path: Path
) -> None:
    config = tmp_path / "lexigram.yaml"
    config.write_text(
        "tasks:\n"
        "  backend:\n"
        "    type: postgres\n"
        '    postgres_dsn: "${DATABASE_URL}"\n'
        f"    schema: {fresh_schema}\n"
    )
    command = [sys.executable, "-m", "lexigram.tasks.cli", "postgres", "migrate"]
    env = {**os.environ, "DATABASE_URL": postgres_dsn}
    result = subprocess.run(
        [*command, "--config", str(config)], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    assert f"to schema {fresh_schema} at" in result.stdout


def test_cli_migrate_without_a_database_says_how_to_give_one(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "lexigram.tasks.cli", "postgres", "migrate"]
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "--dsn" in result.stderr
    assert "DATABASE_URL" in result.stderr


def test_cli_migrate_with_a_dsn_that_is_not_postgresql_is_a_configuration_error() -> None:
    command = [sys.executable, "-m", "lexigram.tasks.cli", "postgres", "migrate"]
    dsn = "http://app:s3cret@127.0.0.1:5432/test"
    result = subprocess.run([*command, "--dsn", dsn], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr  # bad configuration, not "unreachable" (4)
    assert "is not a PostgreSQL URL: it must start with postgres:// or postgresql://" in (
        result.stderr
    )
    assert "s3cret" not in result.stderr + result.stdout
