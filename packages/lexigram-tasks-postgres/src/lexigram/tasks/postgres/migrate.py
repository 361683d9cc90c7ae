"""Versioned schema migrations of the queue's tables, safe to run from many processes at once.

The ``migrations/NNNN_name.sql`` files of this package are applied by
:func:`lexigram.tasks.postgres.schema.run_migrations` (see there for the
locking); applied versions are recorded in ``<schema>.schema_migrations``.
"""

from __future__ import annotations

import asyncpg

from lexigram.tasks.postgres._connect import open_connection, validate_url
from lexigram.tasks.postgres.schema import (
    Migration,
    check_schema_name,
    current_version,
    load_migrations,
    quote_ident,
    run_migrations,
)

__all__ = [
    "Migration",
    "apply_migrations",
    "available_migrations",
    "check_schema_name",
    "current_version",
    "latest_version",
    "migrate",
    "quote_ident",
]

#: Where this package's versions are recorded, and the advisory lock's namespace.
_TABLE = "schema_migrations"
_LOCK_NAMESPACE = "lexigram.tasks.postgres"


def available_migrations() -> list[Migration]:
    """Every migration shipped with this package, oldest first."""
    return load_migrations("lexigram.tasks.postgres")


def latest_version() -> int:
    """The version the schema has once every shipped migration is applied."""
    return available_migrations()[-1].version


async def apply_migrations(connection: asyncpg.Connection, schema: str) -> list[int]:
    """Bring ``schema`` up to date on ``connection``; return the versions applied now."""
    return await run_migrations(
        connection, schema, available_migrations(), table=_TABLE, lock_namespace=_LOCK_NAMESPACE
    )


async def migrate(dsn: str, schema: str = "lexigram_tasks") -> list[int]:
    """Create or upgrade the lexigram-tasks tables in ``schema`` of the database at ``dsn``.

    Safe to call from several processes at once and idempotent; returns the
    migration versions this call applied (empty when already up to date).
    Connection failures raise :class:`~lexigram.tasks.BackendConnectionError`
    with the password redacted; a URL that is not ``postgres://`` or
    ``postgresql://`` raises :class:`~lexigram.tasks.ConfigurationError`.
    """
    validate_url(dsn)
    check_schema_name(schema)
    connection = await open_connection(dsn)
    try:
        return await apply_migrations(connection, schema)
    finally:
        await connection.close()
