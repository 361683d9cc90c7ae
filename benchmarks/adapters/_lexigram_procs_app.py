"""The application of the ``lexigram-redis-procs2`` adapter, importable by name (the
adapter's own file name is not), so that ``lexigram-tasks worker`` can load it in the
supervised worker processes. Not an adapter itself (the runner skips ``_`` names)."""

import os
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import _benchlib as B

from lexigram.tasks import TaskProvider
from lexigram.tasks.redis import RedisTaskQueue

DB = int(os.environ.get("LEXIGRAM_BENCH_DB", "11"))  # several runs at once: one db each
URL = f"redis://127.0.0.1:6379/{DB}"

queue = RedisTaskQueue(redis_url=URL, queue_name="bench")
provider = TaskProvider(queue=queue)


@provider.task(name="bench_job")
async def bench_job(mode, enq=None):
    await B.async_job(mode, enq)
