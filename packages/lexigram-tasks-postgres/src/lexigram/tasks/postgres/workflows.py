"""PostgresWorkflowStore: workflow state in the queue's PostgreSQL schema (migration 0007).

Tables ``workflows`` (status, plan, error, steps left) and
``workflow_steps`` (per step: inputs not done, enqueued, result, span).
Every call that changes a workflow first locks its ``workflows`` row
(``FOR UPDATE``, in id order when several), so calls on one workflow run one
after another and the transaction that takes a step's ``pending`` to zero
is the one that claims it. Recording finished steps is one call of the
function ``workflow_complete`` (migration 0008), so those locks are held for
one round trip. Expired workflows are deleted in small batches
when new ones are created.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import asyncpg

from lexigram.tasks.postgres.schema import check_schema_name, quote_ident
from lexigram.tasks.workflows.store import Claim, StepOutcome, WorkflowSnapshot

__all__ = ["PostgresWorkflowStore"]

#: Seconds between two deletions of expired workflows (run on a create).
PURGE_INTERVAL = 60.0
_PURGE_BATCH = 500


class PoolSource(Protocol):
    """What the store shares: a PostgresTaskQueue or PostgresJobStateStore."""

    schema: str

    @property
    def pool(self) -> asyncpg.Pool | None: ...


class PostgresWorkflowStore:
    """Workflow state on PostgreSQL, on the connection pool of a queue or job state store.

    Build it with :meth:`sharing` (the queue's own database, as workflows do
    by default); the schema must be migrated to version 8 or later, which a
    queue with ``auto_migrate`` does on connect.
    """

    def __init__(self, source: PoolSource, schema: str) -> None:
        self._source = source
        self.schema = check_schema_name(schema)
        s = quote_ident(schema)
        self._workflows = f"{s}.workflows"
        self._steps = f"{s}.workflow_steps"
        self._complete = f"{s}.workflow_complete"
        self._last_purge = 0.0

    @classmethod
    def sharing(cls, source: PoolSource) -> PostgresWorkflowStore:
        """A store on the pool of ``source`` (a PostgresTaskQueue or PostgresJobStateStore)."""
        return cls(source, source.schema)

    def __repr__(self) -> str:
        return f"PostgresWorkflowStore(schema={self.schema!r})"

    async def connect(self) -> None:
        self._pool()

    def _pool(self) -> asyncpg.Pool:
        pool: asyncpg.Pool | None = self._source.pool
        if pool is None:
            raise RuntimeError(f"{self._source!r} is not connected: connect it first")
        return pool

    async def create(
        self, workflow_id: str, plan: str, pending: Sequence[int], steps: int, ttl: float
    ) -> None:
        async with self._pool().acquire() as connection, connection.transaction():
            await connection.execute(
                f"INSERT INTO {self._workflows} (id, plan, steps, remaining, expires_at)"
                " VALUES ($1, $2, $3, $3, now() + make_interval(secs => $4))",
                workflow_id,
                plan,
                steps,
                float(ttl),
            )
            await connection.execute(
                f"INSERT INTO {self._steps} (workflow_id, step, pending)"
                " SELECT $1, s - 1, p FROM unnest($2::int[]) WITH ORDINALITY AS u(p, s)",
                workflow_id,
                list(pending),
            )
        if time.monotonic() - self._last_purge > PURGE_INTERVAL:
            self._last_purge = time.monotonic()
            await self._pool().execute(
                f"DELETE FROM {self._workflows} WHERE id IN (SELECT id FROM {self._workflows}"
                f" WHERE expires_at < now() LIMIT {_PURGE_BATCH})"
            )

    async def plan(self, workflow_id: str) -> str | None:
        value: str | None = await self._pool().fetchval(
            f"SELECT plan FROM {self._workflows} WHERE id = $1", workflow_id
        )
        return value

    async def complete(self, outcomes: Sequence[StepOutcome]) -> list[Claim]:
        if not outcomes:
            return []
        rows = await self._pool().fetch(
            f"SELECT * FROM {self._complete}($1::text[], $2::int[], $3::text[], $4::text[],"
            " $5::int[], $6::int[])",
            [o.workflow_id for o in outcomes],
            [o.step for o in outcomes],
            [o.result for o in outcomes],
            [o.span or None for o in outcomes],
            [len(o.dependents) for o in outcomes],
            [d for o in outcomes for d in o.dependents],
        )
        return [Claim(r["claim_workflow"], r["claim_step"], r["claim_fresh"]) for r in rows]

    async def inputs(self, workflow_id: str, steps: Sequence[int]) -> dict[int, tuple[str, str]]:
        if not steps:
            return {}
        rows = await self._pool().fetch(
            f"SELECT step, result, span FROM {self._steps}"
            " WHERE workflow_id = $1 AND step = ANY($2::int[]) AND result IS NOT NULL",
            workflow_id,
            list(steps),
        )
        return {r["step"]: (r["result"], r["span"] or "") for r in rows}

    async def mark_enqueued(self, workflow_id: str, steps: Sequence[int]) -> str:
        async with self._pool().acquire() as connection, connection.transaction():
            status: str | None = await connection.fetchval(
                f"SELECT status FROM {self._workflows} WHERE id = $1 FOR UPDATE", workflow_id
            )
            if status is None:
                return "cancelled"
            await connection.execute(
                f"UPDATE {self._steps} SET enqueued = true"
                " WHERE workflow_id = $1 AND step = ANY($2::int[])",
                workflow_id,
                list(steps),
            )
        return status

    async def fail(self, workflow_id: str, step: int, error: str) -> Claim | None:
        async with self._pool().acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                f"SELECT status, steps FROM {self._workflows} WHERE id = $1 FOR UPDATE",
                workflow_id,
            )
            if row is None:
                return None
            fresh = row["status"] == "running"
            if fresh:
                await connection.execute(
                    f"UPDATE {self._workflows} SET status = 'failed', error = $2 WHERE id = $1",
                    workflow_id,
                    error,
                )
            elif row["status"] != "failed":
                return None
            waiting = await connection.fetchval(
                f"SELECT NOT enqueued FROM {self._steps} WHERE workflow_id = $1 AND step = $2",
                workflow_id,
                row["steps"],
            )
        return Claim(workflow_id, row["steps"], fresh) if waiting else None

    async def cancel(self, workflow_id: str) -> list[int]:
        async with self._pool().acquire() as connection, connection.transaction():
            steps = await connection.fetchval(
                f"SELECT steps FROM {self._workflows} WHERE id = $1 FOR UPDATE", workflow_id
            )
            if steps is None:
                return []
            await connection.execute(
                f"UPDATE {self._workflows} SET status = 'cancelled'"
                " WHERE id = $1 AND status = 'running'",
                workflow_id,
            )
            rows = await connection.fetch(
                f"SELECT step FROM {self._steps} WHERE workflow_id = $1 AND enqueued"
                " AND result IS NULL AND step < $2 ORDER BY step",
                workflow_id,
                steps,
            )
        return [r["step"] for r in rows]

    async def snapshot(self, workflow_id: str) -> WorkflowSnapshot | None:
        async with self._pool().acquire() as connection:
            head = await connection.fetchrow(
                f"SELECT status, plan, error FROM {self._workflows} WHERE id = $1", workflow_id
            )
            if head is None:
                return None
            rows = await connection.fetch(
                f"SELECT step, enqueued, result FROM {self._steps} WHERE workflow_id = $1",
                workflow_id,
            )
        results = {r["step"]: r["result"] for r in rows if r["result"] is not None}
        return WorkflowSnapshot(
            head["status"],
            head["plan"],
            head["error"],
            results,
            frozenset(r["step"] for r in rows if r["enqueued"]),
            frozenset(results),
        )

    async def forget(self, workflow_id: str) -> None:
        """Delete a workflow's state now (it also expires by itself)."""
        await self._pool().execute(f"DELETE FROM {self._workflows} WHERE id = $1", workflow_id)
