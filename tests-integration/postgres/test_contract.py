"""PostgresTaskQueue passes the backend and worker contract suites against a real PostgreSQL."""

from __future__ import annotations

import asyncpg
import pytest

from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres.migrate import quote_ident
from lexigram.tasks.protocol import Capability, TaskQueueProtocol
from lexigram.tasks.testing import (
    AttemptsContract,
    BackendSpec,
    ContractBase,
    JobControlContract,
    TaskQueueContract,
    WorkerContract,
    WorkerControlContract,
)


class PostgresHooks(ContractBase):
    """How the suites reach a real PostgreSQL (one schema per test module)."""

    lease_seconds = 1.0
    #: Acked jobs are deleted (keep_finished=0, the default); cancelled ones are kept.
    keeps_finished_jobs = False
    #: Seconds finished jobs are kept (the queue's keep_finished).
    keep_finished = 0.0

    @pytest.fixture(autouse=True)
    def _database(self, postgres_dsn: str, pg_schema: str) -> None:
        self.dsn = postgres_dsn
        self.schema = pg_schema

    async def create_queue(self, queue_name: str) -> TaskQueueProtocol:
        return PostgresTaskQueue(
            postgres_dsn=self.dsn,
            queue_name=queue_name,
            schema=self.schema,
            keep_finished=self.keep_finished,
        )

    def queue_spec(self, queue_name: str) -> BackendSpec:
        options = {
            "postgres_dsn": self.dsn,
            "queue_name": queue_name,
            "schema": self.schema,
            "keep_finished": self.keep_finished,
        }
        return BackendSpec("lexigram.tasks.postgres:PostgresTaskQueue", options)

    async def push_raw(self, queue: TaskQueueProtocol, payload: bytes) -> None:
        # What a producer in another language does: one plain INSERT of the two
        # required columns (docs/backends/postgres.md, "Producing from other languages").
        connection = await asyncpg.connect(self.dsn)
        try:
            await connection.execute(
                f"INSERT INTO {quote_ident(self.schema)}.jobs (queue_name, payload)"
                " VALUES ($1, $2)",
                queue.queue_name,
                payload,
            )
        finally:
            await connection.close()


class TestPostgresContract(PostgresHooks, TaskQueueContract):
    expected_capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.PRIORITY,
            Capability.UNIQUE,
            Capability.TRANSACTIONAL,
            Capability.INSPECT,
            Capability.CANCEL,
            Capability.WORKERS,
            Capability.ATTEMPTS,
        }
    )


class TestPostgresKeepingFinishedJobControl(PostgresHooks, JobControlContract):
    """The job-control suite again with ``keep_finished``: finished jobs report their state."""

    keeps_finished_jobs = True
    keep_finished = 3600.0


class TestPostgresKeepingFinishedWorkerControl(PostgresHooks, WorkerControlContract):
    """The worker's job control again with ``keep_finished``: outcomes stay visible."""

    keeps_finished_jobs = True
    keep_finished = 3600.0


class TestPostgresWorkerContract(PostgresHooks, WorkerContract):
    pass


class TestPostgresKeepingFinishedAttempts(PostgresHooks, AttemptsContract):
    """Attempt histories again with ``keep_finished``: a succeeded job's attempts stay visible."""

    keeps_finished_jobs = True
    keep_finished = 3600.0
