"""lexigram-tasks on Redis, as ``lexigram-redis``, but the worker is
``lexigram-tasks worker --processes 2``: a supervisor and two worker processes,
each with ``worker_count`` = the scenario's concurrency (so twice the slots in all).

Run from the repository root:
    ../shared/bench/run --adapters benchmarks/adapters \
        lexigram-redis-procs2:one lexigram-redis-procs2
"""

import os
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import _benchlib as B
import _lexigram_procs_app as app

HERE = os.path.dirname(os.path.abspath(__file__))

SYSTEM, BACKEND = "lexigram", "redis-procs2"
PROCESSES = 2
CONCURRENCY = {"noop_drain": 50, "sleep_drain": 100, "latency": 50}
NOTES = (
    f"lexigram-tasks worker --processes {PROCESSES} -c concurrency (per process); "
    "defaults otherwise, as lexigram-redis; bulk = enqueue_many, 1000 per call"
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
    # Variant "one": the same app and command with --processes 1 (one worker process, no
    # supervisor): the same-run baseline, on this adapter's own Redis db.
    global PROCESSES, BACKEND
    if args.variant == "one":
        PROCESSES, BACKEND = 1, "redis-procs1"


def worker_main(scenario, concurrency):
    from lexigram.tasks.cli import main

    # The supervised workers are new interpreters: they find the app through PYTHONPATH.
    paths = [HERE, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    argv = ["worker", "_lexigram_procs_app:provider", "--processes", str(PROCESSES)]
    sys.exit(main([*argv, "-c", str(concurrency), "--log-level", "warning"]))


if __name__ == "__main__":
    B.main(globals())
