"""Unit tests that need no server: names, migrations on disk, DSN redaction, the CLI parser."""

from __future__ import annotations

import argparse
import re

import pytest

from lexigram.tasks.errors import BackendConnectionError
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres._connect import connection_error, redacted
from lexigram.tasks.postgres._sql import STATE_CONDITIONS
from lexigram.tasks.postgres.cli import register
from lexigram.tasks.postgres.migrate import available_migrations, check_schema_name
from lexigram.tasks.protocol import Capability
from lexigram.tasks.registry import TaskBackendRegistry


@pytest.mark.parametrize("name", ["lexigram_tasks", "_x", "a1"])
def test_plain_schema_names_are_accepted(name: str) -> None:
    assert check_schema_name(name) == name


@pytest.mark.parametrize("name", ["", "1abc", "Upper", 'x"; DROP TABLE y; --', "a" * 49])
def test_other_schema_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid schema name"):
        PostgresTaskQueue(postgres_dsn="postgresql://localhost/db", schema=name)


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    versions = [m.version for m in available_migrations()]
    assert versions == list(range(1, len(versions) + 1))


def test_the_finished_index_queries_cover_every_state_the_row_check_allows() -> None:
    """Dead letters and cleanup read one range of jobs_finished_idx per value `state`
    may hold: a state the CHECK allows but the list misses would go unseen."""
    checks = [m.sql for m in available_migrations() if "job_row_valid" in m.sql]
    allowed = re.search(r"state IS NULL OR state IN \(([^)]*)\)", checks[-1])
    assert allowed is not None
    states = {s.strip().strip("'") for s in allowed[1].split(",")}
    assert set(STATE_CONDITIONS) == {f"state = '{s}'" for s in states} | {"state IS NULL"}


def test_repr_and_errors_never_show_the_password() -> None:
    dsn = "postgresql://app:s3cret@db.internal:5432/shop"
    queue = PostgresTaskQueue(postgres_dsn=dsn, queue_name="emails")
    assert "s3cret" not in repr(queue)
    assert "app:***@db.internal:5432/shop" in repr(queue)
    error = connection_error(dsn, OSError(f"could not reach {dsn}"))
    assert isinstance(error, BackendConnectionError)
    assert "s3cret" not in str(error)
    assert (
        redacted("postgresql://app:s3cret@db:notaport/shop")
        == "postgresql://app:***@db:notaport/shop"
    )


def test_declares_its_capabilities_and_system() -> None:
    queue = PostgresTaskQueue(postgres_dsn="postgresql://localhost/db")
    assert queue.system == "postgresql"
    assert queue.capabilities == {
        Capability.DELAY,
        Capability.PRIORITY,
        Capability.UNIQUE,
        Capability.TRANSACTIONAL,
        Capability.INSPECT,
        Capability.CANCEL,
        Capability.WORKERS,
        Capability.ATTEMPTS,
    }


def test_registered_as_backend_type_postgres() -> None:
    queue = TaskBackendRegistry().create(
        "postgres", postgres_dsn="postgresql://localhost/db", queue_name="q"
    )
    assert isinstance(queue, PostgresTaskQueue)
    assert queue.queue_name == "q"


def test_cli_registers_postgres_migrate() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["postgres", "migrate", "--dsn", "postgresql://x/y", "--schema", "s"])
    assert (args.dsn, args.schema) == ("postgresql://x/y", "s")
    assert callable(args.func)
