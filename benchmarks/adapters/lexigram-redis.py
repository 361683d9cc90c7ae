"""lexigram-tasks on Redis (RedisTaskQueue, rq key layout). Worker: TaskProvider.run()
in one process, asyncio; ``worker_count`` = the scenario's concurrency.

Run from the repository root:
    ../shared/bench/run --adapters benchmarks/adapters lexigram-redis redis
"""

import os
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import _benchlib as B

SYSTEM, BACKEND = "lexigram", "redis"
DB = 9
URL = f"redis://127.0.0.1:6379/{DB}"
CONCURRENCY = {"noop_drain": 50, "sleep_drain": 100, "latency": 50}
NOTES = (
    "worker_count=concurrency; defaults otherwise (lease 30s, poll_interval 0.5s, "
    "finished jobs kept 500s in rq's finished registry); bulk = enqueue_many, 1000 per call"
)

from lexigram.tasks import TaskProvider  # noqa: E402
from lexigram.tasks.redis import RedisTaskQueue  # noqa: E402

queue = RedisTaskQueue(redis_url=URL, queue_name="bench")
provider = TaskProvider(queue=queue)


@provider.task(name="bench_job")
async def bench_job(mode, enq=None):
    await B.async_job(mode, enq)


async def setup():
    await provider.connect()


async def teardown():
    await provider.disconnect()


def clean():
    B.redis_flush(URL)


async def enqueue(kind, enq=None):
    await bench_job.enqueue(kind, enq)


async def enqueue_bulk(kind, n):
    for start in range(0, n, 1000):
        await provider.enqueue_many([bench_job.job(kind) for _ in range(min(1000, n - start))])


async def queued_count():
    return (await queue.counts()).ready


def worker_main(scenario, concurrency):
    provider.worker_count = concurrency
    provider.run()


if __name__ == "__main__":
    B.main(globals())
