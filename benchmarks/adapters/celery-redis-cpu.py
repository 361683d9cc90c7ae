"""Celery with the Redis broker and a CPU-bound job (about 5 ms of pure Python, then
the counter INCR, as ``lexigram-redis-cpu``). Worker: the prefork pool with
concurrency 2 (a parent and two forked children), no result backend. The harness
has no CPU scenario: ``noop_drain`` of this adapter is the CPU-bound drain."""

import os
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import _benchlib as B
import _cpu_burn
from celery import Celery

SYSTEM, BACKEND = "celery", "redis-cpu"
DB = int(os.environ.get("LEXIGRAM_BENCH_DB", "10"))  # several runs at once: one db each
URL = f"redis://127.0.0.1:6379/{DB}"
CONCURRENCY = {"noop_drain": 2, "sleep_drain": 2, "latency": 2}
NOTES = (
    "job: ~5 ms pure-Python CPU + INCR; worker --pool=prefork -c 2 --loglevel=WARNING, "
    "other celery defaults (prefetch multiplier 4, early ack); no result backend"
)


app = Celery("bench", broker=URL)
app.conf.task_ignore_result = True


@app.task(name="bench_job")
def bench_job(mode, enq=None):
    _cpu_burn.burn()
    B.sync_job(mode, enq)


def clean():
    B.redis_flush(URL)


def enqueue(kind, enq=None):
    bench_job.apply_async((kind, enq))


def queued_count():
    import redis

    return redis.Redis.from_url(URL).llen("celery")


def worker_main(scenario, concurrency):
    app.worker_main(
        ["worker", "--pool=prefork", f"--concurrency={concurrency}", "--loglevel=WARNING"]
    )


if __name__ == "__main__":
    B.main(globals())
