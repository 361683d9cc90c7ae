"""Several scheduler processes on one backend: each tick is enqueued exactly once.

Three real subprocesses run the same per-second template against the same
queue and the same template store; each prints the ticks it enqueued. The
union of those reports and the queue's contents must both hold every second
once, with no gap.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from lexigram.tasks import Job
from lexigram.tasks.protocol import TaskQueueProtocol
from lexigram.tasks.scheduler import HEADER_FIRE_TIME
from lexigram.tasks.testing import eventually

from .conftest import delete_prefix, drop_schema, unique  # type: ignore[import-not-found]

REPLICA_APP = Path(__file__).with_name("_replica_app.py")
TICKS = 5

Spawn = Callable[..., "subprocess.Popen[str]"]


@pytest.fixture
def services(redis_url: str, postgres_dsn: str, amqp_url: str) -> dict[str, str]:
    return {
        "LEXIGRAM_TEST_REDIS_URL": redis_url,
        "LEXIGRAM_TEST_POSTGRES_DSN": postgres_dsn,
        "LEXIGRAM_TEST_AMQP_URL": amqp_url,
    }


@pytest.fixture
def spawn(services: dict[str, str]) -> Iterator[Spawn]:
    """Start replica processes; any still running at the end is killed."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, str(REPLICA_APP), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **services, "LEXIGRAM_ENV": "test"},
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


def stop(processes: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """SIGTERM every replica; return the ticks they reported."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    records: list[dict[str, Any]] = []
    for process in processes:
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, f"replica exited with {process.returncode}:\n{err}"
        records.extend(json.loads(line) for line in out.splitlines() if line.strip())
    return records


@asynccontextmanager
async def open_queue(
    backend: str, services: dict[str, str], location: str
) -> AsyncIterator[TaskQueueProtocol]:
    """The replicas' queue, for the test to read; removed afterwards."""
    name = unique("lxtest-sched-")
    queue: Any
    if backend == "redis":
        from lexigram.tasks.redis import RedisTaskQueue

        queue = RedisTaskQueue(services["LEXIGRAM_TEST_REDIS_URL"], queue_name=name)
    elif backend == "postgres":
        from lexigram.tasks.postgres import PostgresTaskQueue

        queue = PostgresTaskQueue(
            services["LEXIGRAM_TEST_POSTGRES_DSN"], queue_name=name, schema=location
        )
    else:
        from lexigram.tasks.rabbitmq import RabbitMQTaskQueue

        queue = RabbitMQTaskQueue(services["LEXIGRAM_TEST_AMQP_URL"], queue_name=name)
    await queue.connect()
    try:
        yield queue
    finally:
        if backend == "redis":
            await queue.purge()
        elif backend == "rabbitmq":
            await queue.delete_topology()
        await queue.disconnect()


async def read_all(queue: TaskQueueProtocol) -> list[Job]:
    jobs: list[Job] = []
    while deliveries := await queue.dequeue(max_jobs=100, lease_seconds=30, wait=0.5):
        jobs.extend(d.job for d in deliveries if d.job is not None)
        await queue.ack_many(deliveries)
    return jobs


@asynccontextmanager
async def store_location(store: str, services: dict[str, str]) -> AsyncIterator[str]:
    if store == "postgres":
        schema = unique("lxtest_sched_")
        try:
            yield schema
        finally:
            await drop_schema(services["LEXIGRAM_TEST_POSTGRES_DSN"], schema)
    else:
        prefix = unique("lxtest-sched-")
        try:
            yield prefix
        finally:
            await delete_prefix(services["LEXIGRAM_TEST_REDIS_URL"], prefix)


async def run_replicas(
    spawn: Spawn, services: dict[str, str], backend: str, store: str, count: int
) -> tuple[list[dict[str, Any]], list[Job]]:
    """Run ``count`` replicas until the queue holds TICKS jobs; return reports and jobs."""
    async with (
        store_location(store, services) as location,
        open_queue(backend, services, location) as queue,
    ):
        processes = [spawn(backend, store, queue.queue_name, location) for _ in range(count)]

        async def enough() -> bool:
            for process in processes:
                assert process.poll() is None, f"a replica died:\n{process.communicate()[1]}"
            return (await queue.counts()).ready >= TICKS

        await eventually(enough, timeout=45, interval=0.2)
        records = stop(processes)
        return records, await read_all(queue)


def assert_every_second_once(records: list[dict[str, Any]], jobs: list[Job]) -> None:
    fire_times = sorted(r["fire_time"] for r in records)
    duplicates = [t for t, n in Counter(fire_times).items() if n > 1]
    assert not duplicates, f"ticks enqueued more than once: {duplicates}"
    assert len(fire_times) >= TICKS
    gaps = [b - a for a, b in pairwise(fire_times) if b - a != 1.0]
    assert not gaps, f"seconds were skipped: {gaps}"
    # The queue holds exactly the reported jobs: nothing more, nothing twice.
    assert sorted(j.id for j in jobs) == sorted(r["job_id"] for r in records)
    assert len({j.headers[HEADER_FIRE_TIME] for j in jobs}) == len(jobs)


@pytest.mark.parametrize(
    ("backend", "store"),
    [("redis", "redis"), ("postgres", "postgres"), ("rabbitmq", "redis")],
    ids=["redis", "postgres", "rabbitmq-queue-redis-store"],
)
async def test_three_replicas_enqueue_each_tick_exactly_once(
    spawn: Spawn, services: dict[str, str], backend: str, store: str
) -> None:
    records, jobs = await run_replicas(spawn, services, backend, store, count=3)
    assert_every_second_once(records, jobs)


@pytest.mark.parametrize("backend", ["redis", "rabbitmq"])
async def test_memory_store_replicas_each_fire_every_tick(
    spawn: Spawn, services: dict[str, str], backend: str
) -> None:
    """What the docs say about the memory store: it is not shared between processes,
    so each replica fires each tick. On Redis (unique keys) the scheduler's per-tick
    dedup key collapses the copies while they are pending; RabbitMQ keeps them all."""
    records, jobs = await run_replicas(spawn, services, backend, "memory", count=2)
    by_tick = Counter(r["fire_time"] for r in records)
    assert any(n == 2 for n in by_tick.values()), "both replicas should have fired a tick"
    copies = Counter(j.headers[HEADER_FIRE_TIME] for j in jobs)
    if backend == "redis":
        assert set(copies.values()) == {1}
    else:
        assert 2 in copies.values()
