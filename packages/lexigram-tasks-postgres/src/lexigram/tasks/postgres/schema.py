"""Schema names and versioned migrations, for this backend and the packages built on it.

A package ships ``migrations/NNNN_name.sql`` files and brings a schema up to
date with :func:`run_migrations`: each file runs once per schema, in version
order, inside one transaction holding a transaction-scoped advisory lock, so
concurrent callers queue up on the lock and each then sees what the others
applied. Applied versions are recorded in a table of the schema (one per
package, e.g. ``schema_migrations`` for the queue's tables and
``dlq_schema_migrations`` for the dead letter queue's).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files

import asyncpg

_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file of a package."""

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


def load_migrations(package: str) -> list[Migration]:
    """The ``migrations/NNNN_name.sql`` files shipped in ``package``, oldest first."""
    found: list[Migration] = []
    for entry in files(package).joinpath("migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is not None:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {package}: {versions}")
    return found


def advisory_lock_key(namespace: str, name: str) -> int:
    """A stable 64-bit key for ``pg_advisory_(xact_)lock``, distinct per namespace and name."""
    digest = hashlib.blake2b(f"{namespace}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def current_version(
    connection: asyncpg.Connection, schema: str, *, table: str = "schema_migrations"
) -> int:
    """The newest migration recorded in ``<schema>.<table>`` (0 when none is)."""
    versions = f"{quote_ident(schema)}.{quote_ident(table)}"
    if not await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", versions):
        return 0
    return int(await connection.fetchval(f"SELECT coalesce(max(version), 0) FROM {versions}"))


async def run_migrations(
    connection: asyncpg.Connection,
    schema: str,
    migrations: Sequence[Migration],
    *,
    table: str,
    lock_namespace: str,
) -> list[int]:
    """Apply the ``migrations`` not yet recorded in ``<schema>.<table>``; return their versions.

    ``lock_namespace`` names the package, so two packages migrating the same
    schema do not wait on each other.
    """
    check_schema_name(schema)
    latest = max((m.version for m in migrations), default=0)
    if await current_version(connection, schema, table=table) >= latest:
        return []  # the common case: no lock, no transaction
    quoted = quote_ident(schema)
    versions = f"{quoted}.{quote_ident(table)}"
    applied_now: list[int] = []
    async with connection.transaction():
        await connection.execute(
            "SELECT pg_advisory_xact_lock($1)", advisory_lock_key(lock_namespace, schema)
        )
        await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await connection.execute(
            f"CREATE TABLE IF NOT EXISTS {versions} ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await connection.fetch(f"SELECT version FROM {versions}")}
        await connection.execute(f"SET LOCAL search_path TO {quoted}, pg_catalog")
        for migration in migrations:
            if migration.version in done:
                continue
            await connection.execute(migration.sql)
            await connection.execute(
                f"INSERT INTO {versions} (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied_now.append(migration.version)
    return applied_now
