"""The jobs table refuses what migration 0011's single CHECK refuses: the same rows as before."""

from __future__ import annotations

import asyncpg
import pytest

from lexigram.tasks.postgres.migrate import migrate, quote_ident

STATUSES = ["ready", "running", "done", "failed"]
STATES = [None, "retrying", "succeeded", "cancelled", "failed", "dead"]


async def _insert(
    admin: asyncpg.Connection, schema: str, status: str, priority: int, state: str | None
) -> None:
    await admin.execute(
        f"INSERT INTO {quote_ident(schema)}.jobs (queue_name, status, priority, state, payload)"
        " VALUES ('row_check', $1, $2, $3, 'x')",
        status,
        priority,
        state,
    )


async def test_every_allowed_row_is_stored(
    postgres_dsn: str, pg_schema: str, admin: asyncpg.Connection
) -> None:
    await migrate(postgres_dsn, pg_schema)
    for status in STATUSES:
        for state in STATES:
            for priority in (0, 9):
                await _insert(admin, pg_schema, status, priority, state)
    count = await admin.fetchval(
        f"SELECT count(*) FROM {quote_ident(pg_schema)}.jobs WHERE queue_name = 'row_check'"
    )
    assert count == len(STATUSES) * len(STATES) * 2


@pytest.mark.parametrize(
    ("status", "priority", "state"),
    [
        ("queued", 0, None),
        ("READY", 0, None),
        ("ready", 10, None),
        ("ready", -1, None),
        ("ready", 0, "running"),
        ("done", 0, ""),
    ],
)
async def test_a_row_outside_the_allowed_values_is_refused(
    postgres_dsn: str,
    pg_schema: str,
    admin: asyncpg.Connection,
    status: str,
    priority: int,
    state: str | None,
) -> None:
    await migrate(postgres_dsn, pg_schema)
    with pytest.raises(asyncpg.CheckViolationError):
        await _insert(admin, pg_schema, status, priority, state)
