"""The tasks, and the provider both processes build: the web app enqueues, the worker runs.

Both read the same settings from the environment: ``REDIS_URL`` (default
``redis://127.0.0.1:6379/0``) and ``SIGNUPS_QUEUE`` (default ``signups``).
"""

from __future__ import annotations

import os

from opentelemetry import trace

from lexigram.tasks import CacheBackendResultStore, TaskProvider
from lexigram.tasks.redis import RedisTaskQueue

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("SIGNUPS_QUEUE", "signups")

provider = TaskProvider(
    queue=RedisTaskQueue(redis_url=REDIS_URL, queue_name=QUEUE),
    result_store=CacheBackendResultStore(redis_url=REDIS_URL, ttl=600),
    worker_count=4,
)


@provider.task(name="signups.send_welcome", max_retries=3, timeout=30)
async def send_welcome(user_id: int) -> dict[str, object]:
    """Send the welcome mail (here: say who ran it, and in which trace)."""
    trace_id = trace.get_current_span().get_span_context().trace_id
    return {
        "user_id": user_id,
        "worker_pid": os.getpid(),
        "trace_id": format(trace_id, "032x") if trace_id else None,
    }
