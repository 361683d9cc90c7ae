"""PostgresResultStore passes the result-store contract suite against a real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio

from lexigram.tasks.postgres.migrate import quote_ident
from lexigram.tasks.postgres.results import PostgresResultStore
from lexigram.tasks.results import ResultStore
from lexigram.tasks.testing import ResultStoreContract


class TestPostgresResultStoreContract(ResultStoreContract):
    short_ttl = 0.5

    @pytest_asyncio.fixture(autouse=True)
    async def _schema(self, postgres_dsn: str) -> AsyncIterator[None]:
        """A schema of this test alone, dropped afterwards."""
        self.dsn = postgres_dsn
        self.schema = f"lexigram_test_rsc_{uuid.uuid4().hex[:10]}"
        yield
        connection = await asyncpg.connect(postgres_dsn)
        try:
            await connection.execute(f"DROP SCHEMA IF EXISTS {quote_ident(self.schema)} CASCADE")
        finally:
            await connection.close()

    async def create_store(self) -> ResultStore:
        # A recheck far longer than the suite's wake timeout: only NOTIFY wakes waiters.
        return PostgresResultStore(
            self.dsn, schema=self.schema, recheck_interval=600, cleanup_interval=None
        )
