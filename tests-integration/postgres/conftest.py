"""Fixtures for the PostgreSQL backend tests: one throw-away schema per test module."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import pytest_asyncio

from lexigram.tasks.postgres.migrate import quote_ident


async def _drop_schema(dsn: str, schema: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def pg_schema(postgres_dsn: str) -> Iterator[str]:
    """A schema name no other test module uses; dropped with everything in it afterwards."""
    schema = f"lexigram_test_{uuid.uuid4().hex[:10]}"
    yield schema
    asyncio.run(_drop_schema(postgres_dsn, schema))


@pytest_asyncio.fixture
async def admin(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection for what a test does behind the backend's back."""
    connection = await asyncpg.connect(postgres_dsn)
    try:
        yield connection
    finally:
        await connection.close()
