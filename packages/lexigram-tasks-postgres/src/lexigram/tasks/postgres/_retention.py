"""Inspection and retention of :class:`PostgresTaskQueue`: counts, dead letters, plans, cleanup."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Awaitable, Callable

import asyncpg

from lexigram.tasks.postgres._pools import Pooled
from lexigram.tasks.protocol import DeadLetter, QueueCounts

logger = logging.getLogger("lexigram.tasks.postgres")

#: Seconds a job cancelled before it started stays visible when
#: ``keep_finished`` is 0 (acked jobs are then deleted at once).
KEEP_CANCELLED = 3600.0


class Retention(Pooled):
    """What a queue holds, and deleting the finished and failed rows past their retention."""

    keep_finished: float
    keep_failed: float | None
    cleanup_interval: float
    cleanup_batch_size: int

    async def counts(self) -> QueueCounts:
        row = await self._run(lambda c: c.fetchrow(self._sql.counts, self.queue_name))
        return QueueCounts(
            ready=row["ready"], delayed=row["delayed"], running=row["running"], failed=row["failed"]
        )

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        rows = await self._run(lambda c: c.fetch(self._sql.dead_letters, self.queue_name, limit))
        return [
            DeadLetter(
                payload=row["payload"],
                reason=row["failure_reason"] or "",
                job_id=row["job_id"],
                failed_at=row["failed_at"],
            )
            for row in rows
        ]

    async def explain_dequeue(self, max_jobs: int = 100, *, analyze: bool = False) -> str:
        """The query plan of the dequeue statement, to check it uses ``jobs_ready_idx``.

        With ``analyze=True`` the statement really runs (``EXPLAIN ANALYZE``)
        inside a transaction that is rolled back, so no job is leased.
        """
        options = "ANALYZE, BUFFERS, " if analyze else ""

        async def explain(connection: asyncpg.Connection) -> str:
            async with connection.transaction():
                rows = await connection.fetch(
                    f"EXPLAIN ({options}COSTS OFF) {self._sql.claim}",
                    self.queue_name,
                    max_jobs,
                    0,
                    30.0,
                )
                plan = "\n".join(row[0] for row in rows)
                raise _RollBack(plan)

        try:
            await self._run(explain)
        except _RollBack as done:
            return done.plan
        raise AssertionError("unreachable")

    async def delete_expired(self) -> int:
        """Delete this queue's finished and failed rows older than their retention.

        Finished rows are kept ``keep_finished`` seconds; with
        ``keep_finished=0`` the only ones are jobs cancelled before they
        started, kept :data:`KEEP_CANCELLED` seconds.

        Runs in batches of ``cleanup_batch_size`` rows, each its own short
        transaction that skips rows another session holds; returns how many
        rows it deleted. The cleanup task calls it every ``cleanup_interval``.
        """
        deleted = 0
        # With keep_finished=0 an acked row is deleted at once; the only
        # finished rows left are jobs cancelled before they started.
        keep_done = self.keep_finished if self.keep_finished > 0 else KEEP_CANCELLED
        targets = [(self._sql.purge_done, keep_done)]
        if self.keep_failed is not None:
            targets.append((self._sql.purge_failed, self.keep_failed))
        for statement, keep in targets:
            while True:
                count = await self._run(self._purge_batch(statement, keep))
                deleted += count
                if count < self.cleanup_batch_size:
                    break
                await asyncio.sleep(0)
        return deleted

    async def purge(self) -> int:
        """Deprecated name of :meth:`delete_expired` (``purge`` elsewhere empties a queue)."""
        warnings.warn(
            "PostgresTaskQueue.purge() is deprecated; call delete_expired()",
            DeprecationWarning,
            stacklevel=2,
        )
        return await self.delete_expired()

    def _purge_batch(
        self, statement: str, keep: float
    ) -> Callable[[asyncpg.Connection], Awaitable[int]]:
        async def purge(connection: asyncpg.Connection) -> int:
            status: str = await connection.execute(
                statement, self.queue_name, keep, self.cleanup_batch_size
            )
            return int(status.split()[-1])  # "DELETE <count>"

        return purge

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cleanup_interval)
            try:
                deleted = await self.delete_expired()
            except Exception as exc:
                logger.warning("retention cleanup of %r failed: %s", self, exc)
            else:
                if deleted:
                    logger.debug("retention cleanup deleted %d row(s) of %r", deleted, self)


class _RollBack(Exception):
    """Leaves a transaction by rollback, carrying what it computed."""

    def __init__(self, plan: str) -> None:
        super().__init__("rollback")
        self.plan = plan
