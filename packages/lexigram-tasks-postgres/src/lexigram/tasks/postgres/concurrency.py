"""PostgresConcurrencyLimiter: lease-based semaphores shared by every worker, in PostgreSQL.

Slots are rows of ``<schema>.concurrency_slots`` (migration 0005); one call
of ``<schema>.acquire_slots`` takes all of a job's slots or none, under
advisory transaction locks on their names, in one round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from lexigram.tasks.concurrency import Limit
from lexigram.tasks.postgres._connect import open_pool, redacted, validate_url
from lexigram.tasks.postgres.migrate import migrate
from lexigram.tasks.postgres.schema import check_schema_name, quote_ident


class PostgresConcurrencyLimiter:
    """A :class:`~lexigram.tasks.concurrency.ConcurrencyLimiter` whose slots are table rows.

    A PostgreSQL backend gets one on its own pool without configuration; set
    it as ``concurrency_limiter`` (``type: postgres``) for a backend that
    keeps no semaphores (RabbitMQ). Every worker of a deployment must use the
    same database and ``schema``; :meth:`connect` migrates the schema unless
    ``auto_migrate=False``.
    """

    shared = True

    def __init__(
        self,
        postgres_dsn: str,
        *,
        schema: str = "lexigram_tasks",
        auto_migrate: bool = True,
        max_pool_size: int = 4,
        pool: asyncpg.Pool | None = None,
    ) -> None:
        validate_url(postgres_dsn)
        self.postgres_dsn = postgres_dsn
        self.schema = check_schema_name(schema)
        self.auto_migrate = auto_migrate
        self.max_pool_size = max_pool_size
        self._pool = pool
        self._owns_pool = pool is None
        self._connecting = asyncio.Lock()
        s = quote_ident(schema)
        self._acquire = f"SELECT {s}.acquire_slots($1::text[], $2::int4[], $3, $4)"
        self._release = f"DELETE FROM {s}.concurrency_slots WHERE holder = $1 AND name = ANY($2)"
        self._extend = (
            f"UPDATE {s}.concurrency_slots AS c SET expires_at = now() + make_interval(secs => $3)"
            " FROM unnest($1::text[], $2::text[]) AS h(name, holder)"
            " WHERE c.name = h.name AND c.holder = h.holder"
        )

    def __repr__(self) -> str:
        return (
            f"PostgresConcurrencyLimiter(postgres_dsn={redacted(self.postgres_dsn)!r}, "
            f"schema={self.schema!r})"
        )

    @classmethod
    def for_queue(cls, queue: Any) -> PostgresConcurrencyLimiter:
        """The limiter on a connected :class:`~lexigram.tasks.postgres.PostgresTaskQueue`'s pool."""
        return cls(queue.postgres_dsn, schema=queue.schema, pool=queue._main())

    async def connect(self) -> None:
        async with self._connecting:
            if self._pool is not None:
                return
            if self.auto_migrate:
                await migrate(self.postgres_dsn, self.schema)
            self._pool = await open_pool(
                self.postgres_dsn, min_size=1, max_size=self.max_pool_size, timeout=10.0
            )
            self._owns_pool = True

    async def disconnect(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and self._owns_pool:
            await pool.close()

    async def _pool_ready(self) -> asyncpg.Pool:
        if self._pool is None:
            await self.connect()
        assert self._pool is not None
        return self._pool

    async def acquire(self, limits: Sequence[Limit], holder: str, lease_seconds: float) -> bool:
        """Take a slot of every limit for ``holder``, or none; True if taken."""
        pool = await self._pool_ready()
        names = [name for name, _ in limits]
        counts = [limit for _, limit in limits]
        taken: bool = await pool.fetchval(self._acquire, names, counts, holder, lease_seconds)
        return taken

    async def acquire_many(
        self, requests: Sequence[tuple[Sequence[Limit], str]], lease_seconds: float
    ) -> list[bool]:
        """Each request on its own pool connection, at once."""
        taken = await asyncio.gather(
            *(self.acquire(limits, holder, lease_seconds) for limits, holder in requests)
        )
        return list(taken)

    async def release(self, names: Sequence[str], holder: str) -> None:
        pool = await self._pool_ready()
        await pool.execute(self._release, holder, list(names))

    async def extend(self, held: Sequence[tuple[str, str]], lease_seconds: float) -> None:
        if not held:
            return
        pool = await self._pool_ready()
        names = [name for name, _ in held]
        holders = [holder for _, holder in held]
        await pool.execute(self._extend, names, holders, lease_seconds)
