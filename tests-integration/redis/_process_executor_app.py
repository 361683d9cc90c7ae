"""A worker application whose tasks run in the process executor (for
test_process_executor.py): ``lexigram-tasks worker _process_executor_app:provider``.

The queue comes from ``LEXIGRAM_PX_REDIS_URL`` and ``LEXIGRAM_PX_QUEUE``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lexigram.tasks import TaskProvider, current_job
from lexigram.tasks.redis import CacheBackendResultStore, RedisTaskQueue

URL = os.environ.get("LEXIGRAM_PX_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("LEXIGRAM_PX_QUEUE", "lexigram-px")

provider = TaskProvider(
    queue=RedisTaskQueue(redis_url=URL, queue_name=QUEUE),
    result_store=CacheBackendResultStore(redis_url=URL, ttl=120),
    worker_count=2,
    default_executor="process",
    max_jobs_per_child=5,
)


@provider.task(name="px.add")
def add(a: int, b: int) -> dict[str, int]:
    return {"sum": a + b, "pid": os.getpid()}


@provider.task(name="px.hang_once", timeout=1.0, max_retries=1, retry_backoff=0.01)
def hang_once(pid_file: str) -> dict[str, Any]:
    """Attempt 1 hangs until killed; attempt 2 reports whether attempt 1's child is gone."""
    path = Path(pid_file)
    if current_job().attempt == 1:
        path.write_text(str(os.getpid()))
        while True:
            pass  # CPU-bound: nothing but a kill stops it
    try:
        os.kill(int(path.read_text()), 0)
        alive = True
    except ProcessLookupError:
        alive = False
    return {"first_alive": alive, "attempt": current_job().attempt}


@provider.task(name="px.exit_now")
def exit_now(code: int) -> None:
    os._exit(code)
