"""Versioned schema migrations, safe to run from many processes at once.

Each ``migrations/NNNN_name.sql`` file of this package runs once per schema,
in version order, inside one transaction that holds a transaction-scoped
advisory lock keyed on the schema name: concurrent callers queue up on the
lock, and each then sees what the others applied. Applied versions are
recorded in ``<schema>.schema_migrations``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files

import asyncpg

from lexigram.tasks.postgres._connect import open_connection, validate_url

_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file of the package."""

    version: int
    name: str
    sql: str


def check_schema_name(schema: str) -> str:
    """Return ``schema`` if it is a plain lower-case identifier of at most 48 characters."""
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(
            f"invalid schema name {schema!r}: use lower-case letters, digits and '_' "
            "(at most 48 characters, not starting with a digit)"
        )
    return schema


def quote_ident(name: str) -> str:
    """``name`` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def available_migrations() -> list[Migration]:
    """Every migration shipped with this package, oldest first."""
    found: list[Migration] = []
    for entry in files("lexigram.tasks.postgres").joinpath("migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is not None:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {versions}")
    return found


def latest_version() -> int:
    """The version the schema has once every shipped migration is applied."""
    return available_migrations()[-1].version


def _lock_key(schema: str) -> int:
    digest = hashlib.blake2b(f"lexigram.tasks.postgres:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def current_version(connection: asyncpg.Connection, schema: str) -> int:
    """The newest migration applied to ``schema`` (0 when none is)."""
    table = f"{quote_ident(schema)}.schema_migrations"
    exists = await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
    if not exists:
        return 0
    version = await connection.fetchval(f"SELECT coalesce(max(version), 0) FROM {table}")
    return int(version)


async def apply_migrations(connection: asyncpg.Connection, schema: str) -> list[int]:
    """Bring ``schema`` up to date on ``connection``; return the versions applied now."""
    check_schema_name(schema)
    pending = available_migrations()
    if await current_version(connection, schema) >= pending[-1].version:
        return []  # the common case: no lock, no transaction
    quoted = quote_ident(schema)
    applied_now: list[int] = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(schema))
        await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await connection.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            row["version"]
            for row in await connection.fetch(f"SELECT version FROM {quoted}.schema_migrations")
        }
        await connection.execute(f"SET LOCAL search_path TO {quoted}, pg_catalog")
        for migration in pending:
            if migration.version in done:
                continue
            await connection.execute(migration.sql)
            await connection.execute(
                f"INSERT INTO {quoted}.schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied_now.append(migration.version)
    return applied_now


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
