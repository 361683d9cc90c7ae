"""The application of the ``lexigram-redis-cpu`` adapter, importable by name so that
the supervised worker processes and their executor's children can load it. Not an
adapter itself (the runner skips ``_`` names)."""

import os
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import _benchlib as B
import _cpu_burn

from lexigram.tasks import TaskProvider
from lexigram.tasks.redis import RedisTaskQueue

DB = int(os.environ.get("LEXIGRAM_BENCH_DB", "8"))  # several runs at once: one db each
URL = f"redis://127.0.0.1:6379/{DB}"
POOL_SIZE = 1  # children per worker process: with --processes 2, one per core

queue = RedisTaskQueue(redis_url=URL, queue_name="bench")
provider = TaskProvider(queue=queue, process_pool_size=POOL_SIZE)


# The lexigram-redis-cpu adapter's "thread" variant sets it: the job in a thread of
# each worker process instead (as Dramatiq runs it), for comparison.
EXECUTOR = os.environ.get("LEXIGRAM_CPU_EXECUTOR", "process")


@provider.task(name="bench_job", executor=EXECUTOR)
def bench_job(mode, enq=None):
    _cpu_burn.burn()
    B.sync_job(mode, enq)
