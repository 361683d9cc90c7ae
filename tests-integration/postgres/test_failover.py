"""Failover to a streaming standby while a producer and two workers run on a multi-host DSN.

Each test makes its own primary (port 5433) and standby (5434, from
``pg_basebackup``), see :mod:`pg_replication`. Jobs are counted in this
process: a job "committed" is one whose enqueue returned. Every committed
job must run, the workers must carry on against the promoted standby by
themselves (their pools, their LISTEN connections and the result store's),
the dead letter queue's, the scheduler's and the job state store's storages
must work on it too, and the figures (time to recover, failed enqueues, jobs
run twice) are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from lexigram.tasks import TaskProvider
from lexigram.tasks.dlq import FailureRecord
from lexigram.tasks.dlq.postgres import PostgresDeadLetterStorage
from lexigram.tasks.errors import BackendConnectionError
from lexigram.tasks.job import Job
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres.connection import open_connection
from lexigram.tasks.postgres.results import PostgresResultStore
from lexigram.tasks.postgres.state_store import PostgresJobStateStore
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.results import JobResult
from lexigram.tasks.scheduler.postgres_store import PostgresTemplateStore
from lexigram.tasks.testing import eventually

sys.path.insert(0, str(Path(__file__).parent))
from pg_replication import ReplicatedPair

pytestmark = pytest.mark.timeout(120)

#: Jobs the producer sends, in batches; the switch starts after the first third.
TOTAL = 900
BATCH = 5
#: A port where a server accepts connections and never answers (in 5433-5439).
SILENT_PORT = 5435
WORKERS = 2
#: Slots of each worker.
SLOTS = 8


@pytest.fixture(scope="module")
def template() -> Iterator[ReplicatedPair]:
    """A primary and its standby made once; each test runs on a copy."""
    servers = ReplicatedPair()
    try:
        servers.create()
        yield servers
    finally:
        servers.close()


@pytest.fixture
def pair(template: ReplicatedPair, request: pytest.FixtureRequest) -> Iterator[ReplicatedPair]:
    """Asynchronous replication unless the test asks for ``synchronous`` (indirectly)."""
    servers = template.clone(synchronous=getattr(request, "param", False))
    try:
        yield servers
    finally:
        servers.close()


@dataclass
class Tally:
    """What happened, as seen by this process."""

    committed: dict[int, float] = field(default_factory=dict)  # job -> when its enqueue returned
    failed: list[int] = field(default_factory=list)  # enqueue raised: maybe stored, maybe not
    ran: Counter[int] = field(default_factory=Counter)
    ran_at: dict[int, float] = field(default_factory=dict)
    held_by: set[int] = field(default_factory=set)  # workers running a "hold" job
    release: asyncio.Event = field(default_factory=asyncio.Event)  # "hold" jobs end
    slowest_enqueue: float = 0.0


def _provider(dsn: str, queue_name: str, schema: str, tally: Tally, worker: int) -> TaskProvider:
    provider = TaskProvider(
        queue=PostgresTaskQueue(dsn, queue_name, schema=schema, max_pool_size=6),
        result_store=PostgresResultStore(dsn, schema=schema, cleanup_interval=None),
        worker_count=SLOTS,
        poll_interval=0.5,
        lease_seconds=5.0,
    )

    @provider.task(name="work")
    async def work(n: int) -> int:
        await asyncio.sleep(0.002)
        tally.ran[n] += 1
        tally.ran_at[n] = time.monotonic()
        return n

    @provider.task(name="hold")
    async def hold(n: int) -> int:
        tally.held_by.add(worker)
        await tally.release.wait()
        return n

    return provider


@pytest_asyncio.fixture
async def schema(pair: ReplicatedPair) -> AsyncIterator[str]:
    yield f"failover_{uuid.uuid4().hex[:8]}"  # the clusters are deleted afterwards


async def _produce(
    provider: TaskProvider, tally: Tally, third: asyncio.Event, switched: asyncio.Event
) -> None:
    """Enqueue :data:`TOTAL` jobs, :data:`BATCH` per call (one INSERT each), back to back:
    the first third before the switch, the second during it, the last after it."""
    work = provider.tasks["work"]
    for first in range(0, TOTAL, BATCH):
        if first >= TOTAL // 3:
            third.set()
        if first >= 2 * TOTAL // 3:
            await switched.wait()
        numbers = range(first, min(first + BATCH, TOTAL))
        started = time.monotonic()
        try:
            await provider.enqueue_many([work.job(n) for n in numbers])
        except BackendConnectionError:
            tally.failed.extend(numbers)
        else:
            tally.committed.update(dict.fromkeys(numbers, time.monotonic()))
        tally.slowest_enqueue = max(tally.slowest_enqueue, time.monotonic() - started)
        await asyncio.sleep(0)


async def _settled(provider: TaskProvider) -> bool:
    return (await provider.counts())["default"] == QueueCounts(0, 0, 0, 0)


def _missing(tally: Tally) -> list[int]:
    return sorted(set(tally.committed) - set(tally.ran))


def _longest_gap(times: Iterable[float]) -> float:
    ordered = sorted(times)
    return max((b - a for a, b in itertools.pairwise(ordered)), default=0.0)


async def _waking_listeners(dsn: str, schema: str) -> int:
    """Connections LISTENing for new jobs of ``schema`` on the server at ``dsn``."""
    connection = await asyncpg.connect(dsn)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query = $1", f'LISTEN "{schema}.jobs"'
        )
    finally:
        await connection.close()
    return count


@contextlib.asynccontextmanager
async def _other_stores(dsn: str, schema: str) -> AsyncIterator[Callable[[str], Awaitable[None]]]:
    """The dead letter queue's, the scheduler's and the job state store's PostgreSQL
    storages, connected; yields a call that writes and reads back through each."""
    dead = PostgresDeadLetterStorage(dsn, schema=f"{schema}_dlq")
    templates = PostgresTemplateStore(dsn, schema=f"{schema}_sched")
    states = PostgresJobStateStore(dsn, schema=f"{schema}_state")
    stores = (dead, templates, states)
    for store in stores:
        await store.connect()

    async def use(tag: str) -> None:
        job = Job(task="t", queue="other")
        record = FailureRecord.from_dict(
            {"id": tag, "job": job.to_dict(), "queue": "other", "failed_at": 1.0}
        )
        await dead.put(record)
        assert await dead.get(tag) == record
        assert await templates.init_cursor(tag, 1.0) == 1.0
        await states.record_enqueued([job])
        assert await states.get_job(job.id) is not None

    try:
        yield use
    finally:
        for store in stores:
            await store.disconnect()


async def _through_switch(
    pair: ReplicatedPair, schema: str, switch: Callable[[], str], label: str
) -> None:
    tally = Tally()
    queue_name = f"failover-{uuid.uuid4().hex[:8]}"
    workers = [_provider(pair.dsn, queue_name, schema, tally, w) for w in range(WORKERS)]
    producer = _provider(pair.dsn, queue_name, schema, tally, -1)
    await producer.connect()
    for worker in workers:
        await worker.start()
    try:
        async with _other_stores(pair.dsn, schema) as use_other_stores:
            await use_other_stores("before")
            await _switch_during_a_run(pair, schema, producer, tally, switch, label)
            # Their pools noticed the old primary's connections close and reconnect.
            await use_other_stores("after")
    finally:
        for worker in workers:
            await worker.stop()
        await producer.disconnect()


async def _switch_during_a_run(
    pair: ReplicatedPair,
    schema: str,
    producer: TaskProvider,
    tally: Tally,
    switch: Callable[[], str],
    label: str,
) -> None:
    before = await producer.tasks["work"].enqueue(-1)
    assert await before.result(timeout=10) == -1  # the result store LISTENs on the primary
    third, switched = asyncio.Event(), asyncio.Event()
    producing = asyncio.create_task(_produce(producer, tally, third, switched))
    await third.wait()
    switch_started = time.monotonic()
    steps = await asyncio.to_thread(switch)
    switch_done = time.monotonic()
    switched.set()
    await producing
    await eventually(lambda: not _missing(tally), timeout=30, message="committed jobs lost")
    # Leases taken on the old primary were acked on the new one (or lapsed and ran again).
    await eventually(lambda: _settled(producer), timeout=30, message="jobs left leased or queued")
    after = await producer.tasks["work"].enqueue(-2)
    assert await after.result(timeout=15) == -2  # its LISTEN moved to the new primary too

    # Each worker LISTENs again on its next wait (after a second's pause if an
    # attempt failed during the switch); the producer never waits for jobs.
    async def every_worker_listens() -> bool:
        return await _waking_listeners(pair.standby.dsn, schema) == WORKERS

    await eventually(every_worker_listens, timeout=10, message="a worker LISTENs nowhere")

    after_switch = [n for n, at in tally.committed.items() if at > switch_done]
    recovered = min(tally.ran_at[n] for n in after_switch) - switch_started
    twice = sum(1 for count in tally.ran.values() if count > 1)
    print(
        f"\n{label}: the switch itself {switch_done - switch_started:.2f} s ({steps}); recovered "
        f"(the first job enqueued on the new primary ran) {recovered:.2f} s after it began; "
        f"slowest enqueue call {tally.slowest_enqueue:.2f} s; no job completed for "
        f"{_longest_gap(tally.ran_at.values()):.2f} s at most; "
        f"committed {len(tally.committed)}, failed enqueues {len(tally.failed)}, "
        f"lost {len(_missing(tally))}, ran twice {twice}; "
        f"all {WORKERS} workers LISTEN on the new primary"
    )
    assert set(tally.ran) <= set(range(-2, TOTAL))
    assert not tally.failed, "enqueues are retried through the switch (connect_timeout=10)"
    assert len(after_switch) >= TOTAL // 3, "the producer did not carry on after the switch"
    assert recovered < 15

    # Every worker runs jobs on the new primary: of one job more than a worker has
    # slots, each held until every worker runs one, no worker can take them all.
    holds = await producer.enqueue_many([producer.tasks["hold"].job(n) for n in range(SLOTS + 1)])
    try:
        await eventually(
            lambda: tally.held_by == set(range(WORKERS)),
            timeout=15,
            message="a worker runs no job on the new primary",
        )
    finally:
        tally.release.set()
    assert [await hold.result(timeout=10) for hold in holds] == list(range(SLOTS + 1))


def _timed(*steps: tuple[str, Callable[[], object]]) -> str:
    """Run the steps in turn; how long each took."""
    took = []
    for name, step in steps:
        started = time.monotonic()
        step()
        took.append(f"{name} {time.monotonic() - started:.2f} s")
    return ", ".join(took)


async def test_switchover_read_only_primary_then_promote(pair: ReplicatedPair, schema: str) -> None:
    """A planned switch: the primary turns read-only, the standby catches up and is
    promoted, then the old primary stops. Pools drop their connections to the
    read-only server and find the new primary; nothing is lost."""

    def switch() -> str:
        return _timed(
            ("read-only", pair.make_read_only),
            ("catch-up", lambda: pair.wait_for(pair.caught_up, "the standby to catch up")),
            ("promote", pair.standby.promote),
            ("stop", lambda: pair.primary.stop("fast")),
        )

    await _through_switch(pair, schema, switch, "switchover")


@pytest.mark.parametrize("pair", [True], ids=["sync-replication"], indirect=True)
async def test_crash_of_the_primary_then_promote(pair: ReplicatedPair, schema: str) -> None:
    """An unplanned switch: the primary is killed (``pg_ctl stop -m immediate``), then
    the standby is promoted. With synchronous replication an enqueue returns only
    once the standby has its row, so no committed job can be lost. (With
    asynchronous replication the last commits before a crash may be: see
    docs/scale.md.)"""

    def switch() -> str:
        return _timed(
            ("kill", lambda: pair.primary.stop("immediate")), ("promote", pair.standby.promote)
        )

    await _through_switch(pair, schema, switch, "crash")


async def test_every_store_writes_to_the_primary_when_the_standby_is_listed_first(
    pair: ReplicatedPair, schema: str
) -> None:
    """Without ``target_session_attrs`` a multi-host DSN asks for a server that takes
    writes, in every place lexigram-tasks connects: with the standby first in the
    list, each store still creates its tables and writes on the primary."""

    standby_first = (
        f"postgresql://postgres@127.0.0.1:{pair.standby.port},"
        f"127.0.0.1:{pair.primary.port}/postgres"
    )
    job = Job(task="t", queue="hosts")
    async with PostgresTaskQueue(standby_first, "hosts", schema=schema) as queue:
        assert await queue.enqueue(job) == job.id
    results = PostgresResultStore(standby_first, schema=schema, cleanup_interval=None)
    await results.connect()
    try:
        stored = JobResult.success(job.id, 1)
        await results.set(job.id, stored)
        assert await results.get(job.id) == stored
    finally:
        await results.disconnect()
    states = PostgresJobStateStore(standby_first, schema=f"{schema}_state")
    await states.connect()
    try:
        await states.record_enqueued([job])
        assert await states.get_job(job.id) is not None
    finally:
        await states.disconnect()
    dead = PostgresDeadLetterStorage(standby_first, schema=f"{schema}_dlq")
    await dead.connect()
    try:
        record = FailureRecord.from_dict(
            {"id": "r1", "job": job.to_dict(), "queue": "hosts", "failed_at": 1.0}
        )
        await dead.put(record)
        assert await dead.get("r1") == record
    finally:
        await dead.disconnect()
    templates = PostgresTemplateStore(standby_first, schema=f"{schema}_sched")
    await templates.connect()
    try:
        assert await templates.init_cursor("nightly", 1.0) == 1.0
    finally:
        await templates.disconnect()
    on_standby = await asyncpg.connect(pair.standby.dsn)
    try:
        # Everything written above reached the standby by replication, not by a client.
        await eventually(
            lambda: on_standby.fetchval(f"SELECT count(*) FROM {schema}.jobs"),
            timeout=10,
            message="the enqueued job never replicated to the standby",
        )
        mine = await on_standby.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'lexigram-tasks%'"
        )
    finally:
        await on_standby.close()
    assert mine == 0


async def test_a_host_that_never_answers_costs_one_timeout_then_is_skipped(
    pair: ReplicatedPair,
) -> None:
    """asyncpg alone would spend its whole timeout on the silent first host and
    never try the second; here each host gets the timeout, and the host that
    answered is tried first from then on."""

    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts the TCP connection, never says a word

    server = await asyncio.start_server(silent, "127.0.0.1", SILENT_PORT)
    dsn = f"postgresql://postgres@127.0.0.1:{SILENT_PORT},127.0.0.1:{pair.primary.port}/postgres"
    try:
        timings = []
        for _ in range(2):
            started = time.monotonic()
            connection = await open_connection(dsn, timeout=1.0)
            timings.append(time.monotonic() - started)
            assert await connection.fetchval("SELECT NOT pg_is_in_recovery()")
            await connection.close()
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()
    assert 1.0 <= timings[0] < 5.0, timings
    assert timings[1] < 1.0, timings
