"""Migration 0009's append_attempt(): the history every ack and nack writes, cut to its last N."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio

from lexigram.tasks.postgres import migrate
from lexigram.tasks.postgres.migrate import quote_ident


@pytest_asyncio.fixture
async def schema(postgres_dsn: str) -> AsyncIterator[str]:
    name = f"lexigram_att_{uuid.uuid4().hex[:10]}"
    await migrate(postgres_dsn, name)
    yield name
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await connection.execute(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")
    finally:
        await connection.close()


async def test_append_attempt_keeps_the_last_records_in_order(
    postgres_dsn: str, schema: str
) -> None:
    connection = await asyncpg.connect(postgres_dsn)
    append = f"{quote_ident(schema)}.append_attempt"
    try:
        history = None
        for number in range(1, 6):
            record = json.dumps({"number": number})
            history = await connection.fetchval(
                f"SELECT {append}($1::jsonb, $2::jsonb, 3)::text", history, record
            )
        unchanged = await connection.fetchval(f"SELECT {append}($1::jsonb, NULL, 3)::text", history)
    finally:
        await connection.close()
    assert history is not None
    assert [r["number"] for r in json.loads(history)] == [3, 4, 5]
    assert unchanged == history
