"""lexigram-tasks with its PostgreSQL backend (PostgresTaskQueue on asyncpg).

Worker: ONE process running provider.serve() with TaskProvider(worker_count=
concurrency). Jobs are leased in batches with one UPDATE ... FOR UPDATE SKIP
LOCKED statement, finished jobs deleted with one DELETE per ack batch; idle
workers are woken by LISTEN/NOTIFY (an insert trigger). Enqueues commit
synchronously; leases and acks use synchronous_commit=off (async_commit=True,
the default). Bulk enqueue = one multi-row INSERT per 1000 jobs. No result store.
"""

import os
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import _benchlib as B  # found on the PYTHONPATH the runner sets

SYSTEM, BACKEND = "lexigram", "postgres"
DBNAME = "bench_lexigram"
DSN = B.pg_dsn(DBNAME)
CONCURRENCY = {"noop_drain": 50, "sleep_drain": 100, "latency": 50}
NOTES = (
    "TaskProvider(worker_count=concurrency).serve(); PostgresTaskQueue: batched SKIP LOCKED "
    "leases, LISTEN/NOTIFY wake-ups, acked jobs deleted, async commit for leases/acks; "
    "bulk = enqueue_many (one INSERT of 1000 rows); no result store"
)

from lexigram.tasks import TaskProvider  # noqa: E402
from lexigram.tasks.postgres import PostgresTaskQueue  # noqa: E402

provider: TaskProvider
bench_job = None


def configure(args):
    global provider, bench_job
    worker = args.mode == "_worker"
    queue = PostgresTaskQueue(postgres_dsn=DSN, queue_name="bench")
    provider = TaskProvider(queue=queue, worker_count=args.concurrency if worker else 1)

    @provider.task(name="bench_job")
    async def _job(mode, enq=None):
        await B.async_job(mode, enq)

    bench_job = _job


async def clean():
    await provider.disconnect()
    B.pg_recreate_db(DBNAME)
    await provider.connect()  # auto_migrate creates the schema


async def teardown():
    await provider.disconnect()


async def enqueue(kind, enq=None):
    await bench_job.enqueue(kind, enq)


async def enqueue_bulk(kind, n):
    for start in range(0, n, 1000):
        await provider.enqueue_many([bench_job.job(kind) for _ in range(min(1000, n - start))])


async def queued_count():
    return (await provider.queue.counts()).ready


async def worker_main(scenario, concurrency):
    await provider.serve()


if __name__ == "__main__":
    B.main(globals())
