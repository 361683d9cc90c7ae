"""PostgresTemplateStore: scheduler state in PostgreSQL.

Install with ``pip install lexigram-tasks-scheduler[postgres]``.

Two tables, created on connect: ``<prefix>_templates`` (runtime template
definitions as JSONB) and ``<prefix>_state`` (pause flag and last fire time
of every template). ``claim`` is one ``UPDATE`` that locks the row and
compares the cursor under that lock, so concurrent schedulers serialise on
it and exactly one advances it.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from lexigram.tasks.optional import import_optional
from lexigram.tasks.scheduler.errors import TemplateExistsError
from lexigram.tasks.scheduler.store import StoreSnapshot, TemplateState
from lexigram.tasks.scheduler.template import ScheduleTemplate

if TYPE_CHECKING:
    import asyncpg

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")
#: What the connection is for, in connection error messages.
_PURPOSE = "the scheduler store"
#: asyncpg's own default, which this store has always used.
_CONNECT_TIMEOUT = 60.0


class PostgresTemplateStore:
    """Scheduler state shared through PostgreSQL; every scheduler using the same
    database, ``schema`` and ``table_prefix`` fires each tick once."""

    def __init__(
        self,
        postgres_dsn: str,
        *,
        schema: str = "public",
        table_prefix: str = "lexigram_schedule",
    ) -> None:
        import_optional(
            "lexigram.tasks.postgres",
            "lexigram-tasks-scheduler",
            extra="postgres",
            feature="PostgresTemplateStore",
        )
        from lexigram.tasks.postgres import validate_url  # installed: checked just above

        validate_url(postgres_dsn)
        for what, value in (("schema", schema), ("table_prefix", table_prefix)):
            if not _IDENTIFIER.match(value):
                raise ValueError(f"{what} must be a plain SQL identifier, got {value!r}")
        self.postgres_dsn = postgres_dsn
        self.schema = schema
        self.table_prefix = table_prefix
        self._templates = f'"{schema}"."{table_prefix}_templates"'
        self._state = f'"{schema}"."{table_prefix}_state"'
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        from lexigram.tasks.postgres.connection import redacted

        return (
            f"PostgresTemplateStore({redacted(self.postgres_dsn)!r}, "
            f"schema={self.schema!r}, table_prefix={self.table_prefix!r})"
        )

    async def connect(self) -> None:
        if self._pool is not None:
            return
        from lexigram.tasks.postgres.connection import open_pool

        pool = await open_pool(
            self.postgres_dsn,
            min_size=1,
            max_size=4,
            timeout=_CONNECT_TIMEOUT,
            purpose=_PURPOSE,
        )
        try:
            await self._create_tables(pool)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _create_tables(self, pool: asyncpg.Pool) -> None:
        from lexigram.tasks.postgres.schema import advisory_lock_key

        key = advisory_lock_key("lexigram.tasks.scheduler", f"{self.schema}.{self.table_prefix}")
        async with pool.acquire() as conn, conn.transaction():
            # Concurrent CREATE ... IF NOT EXISTS can still collide; serialise them.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", key)
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._templates} ("
                " name text PRIMARY KEY,"
                " definition jsonb NOT NULL,"
                " created_at timestamptz NOT NULL DEFAULT now())"
            )
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._state} ("
                " name text PRIMARY KEY,"
                " paused boolean NOT NULL DEFAULT false,"
                " last_fire double precision NOT NULL)"
            )

    async def disconnect(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError(
                "PostgresTemplateStore is not connected: await store.connect() first"
            )
        return self._pool

    async def load(self) -> StoreSnapshot:
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            templates = await conn.fetch(f"SELECT name, definition FROM {self._templates}")
            states = await conn.fetch(f"SELECT name, paused, last_fire FROM {self._state}")
        return StoreSnapshot(
            {row["name"]: _json(row["definition"]) for row in templates},
            {row["name"]: TemplateState(row["last_fire"], row["paused"]) for row in states},
        )

    async def init_cursor(self, name: str, now: float) -> float:
        # DO UPDATE (a no-op) rather than DO NOTHING so RETURNING gives the existing row too.
        value = await self.pool.fetchval(
            f"INSERT INTO {self._state} (name, last_fire) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING last_fire",
            name,
            now,
        )
        return float(value)

    async def claim(self, name: str, fire_time: float) -> float | None:
        # The sub-select locks the row; a concurrent claim waits, then re-reads the
        # row it waited for and finds the cursor already advanced.
        value = await self.pool.fetchval(
            f"UPDATE {self._state} AS s SET last_fire = $2 "
            f"FROM (SELECT name, last_fire FROM {self._state} WHERE name = $1 FOR UPDATE) AS prev "
            "WHERE s.name = prev.name AND prev.last_fire < $2 "
            "RETURNING prev.last_fire",
            name,
            fire_time,
        )
        return None if value is None else float(value)

    async def release(self, name: str, fire_time: float, previous: float) -> None:
        await self.pool.execute(
            f"UPDATE {self._state} SET last_fire = $3 WHERE name = $1 AND last_fire = $2",
            name,
            fire_time,
            previous,
        )

    async def add_template(self, template: ScheduleTemplate, now: float) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                f"INSERT INTO {self._templates} (name, definition) VALUES ($1, $2::jsonb) "
                "ON CONFLICT (name) DO NOTHING RETURNING name",
                template.name,
                json.dumps(template.to_dict()),
            )
            if inserted is None:
                raise TemplateExistsError(
                    f"a runtime schedule named {template.name!r} already exists"
                )
            await conn.execute(
                f"INSERT INTO {self._state} (name, paused, last_fire) VALUES ($1, false, $2) "
                "ON CONFLICT (name) DO UPDATE SET paused = false, last_fire = EXCLUDED.last_fire",
                template.name,
                now,
            )

    async def remove_template(self, name: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            removed = await conn.fetchval(
                f"DELETE FROM {self._templates} WHERE name = $1 RETURNING name", name
            )
            await conn.execute(f"DELETE FROM {self._state} WHERE name = $1", name)
        return removed is not None

    async def set_paused(self, name: str, paused: bool, now: float) -> None:
        if paused:
            sql = "DO UPDATE SET paused = true"
        else:
            sql = (
                "DO UPDATE SET paused = false, "
                "last_fire = GREATEST(s.last_fire, EXCLUDED.last_fire)"
            )
        await self.pool.execute(
            f"INSERT INTO {self._state} AS s (name, paused, last_fire) VALUES ($1, $2, $3) "
            f"ON CONFLICT (name) {sql}",
            name,
            paused,
            now,
        )

    async def drop_tables(self) -> None:
        """Drop this store's tables (for tests and teardown)."""
        await self.pool.execute(f"DROP TABLE IF EXISTS {self._templates}, {self._state}")


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
