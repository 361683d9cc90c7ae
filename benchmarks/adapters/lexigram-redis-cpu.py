"""lexigram-tasks on Redis with a CPU-bound job (about 5 ms of pure Python, then
the usual counter INCR): ``lexigram-tasks worker --processes 2``, each worker
running the job in its process executor (one child each: ``process_pool_size=1``)
with 16 slots (``-c 16``), the sizing docs/workers.md gives for CPU-bound work: the
jobs wait leased in line for the child, each lease takes several, and the acks of
the jobs done meanwhile ride with it.
The harness has no CPU scenario: ``noop_drain`` of this adapter is the CPU-bound
drain (compare with ``celery-redis-cpu`` and ``dramatiq-redis-cpu``).

Run from the repository root:
    ../shared/bench/run --adapters benchmarks/adapters --scenarios noop_drain \
        lexigram-redis-cpu celery-redis-cpu dramatiq-redis-cpu
"""

import os
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import _benchlib as B
import _lexigram_cpu_app as app

HERE = os.path.dirname(os.path.abspath(__file__))

SYSTEM, BACKEND = "lexigram", "redis-cpu"
PROCESSES = 2
CONCURRENCY = {"noop_drain": 16, "sleep_drain": 16, "latency": 16}
NOTES = (
    f"job: ~5 ms pure-Python CPU + INCR; lexigram-tasks worker --processes {PROCESSES} "
    f"-c concurrency (per process), executor='process', process_pool_size={app.POOL_SIZE} "
    "(children per worker process); bulk = enqueue_many, 1000 per call"
)

provider, queue, bench_job = app.provider, app.queue, app.bench_job


async def setup():
    await provider.connect()


async def teardown():
    await provider.disconnect()


def clean():
    B.redis_flush(app.URL)


async def enqueue(kind, enq=None):
    await bench_job.enqueue(kind, enq)


async def enqueue_bulk(kind, n):
    for start in range(0, n, 1000):
        await provider.enqueue_many([bench_job.job(kind) for _ in range(min(1000, n - start))])


async def queued_count():
    return (await queue.counts()).ready


def configure(args):
    # Variant "one": one worker process with a process pool of 2, instead of
    # --processes 2 with a pool of 1 each. Variant "thread": --processes 2, the job
    # in a thread of each worker process (executor="thread"), as Dramatiq runs it.
    # Variant "c4": 4 slots per worker process (the adapter's sizing until
    # 2026-12-05): a lease of two jobs at a time.
    global PROCESSES, POOL_SIZE, BACKEND, CONCURRENCY
    if args.variant == "c4":
        CONCURRENCY = dict.fromkeys(CONCURRENCY, 4)
        BACKEND = "redis-cpu-c4"
    elif args.variant == "one":
        PROCESSES, POOL_SIZE, BACKEND = 1, 2, "redis-cpu-1proc"
    elif args.variant == "thread":
        os.environ["LEXIGRAM_CPU_EXECUTOR"] = "thread"
        BACKEND = "redis-cpu-thread"


POOL_SIZE = app.POOL_SIZE


def worker_main(scenario, concurrency):
    from lexigram.tasks.cli import main

    # The supervised workers and their children are new interpreters: PYTHONPATH finds the app.
    paths = [HERE, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    argv = ["worker", "_lexigram_cpu_app:provider", "--processes", str(PROCESSES)]
    argv += ["--process-pool-size", str(POOL_SIZE)]
    sys.exit(main([*argv, "-c", str(concurrency), "--log-level", "warning"]))


if __name__ == "__main__":
    B.main(globals())
