"""In real time: a per-second schedule runs beside the workers, started by the provider."""

from __future__ import annotations

import math
import time

from lexigram.tasks import TaskProvider
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.scheduler import RedisTemplateStore, ScheduleRegistry, TaskScheduler
from lexigram.tasks.testing import eventually

from .conftest import delete_prefix, unique  # type: ignore[import-not-found]


async def test_per_second_schedule_runs_every_second_through_the_workers(redis_url: str) -> None:
    registry = ScheduleRegistry()
    runs: list[float] = []

    @registry.scheduled(cron="* * * * * *", name="per-second")
    async def heartbeat() -> None:
        runs.append(time.time())

    queue = RedisTaskQueue(redis_url=redis_url, queue_name=unique("lxtest-sched-"))
    provider = TaskProvider(queue=queue, worker_count=2, poll_interval=0.05)
    prefix = unique("lxtest-sched-")
    TaskScheduler(provider, registry=registry, store=RedisTemplateStore(redis_url, prefix=prefix))
    try:
        async with provider:  # starts the workers and the attached scheduler
            await eventually(lambda: len(runs) >= 4, timeout=15)
            await queue.purge()
    finally:
        await delete_prefix(redis_url, prefix)
    seconds = [math.floor(t) for t in runs[:4]]
    assert seconds == list(range(seconds[0], seconds[0] + 4)), f"not one run per second: {runs}"
    lags = [t - s for t, s in zip(runs, seconds, strict=False)]
    assert max(lags) < 0.9, f"runs lag their tick by {lags}"
