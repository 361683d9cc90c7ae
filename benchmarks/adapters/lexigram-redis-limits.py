"""lexigram-tasks on Redis, as ``lexigram-redis``, but the task declares a per-key
concurrency limit (``max_concurrency_per_key=1``) whose keys never collide: every job
takes and gives back a slot in Redis (RedisConcurrencyLimiter, the queue's own
connection), and none is ever turned away. The cost of the limits alone.

Run from the repository root:
    ../shared/bench/run --adapters benchmarks/adapters \
        lexigram-redis-limits:none lexigram-redis-limits
"""

import itertools
import os
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import _benchlib as B

SYSTEM, BACKEND = "lexigram", "redis-limits"
DB = int(os.environ.get("LEXIGRAM_BENCH_DB", "12"))  # several runs at once: one db each
# LEXIGRAM_BENCH_URL: another server (a private redis-server keeps others' commands out of
# its INFO figures); the harness itself uses 127.0.0.1:6379.
URL = os.environ.get("LEXIGRAM_BENCH_URL") or f"redis://127.0.0.1:6379/{DB}"
CONCURRENCY = {"noop_drain": 50, "sleep_drain": 100, "latency": 50}
NOTES = (
    "worker_count=concurrency; defaults otherwise (lease 30s, poll_interval 0.5s, "
    "finished jobs kept 500s in rq's finished registry); bulk = enqueue_many, 1000 per call; "
    "concurrency_key = the job's own key argument (a new one per job), "
    "max_concurrency_per_key=1"
)

from lexigram.tasks import TaskProvider  # noqa: E402
from lexigram.tasks.redis import RedisTaskQueue  # noqa: E402

queue = RedisTaskQueue(redis_url=URL, queue_name="bench")
provider = TaskProvider(queue=queue)


_keys = itertools.count()


async def _bench_job(mode, enq=None, key=None):
    await B.async_job(mode, enq)


bench_job = None


def configure(args):
    # Variant "none": the same task without the limit, the same-run baseline.
    global bench_job, BACKEND
    # Every job gets a key of its own (an argument in both variants: the same payloads).
    limits = {"concurrency_key": lambda mode, enq=None, key=None: key, "max_concurrency_per_key": 1}
    if args.variant == "none":
        limits, BACKEND = {}, "redis-nolimits"
    bench_job = provider.task(name="bench_job", **limits)(_bench_job)


async def setup():
    await provider.connect()


async def teardown():
    await provider.disconnect()


def clean():
    B.redis_flush(URL)


async def enqueue(kind, enq=None):
    await bench_job.enqueue(kind, enq, next(_keys))


async def enqueue_bulk(kind, n):
    for start in range(0, n, 1000):
        await provider.enqueue_many(
            [bench_job.job(kind, None, next(_keys)) for _ in range(min(1000, n - start))]
        )


async def queued_count():
    return (await queue.counts()).ready


def worker_main(scenario, concurrency):
    provider.worker_count = concurrency
    provider.run()


if __name__ == "__main__":
    B.main(globals())
