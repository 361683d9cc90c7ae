"""SQLiteTaskQueue passes the lexigram-tasks backend and worker contract suites.

Run it with ``pytest examples/sqlite_backend`` (it is part of the repository's
test run). Each test gets its own database file, so nothing needs cleaning up.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import uuid
from contextlib import closing
from pathlib import Path

import pytest

from lexigram.tasks import Capability, TaskQueueProtocol
from lexigram.tasks.testing import BackendSpec, ContractBase, TaskQueueContract, WorkerContract

sys.path.insert(0, str(Path(__file__).parent))  # the example is a module, not an installed package
from sqlite_queue import SQLiteTaskQueue


class SQLiteHooks(ContractBase):
    """How the suites reach the queue: one database file per test."""

    lease_seconds = 0.5

    @pytest.fixture(autouse=True)
    def _database(self, tmp_path: Path) -> None:
        self.path = tmp_path / "tasks.sqlite3"

    async def create_queue(self, queue_name: str) -> TaskQueueProtocol:
        return SQLiteTaskQueue(path=self.path, queue_name=queue_name)

    def queue_spec(self, queue_name: str) -> BackendSpec:
        # Worker processes import sqlite_queue as this module does: they get its sys.path.
        options = {"path": str(self.path), "queue_name": queue_name}
        return BackendSpec("sqlite_queue:SQLiteTaskQueue", options)

    async def push_raw(self, queue: TaskQueueProtocol, payload: bytes) -> None:
        # A foreign producer: a plain INSERT of the bytes, relying on the defaults.
        def insert() -> None:
            with closing(sqlite3.connect(self.path)) as db, db:  # close; commit
                db.execute(
                    "INSERT INTO lexigram_jobs (queue, id, payload) VALUES (?, ?, ?)",
                    (queue.queue_name, uuid.uuid4().hex, payload),
                )

        await asyncio.to_thread(insert)


class TestSQLiteContract(SQLiteHooks, TaskQueueContract):
    expected_capabilities = frozenset({Capability.DELAY, Capability.PRIORITY, Capability.UNIQUE})


class TestSQLiteWorkerContract(SQLiteHooks, WorkerContract):
    pass
