"""Transactional enqueue on psycopg 3 and SQLAlchemy connections, on the real PostgreSQL.

Each driver case opens the application's transaction its own way, enqueues
as its first statement (with SQLAlchemy on asyncpg, BEGIN is otherwise sent
only with the first statement of SQLAlchemy's own), writes an order row, and
commits or rolls back. The job must go with the order, either way.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from lexigram.tasks import MemoryTaskQueue, TaskProvider
from lexigram.tasks.errors import JobTooLargeError
from lexigram.tasks.handle import JobHandle
from lexigram.tasks.integrations import psycopg as pg_tasks
from lexigram.tasks.integrations import sqlalchemy as sa_tasks
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres.migrate import quote_ident
from lexigram.tasks.results import MemoryResultStore
from lexigram.tasks.task import Task
from lexigram.tasks.testing import collect


class Case:
    """The application's side of one driver: a transaction holding an order and a job."""

    name = ""

    def __init__(self, dsn: str, orders: str) -> None:
        self.dsn = dsn
        self.orders = orders

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def enqueue(self, task: Task[Any, Any], *args: Any) -> JobHandle[Any]:
        raise NotImplementedError

    async def insert_order(self, order_id: str) -> None:
        raise NotImplementedError

    async def end(self, commit: bool) -> None:
        raise NotImplementedError

    def transaction_open(self) -> bool | None:
        """Whether the driver has begun a transaction (None: not observable here)."""
        return None


class PsycopgSync(Case):
    name = "psycopg-sync"

    async def open(self) -> None:
        self.conn = psycopg.connect(self.dsn)

    async def close(self) -> None:
        self.conn.close()

    async def enqueue(self, task: Task[Any, Any], *args: Any) -> JobHandle[Any]:
        return pg_tasks.enqueue_sync(self.conn, task, *args)

    async def insert_order(self, order_id: str) -> None:
        self.conn.execute(f"INSERT INTO {self.orders} (id) VALUES (%s)".encode(), (order_id,))

    async def end(self, commit: bool) -> None:
        self.conn.commit() if commit else self.conn.rollback()

    def transaction_open(self) -> bool | None:
        return self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE


class PsycopgAsync(PsycopgSync):
    name = "psycopg-async"

    async def open(self) -> None:
        self.aconn = await psycopg.AsyncConnection.connect(self.dsn)
        self.conn = self.aconn  # type: ignore[assignment]  # for transaction_open

    async def close(self) -> None:
        await self.aconn.close()

    async def enqueue(self, task: Task[Any, Any], *args: Any) -> JobHandle[Any]:
        return await pg_tasks.enqueue(self.aconn, task, *args)

    async def insert_order(self, order_id: str) -> None:
        await self.aconn.execute(
            f"INSERT INTO {self.orders} (id) VALUES (%s)".encode(), (order_id,)
        )

    async def end(self, commit: bool) -> None:
        await (self.aconn.commit() if commit else self.aconn.rollback())


class SqlalchemyAsync(Case):
    driver = ""

    async def open(self) -> None:
        url = self.dsn.replace("postgresql://", f"postgresql+{self.driver}://", 1)
        self.engine = create_async_engine(url)
        self.session = AsyncSession(self.engine)

    async def close(self) -> None:
        await self.session.close()
        await self.engine.dispose()

    async def enqueue(self, task: Task[Any, Any], *args: Any) -> JobHandle[Any]:
        return await sa_tasks.enqueue(self.session, task, *args)

    async def insert_order(self, order_id: str) -> None:
        await self.session.execute(
            text(f"INSERT INTO {self.orders} (id) VALUES (:id)"), {"id": order_id}
        )

    async def end(self, commit: bool) -> None:
        await (self.session.commit() if commit else self.session.rollback())


class SqlalchemyAsyncpg(SqlalchemyAsync):
    name = "sqlalchemy-asyncpg"
    driver = "asyncpg"


class SqlalchemyPsycopgAsync(SqlalchemyAsync):
    name = "sqlalchemy-psycopg-async"
    driver = "psycopg"


class SqlalchemyPsycopgSync(Case):
    name = "sqlalchemy-psycopg-sync"

    async def open(self) -> None:
        self.engine = create_engine(self.dsn.replace("postgresql://", "postgresql+psycopg://", 1))
        self.session = Session(self.engine)

    async def close(self) -> None:
        self.session.close()
        self.engine.dispose()

    async def enqueue(self, task: Task[Any, Any], *args: Any) -> JobHandle[Any]:
        return sa_tasks.enqueue_sync(self.session, task, *args)

    async def insert_order(self, order_id: str) -> None:
        self.session.execute(text(f"INSERT INTO {self.orders} (id) VALUES (:id)"), {"id": order_id})

    async def end(self, commit: bool) -> None:
        self.session.commit() if commit else self.session.rollback()


CASES: list[type[Case]] = [
    PsycopgSync,
    PsycopgAsync,
    SqlalchemyAsyncpg,
    SqlalchemyPsycopgAsync,
    SqlalchemyPsycopgSync,
]


@pytest_asyncio.fixture
async def queue(postgres_dsn: str, pg_schema: str) -> AsyncIterator[PostgresTaskQueue]:
    q = PostgresTaskQueue(
        postgres_dsn=postgres_dsn, queue_name=f"txd_{uuid.uuid4().hex[:8]}", schema=pg_schema
    )
    async with q:
        await q._run(
            lambda c: c.execute(
                f"CREATE TABLE IF NOT EXISTS {quote_ident(pg_schema)}.orders (id text PRIMARY KEY)"
            )
        )
        yield q


@pytest_asyncio.fixture(params=CASES, ids=lambda case: case.name)
async def app(
    request: pytest.FixtureRequest, postgres_dsn: str, pg_schema: str, queue: PostgresTaskQueue
) -> AsyncIterator[Case]:
    case: Case = request.param(postgres_dsn, f"{quote_ident(pg_schema)}.orders")
    await case.open()
    try:
        yield case
    finally:
        await case.close()


def _provider(queue: PostgresTaskQueue, **options: Any) -> tuple[TaskProvider, Task[Any, Any]]:
    provider = TaskProvider(queue=queue, **options)

    @provider.task(name="send_receipt")
    def send_receipt(order_id: str) -> str:
        return f"receipt for {order_id}"

    return provider, send_receipt


def _order_id() -> str:
    return f"o-{uuid.uuid4().hex[:8]}"


async def _orders(queue: PostgresTaskQueue, order_id: str) -> int:
    schema = quote_ident(queue.schema)
    count: int = await queue._run(
        lambda c: c.fetchval(f"SELECT count(*) FROM {schema}.orders WHERE id = $1", order_id)
    )
    return count


async def test_rollback_leaves_neither_order_nor_job(app: Case, queue: PostgresTaskQueue) -> None:
    _, send_receipt = _provider(queue)
    order = _order_id()
    await app.enqueue(send_receipt, order)
    await app.insert_order(order)
    await app.end(commit=False)
    assert await _orders(queue, order) == 0
    assert (await queue.counts()).pending == 0
    assert await queue.dequeue(lease_seconds=5, wait=0.2) == []


async def test_commit_makes_the_job_visible_to_workers_then(
    app: Case, queue: PostgresTaskQueue
) -> None:
    _, send_receipt = _provider(queue)
    order = _order_id()
    handle = await app.enqueue(send_receipt, order)
    await app.insert_order(order)
    assert (await queue.counts()).ready == 0, "a job of an open transaction is visible"
    await app.end(commit=True)
    [delivery] = await collect(queue, 1, lease_seconds=5)
    assert delivery.job_id == handle.id
    assert delivery.job is not None
    assert (delivery.job.task, delivery.job.args) == ("send_receipt", [order])


async def test_a_refused_job_raises_before_any_statement(
    app: Case, queue: PostgresTaskQueue
) -> None:
    """The transaction stays usable and commits the rest; on psycopg nothing was sent at all."""
    _, send_receipt = _provider(queue, max_job_bytes=4096)
    with pytest.raises(JobTooLargeError, match="over the limit of 4,096"):
        await app.enqueue(send_receipt, "x" * 5000)
    assert app.transaction_open() in (None, False)
    order = _order_id()
    handle = await app.enqueue(send_receipt, order)
    await app.insert_order(order)
    await app.end(commit=True)
    assert await _orders(queue, order) == 1
    [delivery] = await collect(queue, 1, lease_seconds=5)
    assert delivery.job_id == handle.id


@pytest.mark.parametrize("case", [PsycopgSync, SqlalchemyAsyncpg], ids=lambda c: c.name)
async def test_a_worker_runs_the_committed_job(
    case: type[Case], postgres_dsn: str, queue: PostgresTaskQueue
) -> None:
    provider, send_receipt = _provider(queue, worker_count=1, result_store=MemoryResultStore())
    app = case(postgres_dsn, f"{quote_ident(queue.schema)}.orders")
    await app.open()
    try:
        order = _order_id()
        handle = await app.enqueue(send_receipt, order)
        await app.insert_order(order)
        await app.end(commit=True)
    finally:
        await app.close()
    async with provider:
        assert await handle.result(timeout=10) == f"receipt for {order}"


async def test_the_task_must_go_to_a_postgres_queue(postgres_dsn: str) -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())

    @provider.task(name="send_receipt")
    def send_receipt(order_id: str) -> None: ...

    with psycopg.connect(postgres_dsn) as conn:
        with pytest.raises(TypeError, match="only on a PostgresTaskQueue"):
            pg_tasks.enqueue_sync(conn, send_receipt, "o-4")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def test_connections_of_the_other_colour_are_refused_by_name(
    postgres_dsn: str, queue: PostgresTaskQueue
) -> None:
    _, send_receipt = _provider(queue)
    job = send_receipt.job("o-5")
    blocking = r"a blocking psycopg\.Connection cannot be awaited on"
    with psycopg.connect(postgres_dsn) as conn, pytest.raises(TypeError, match=blocking):
        await queue.enqueue(job, connection=conn)
    aconn = await psycopg.AsyncConnection.connect(postgres_dsn)
    try:
        with pytest.raises(TypeError, match="needs the async enqueue"):
            queue.enqueue_sync(job, connection=aconn)  # type: ignore[arg-type]
    finally:
        await aconn.close()
    with pytest.raises(TypeError, match=r"takes a psycopg \(3\) Connection, got builtins\.str"):
        queue.enqueue_sync(job, connection="postgresql://")  # type: ignore[arg-type]


async def test_options_and_dedup_keys_go_through_the_same_insert(
    postgres_dsn: str, queue: PostgresTaskQueue
) -> None:
    _, send_receipt = _provider(queue)
    with psycopg.connect(postgres_dsn) as conn:
        first = pg_tasks.enqueue_sync(
            conn, send_receipt.options(dedup_key="o-6", priority=7), "o-6"
        )
        again = pg_tasks.enqueue_sync(conn, send_receipt.options(dedup_key="o-6"), "o-6")
        ids = queue.enqueue_many_sync(
            [send_receipt.job("o-7"), send_receipt.job("o-8")], connection=conn
        )
    assert again.id == first.id
    deliveries = await collect(queue, 3, lease_seconds=5)
    assert [d.job_id for d in deliveries] == [first.id, *ids]  # priority 7 first
    assert deliveries[0].job is not None and deliveries[0].job.priority == 7


@pytest.mark.parametrize("case", [PsycopgSync, SqlalchemyPsycopgSync], ids=lambda c: c.name)
async def test_a_blocking_enqueue_is_traced_as_task_enqueue_is(
    case: type[Case], postgres_dsn: str, queue: PostgresTaskQueue
) -> None:
    """One PRODUCER span, child of the caller's span, whose context the job carries."""
    exporter = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    _, send_receipt = _provider(queue, tracer_provider=tracers)
    app = case(postgres_dsn, f"{quote_ident(queue.schema)}.orders")
    await app.open()
    try:
        with tracers.get_tracer("web").start_as_current_span("POST /orders") as request:
            await app.enqueue(send_receipt, _order_id())
        await app.end(commit=True)
    finally:
        await app.close()
    [send] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert send.name == f"send {queue.queue_name}"
    assert send.parent is not None
    assert send.parent.span_id == request.get_span_context().span_id
    [delivery] = await collect(queue, 1, lease_seconds=5)
    assert delivery.job is not None
    assert delivery.job.trace_id == format(send.context.trace_id, "032x")
    assert delivery.job.headers["traceparent"].split("-")[2] == format(send.context.span_id, "016x")


async def test_the_commit_wakes_a_waiting_worker(
    postgres_dsn: str, queue: PostgresTaskQueue
) -> None:
    """PostgreSQL sends the NOTIFY at commit, whichever driver wrote the row."""
    _, send_receipt = _provider(queue)
    waiter = asyncio.create_task(queue.dequeue(lease_seconds=5, wait=30.0))
    try:
        with psycopg.connect(postgres_dsn) as conn:
            handle = pg_tasks.enqueue_sync(conn, send_receipt, _order_id())
            await asyncio.sleep(0.3)  # time for the waiter to (wrongly) take it
            assert not waiter.done(), "a job of an uncommitted transaction was delivered"
        # Leaving the block committed; without the NOTIFY the waiter would sleep 30 s.
        deliveries = await asyncio.wait_for(waiter, 10.0)
    finally:
        waiter.cancel()
    assert [d.job_id for d in deliveries] == [handle.id]
