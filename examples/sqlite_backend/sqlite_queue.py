"""SQLiteTaskQueue: a lexigram-tasks backend on the standard library's sqlite3.

The worked example of docs/backends/custom.md. One database file is the
"server": every queue instance opens its own connection to it, so several
processes can produce and consume through the same file. Jobs wait in one
table and dead letters in another, with their JSON wire document kept as it is.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from lexigram.tasks import (
    BaseTaskQueue,
    Capability,
    DeadLetter,
    Delivery,
    Job,
    QueueCounts,
)

T = TypeVar("T")

# ``available_at`` is both when a job may run and its place in line: a delayed
# job joins the line when it is due, and a retried job goes to the back.
SCHEMA = """
CREATE TABLE IF NOT EXISTS lexigram_jobs (
    seq          INTEGER PRIMARY KEY,
    queue        TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    priority     INTEGER NOT NULL DEFAULT 0,
    available_at REAL    NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400),
    dedup_key    TEXT,
    attempt      INTEGER NOT NULL DEFAULT 0,
    lease_token  TEXT,
    lease_until  REAL    NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS lexigram_jobs_line
    ON lexigram_jobs (queue, priority DESC, available_at, seq);
CREATE UNIQUE INDEX IF NOT EXISTS lexigram_jobs_dedup
    ON lexigram_jobs (queue, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS lexigram_dead_letters (
    seq       INTEGER PRIMARY KEY,
    queue     TEXT NOT NULL,
    job_id    TEXT,
    payload   BLOB NOT NULL,
    reason    TEXT NOT NULL,
    failed_at REAL NOT NULL
);
"""

# A delivery still holds its lease when the row carries its token and the lease
# has not lapsed; a settle that fails this check does nothing.
OWNED = "seq = ? AND lease_token = ? AND lease_until > ?"


class SQLiteTaskQueue(BaseTaskQueue):
    """A persistent queue in an SQLite file: delays, priorities and dedup keys.

    ``path`` is the database file, shared by every instance and process that
    uses the queue; ``poll_interval`` is how often a waiting ``dequeue`` looks
    again, since SQLite cannot notify other connections.
    """

    system = "sqlite"
    capabilities = frozenset({Capability.DELAY, Capability.PRIORITY, Capability.UNIQUE})

    def __init__(
        self,
        path: str | os.PathLike[str] = "lexigram-tasks.sqlite3",
        queue_name: str = "default",
        poll_interval: float = 0.05,
    ) -> None:
        self.path = os.fspath(path)
        self.queue_name = queue_name
        self.poll_interval = poll_interval
        self._db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"SQLiteTaskQueue(path={self.path!r}, queue_name={self.queue_name!r})"

    # -- lifecycle: sqlite3 blocks, so one thread per instance owns the connection

    async def connect(self) -> None:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-queue")
            await self._call(self._open)

    async def disconnect(self) -> None:
        if self._thread is not None:
            await self._call(self._close)
            self._thread.shutdown()
            self._thread = None

    def _open(self) -> None:
        # isolation_level=None: no implicit transactions, we BEGIN ourselves;
        # timeout: how long to wait for another connection's write lock.
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
        self._db.executescript(SCHEMA)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        assert self._db is not None
        # IMMEDIATE takes the write lock up front, so two consumers never
        # read the same ready row and both lease it.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- producing --------------------------------------------------------------

    # BaseTaskQueue's enqueue and enqueue_many check and encode every job
    # (capabilities, JSON, max_job_bytes), a whole batch before the first
    # write, then hand the bytes to these two.
    async def _enqueue_encoded(self, job: Job, data: bytes) -> str:
        return (await self._enqueue_many_encoded([(job, data)]))[0]

    async def _enqueue_many_encoded(self, encoded: Sequence[tuple[Job, bytes]]) -> list[str]:
        return await self._call(self._insert, encoded)

    def _insert(self, jobs: Sequence[tuple[Job, bytes]]) -> list[str]:
        ids = []
        with self._transaction() as db:
            for job, payload in jobs:
                inserted = db.execute(
                    "INSERT INTO lexigram_jobs (queue, id, payload, priority, available_at,"
                    " dedup_key, attempt) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (self.queue_name, job.id, payload, job.priority,
                     job.run_at or time.time(), job.dedup_key, job.attempt),
                )  # fmt: skip
                if inserted.rowcount == 1:
                    ids.append(job.id)
                else:  # the dedup key is taken: answer with the job holding it
                    ids.append(self._holder(db, job.dedup_key))
        return ids

    def _holder(self, db: sqlite3.Connection, dedup_key: str | None) -> str:
        sql = "SELECT id FROM lexigram_jobs WHERE queue = ? AND dedup_key = ?"
        holder: str = db.execute(sql, (self.queue_name, dedup_key)).fetchone()[0]
        return holder

    # -- consuming --------------------------------------------------------------

    async def dequeue(
        self, *, max_jobs: int = 1, lease_seconds: float = 30.0, wait: float = 0.0
    ) -> list[Delivery]:
        give_up = time.monotonic() + wait
        while True:
            deliveries = await self._call(self._lease, max_jobs, lease_seconds)
            remaining = give_up - time.monotonic()
            if deliveries or remaining <= 0:
                return deliveries
            await asyncio.sleep(min(self.poll_interval, remaining))

    def _lease(self, max_jobs: int, lease_seconds: float) -> list[Delivery]:
        now = time.time()
        with self._transaction() as db:
            rows = db.execute(
                "SELECT seq, payload, attempt + 1 FROM lexigram_jobs"
                " WHERE queue = :queue AND available_at <= :now AND lease_until <= :now"
                " ORDER BY priority DESC, available_at, seq LIMIT :max_jobs",
                {"queue": self.queue_name, "now": now, "max_jobs": max_jobs},
            ).fetchall()
            leases = [(seq, uuid.uuid4().hex, payload, attempt) for seq, payload, attempt in rows]
            db.executemany(
                "UPDATE lexigram_jobs SET attempt = ?, lease_token = ?, lease_until = ?"
                " WHERE seq = ?",
                [(attempt, token, now + lease_seconds, seq) for seq, token, _, attempt in leases],
            )
        # parse_delivery never raises: a message that is not a job comes back
        # as Delivery(job=None, problem=...); the row's attempt is the truth.
        return [
            self.parse_delivery(_as_bytes(payload), (seq, token), attempt=attempt)
            for seq, token, payload, attempt in leases
        ]

    async def extend_lease(self, deliveries: Sequence[Delivery], lease_seconds: float) -> None:
        now = time.time()
        sql = f"UPDATE lexigram_jobs SET lease_until = ? WHERE {OWNED}"
        await self._write(*[(sql, (now + lease_seconds, *d.token, now)) for d in deliveries])

    async def ack(self, delivery: Delivery) -> None:
        await self.ack_many([delivery])

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        now = time.time()
        sql = f"DELETE FROM lexigram_jobs WHERE {OWNED}"
        await self._write(*[(sql, (*d.token, now)) for d in deliveries])

    async def nack(
        self, delivery: Delivery, *, requeue: bool, delay: float = 0.0, reason: str = ""
    ) -> None:
        now = time.time()
        owned = (*delivery.token, now)
        if requeue and delivery.job is not None:
            job = delivery.job  # stored as the worker left it (headers, attempt ...)
            await self._write(
                (
                    "UPDATE lexigram_jobs SET payload = ?, attempt = ?, priority = ?,"
                    f" available_at = ?, lease_token = NULL, lease_until = 0 WHERE {OWNED}",
                    (job.to_bytes(), job.attempt, job.priority, now + delay, *owned),
                )
            )
            return
        # Dead-letter (a malformed message too): move its exact bytes, with the reason.
        await self._write(
            (
                "INSERT INTO lexigram_dead_letters (queue, job_id, payload, reason, failed_at)"
                f" SELECT queue, ?, payload, ?, ? FROM lexigram_jobs WHERE {OWNED}",
                (delivery.job_id, reason, now, *owned),
            ),
            (f"DELETE FROM lexigram_jobs WHERE {OWNED}", owned),
        )

    async def _write(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """Run ``(sql, parameters)`` statements in one transaction."""

        def run() -> None:
            with self._transaction() as db:
                for sql, parameters in statements:
                    db.execute(sql, parameters)

        await self._call(run)

    # -- inspecting -------------------------------------------------------------

    async def counts(self) -> QueueCounts:
        def count() -> QueueCounts:
            assert self._db is not None
            ready, delayed, running = self._db.execute(
                "SELECT count(*) FILTER (WHERE lease_until <= :now AND available_at <= :now),"
                " count(*) FILTER (WHERE lease_until <= :now AND available_at > :now),"
                " count(*) FILTER (WHERE lease_until > :now)"
                " FROM lexigram_jobs WHERE queue = :queue",
                {"now": time.time(), "queue": self.queue_name},
            ).fetchone()
            sql = "SELECT count(*) FROM lexigram_dead_letters WHERE queue = ?"
            (failed,) = self._db.execute(sql, (self.queue_name,)).fetchone()
            return QueueCounts(ready=ready, delayed=delayed, running=running, failed=failed)

        return await self._call(count)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        def read() -> list[DeadLetter]:
            assert self._db is not None
            rows = self._db.execute(
                "SELECT payload, reason, job_id, failed_at FROM lexigram_dead_letters"
                " WHERE queue = ? ORDER BY seq LIMIT ?",
                (self.queue_name, limit),
            ).fetchall()
            return [DeadLetter(_as_bytes(payload), *rest) for payload, *rest in rows]

        return await self._call(read)


def _as_bytes(payload: bytes | str) -> bytes:
    # A foreign producer may have inserted the JSON as TEXT rather than BLOB.
    return payload.encode() if isinstance(payload, str) else payload
