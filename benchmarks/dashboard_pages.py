"""Server time of every dashboard page with 1,000,000 jobs in a queue, on Redis and PostgreSQL.

Not part of the test suite. For each backend it fills a queue of its own
(Redis: ``enqueue_many`` in batches of 10,000, then a worker runs 2,000 of
them, half failing into a Redis dead letter queue; PostgreSQL: ``INSERT ...
SELECT generate_series`` over every state, as ``postgres_list_jobs.py``
does, and 2,000 dead letter records; then ``VACUUM ANALYZE``, as autovacuum
would), then requests each page ``--repeat``
times in-process (httpx's ASGI transport) and prints the time the app took
per request: median, p95 and slowest, in milliseconds. It also counts what
the live overview asks of the backend while 50 page refreshes arrive within
one refresh interval. Everything it made is deleted afterwards.

    python benchmarks/dashboard_pages.py [--jobs 1000000] [--repeat 20] [--only redis|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from lexigram.tasks import JobState, TaskProvider
from lexigram.tasks.dashboard import dashboard
from lexigram.tasks.dlq import DeadLetterQueue, FailureRecord
from lexigram.tasks.scheduler import MemoryTemplateStore, ScheduleRegistry, TaskScheduler

REDIS_URL = os.environ.get("LEXIGRAM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get(
    "LEXIGRAM_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
BATCH = 10_000


class Timed:
    """ASGI wrapper recording the server time of each request, by label."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.times: dict[str, list[float]] = {}
        self.label = ""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        began = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                elapsed = (time.perf_counter() - began) * 1000
                self.times.setdefault(self.label, []).append(elapsed)


def add_tasks(provider: TaskProvider) -> None:
    @provider.task(name="bench.work", max_retries=0)
    async def work(n: int) -> int:
        if n % 2:
            raise ValueError(f"odd input {n}")
        return n

    @provider.task(name="bench.report")
    async def report(region: str) -> str:
        return region


async def fill_redis(provider: TaskProvider, total: int) -> None:
    task = provider.tasks["bench.work"]
    delayed = task.options(delay=86400)
    for start in range(0, total, BATCH):
        size = min(BATCH, total - start)
        jobs = [
            (delayed if n % 50 == 0 else task).job(start + n)  # 2% delayed
            for n in range(size)
        ]
        await provider.enqueue_many(jobs)


async def run_some(provider: TaskProvider, count: int) -> None:
    """Start the workers until ``count`` jobs ran (half of them fail into the DLQ)."""
    async with provider:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            [worker] = await provider.workers()
            if worker.done + worker.failed >= count:
                break
            await asyncio.sleep(0.2)


async def fill_postgres_dlq(dlq: DeadLetterQueue, count: int) -> None:
    from lexigram.tasks import Job

    now = time.time()
    for n in range(count):
        job = Job(task="bench.work", args=[n], queue="bench")
        await dlq.add_record(
            FailureRecord(
                id=job.id,
                job=job,
                queue="bench",
                reason=f"ValueError: odd input {n}",
                error_type="ValueError",
                error_message=f"odd input {n}",
                traceback="Traceback (most recent call last):\n  ...\nValueError: odd input",
                attempts=1,
                worker_id="bench:1:0",
                failed_at=now - n,
            )
        )


async def measure(provider: TaskProvider, repeat: int, task: str) -> None:
    app = dashboard(provider, allow_actions=True, refresh=0.000001)
    timed = Timed(app)
    transport = httpx.ASGITransport(app=timed)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
        first = (await provider.jobs(state=JobState.QUEUED, limit=1)).jobs[0].id
        deep = await deep_cursor(provider, JobState.QUEUED, pages=200)
        finished = await provider.jobs(state=JobState.FAILED, limit=1)
        failed_id = finished.jobs[0].id if finished.jobs else first
        pages: list[tuple[str, str]] = [
            ("overview", "/"),
            ("overview live part", "/live"),
            ("jobs, all", "/jobs"),
            ("jobs, queued", "/jobs?state=queued"),
            ("jobs, queued, 200 pages deep", f"/jobs?state=queued&cursor={deep}"),
            ("jobs, scheduled", "/jobs?state=scheduled"),
            ("jobs, failed", "/jobs?state=failed"),
            ("jobs, task filter", f"/jobs?task={task}"),
            ("jobs, task matching none", "/jobs?task=bench.nothing"),
            ("job detail", f"/jobs/{first}"),
            ("job detail, failed", f"/jobs/{failed_id}"),
            ("search by id", f"/jobs?id={first}"),
            ("failures", "/failures"),
            ("failures, filtered", "/failures?error_type=ValueError"),
            ("schedules", "/schedules"),
            ("workers", "/workers"),
        ]
        for label, path in pages:
            timed.label = label
            for _ in range(repeat):
                response = await http.get(path)
                assert response.status_code in (200, 303), (path, response.status_code)
        print(f"{'page':<30} {'median':>8} {'p95':>8} {'slowest':>8}  (ms, {repeat} requests)")
        for label, _ in pages:
            times = sorted(timed.times[label])
            p95 = times[max(int(len(times) * 0.95) - 1, 0)]
            print(f"{label:<30} {statistics.median(times):8.1f} {p95:8.1f} {times[-1]:8.1f}")

    # The live overview: 50 open pages refreshing within one 5 s interval (a new dashboard).
    live = dashboard(provider, refresh=5.0)
    calls = count_calls(provider)
    transport = httpx.ASGITransport(app=live)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
        began = time.perf_counter()
        await asyncio.gather(*(http.get("/live") for _ in range(50)))
        elapsed = (time.perf_counter() - began) * 1000
        deadline = time.monotonic() + 30
        while "being read" in (await http.get("/live")).text:  # the background reading
            assert time.monotonic() < deadline, "the first reading never finished"
            await asyncio.sleep(0.05)
        print(
            f"50 live refreshes within one interval: {calls['counts']} counts call(s), "
            f"{calls['workers']} worker listing(s), {elapsed:.0f} ms in all"
        )
    single = []
    for _ in range(repeat):
        began = time.perf_counter()
        await provider.queue.counts()
        single.append((time.perf_counter() - began) * 1000)
    print(f"one counts() call: median {statistics.median(single):.1f} ms")


def count_calls(provider: TaskProvider) -> dict[str, int]:
    calls = {"counts": 0, "workers": 0}
    queue: Any = provider.queue
    original_counts, original_workers = queue.counts, provider.workers

    def counting(name: str, call: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        async def wrapper() -> Any:
            calls[name] += 1
            return await call()

        return wrapper

    queue.counts = counting("counts", original_counts)
    provider.workers = counting("workers", original_workers)  # type: ignore[method-assign]
    return calls


async def deep_cursor(provider: TaskProvider, state: JobState, pages: int) -> str:
    cursor: str | None = None
    for _ in range(pages):
        page = await provider.jobs(state=state, limit=50, cursor=cursor)
        if page.cursor is None:
            break
        cursor = page.cursor
    assert cursor is not None
    return cursor


def scheduler_for(provider: TaskProvider) -> TaskScheduler:
    return TaskScheduler(
        provider, registry=ScheduleRegistry(), store=MemoryTemplateStore(), attach=False
    )


async def bench_redis(total: int, repeat: int) -> None:
    from redis.asyncio import Redis

    from lexigram.tasks.dlq.redis import RedisDeadLetterStorage
    from lexigram.tasks.redis import RedisTaskQueue

    unique = f"lxbench-{uuid.uuid4().hex[:8]}"
    queue = RedisTaskQueue(REDIS_URL, queue_name=unique)
    dlq = DeadLetterQueue(RedisDeadLetterStorage(REDIS_URL, prefix=f"{unique}:dlq"))
    provider = TaskProvider(queue=queue, dead_letter=dlq, worker_count=50, poll_interval=0.05)
    add_tasks(provider)
    scheduler = scheduler_for(provider)
    try:
        await provider.connect()
        began = time.perf_counter()
        await fill_redis(provider, total)
        print(f"Redis: enqueued {total:,} jobs in {time.perf_counter() - began:.1f} s")
        await run_some(provider, 2000)
        await provider.connect()  # leaving `async with` disconnected it
        await scheduler.add("nightly", "bench.report", "0 6 * * *", kwargs={"region": "eu"})
        print(f"Redis counts: {await queue.counts()}")
        await measure(provider, repeat, "bench.work")
    finally:
        await provider.connect()
        removed = await queue.purge()
        client = Redis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=f"{unique}:*", count=10_000)]
        for start in range(0, len(keys), 10_000):
            await client.delete(*keys[start : start + 10_000])
        await client.aclose()
        await provider.disconnect()
        print(f"Redis: deleted {removed:,} jobs and {len(keys):,} keys")


async def bench_postgres(total: int, repeat: int) -> None:
    import asyncpg
    from postgres_list_jobs import fill  # this folder's PostgreSQL listing benchmark

    from lexigram.tasks.dlq.postgres import PostgresDeadLetterStorage
    from lexigram.tasks.postgres import PostgresTaskQueue
    from lexigram.tasks.postgres.migrate import quote_ident

    schema = f"lexigram_bench_{uuid.uuid4().hex[:8]}"
    queue = PostgresTaskQueue(POSTGRES_DSN, "bench", schema=schema)
    dlq = DeadLetterQueue(PostgresDeadLetterStorage(POSTGRES_DSN, schema=schema))
    provider = TaskProvider(queue=queue, dead_letter=dlq)
    add_tasks(provider)
    scheduler = scheduler_for(provider)
    admin = await asyncpg.connect(POSTGRES_DSN)
    try:
        await provider.connect()
        began = time.perf_counter()
        await fill(admin, schema, "bench", total)
        await fill_postgres_dlq(dlq, 2000)
        print(f"PostgreSQL: filled {total:,} jobs in {time.perf_counter() - began:.1f} s")
        began = time.perf_counter()
        await queue.counts()
        print(f"counts() before VACUUM: {(time.perf_counter() - began) * 1000:.0f} ms")
        # What autovacuum does on a real table (sets the visibility map for index-only counts).
        await admin.execute(f"VACUUM ANALYZE {quote_ident(schema)}.jobs")
        await scheduler.add("nightly", "bench.report", "0 6 * * *", kwargs={"region": "eu"})
        print(f"PostgreSQL counts: {await queue.counts()}")
        await measure(provider, repeat, "bench.task_3")
    finally:
        await provider.disconnect()
        await dlq.disconnect()
        await admin.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
        await admin.close()
        print(f"PostgreSQL: dropped schema {schema}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--only", choices=["redis", "postgres"])
    args = parser.parse_args()
    os.environ.setdefault("LEXIGRAM_ENV", "development")
    logging.getLogger("lexigram.tasks").setLevel(logging.CRITICAL)  # 1,000 "failed for good"
    if args.only in (None, "redis"):
        await bench_redis(args.jobs, args.repeat)
    if args.only in (None, "postgres"):
        await bench_postgres(args.jobs, args.repeat)


if __name__ == "__main__":
    asyncio.run(main())
